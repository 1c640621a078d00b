"""Two sim-to-real records side by side, paired by training seed.

    python bench/paired_sim2real.py BEFORE.json AFTER.json [--reading views|recorded]

Both records are `bench/sim_to_real.py --record` outputs. A training seed both hold is one
pair (the same seed draws the same initial weights and batches, so what differs is the
world or the training budget, not the luck of the draw); for each class the real scan
holds and the six-class mean it prints each record's per-seed IoU, their means, and AFTER
minus BEFORE as mean ± sd over the pairs with the seeds ahead, behind and tied. Under it
the real car's recall (points of the 316 called car) and the false cars (other points
called car), both per seed. `views` (the default) reads the mean over the 24 views, the
steadier reading of one model; `recorded` the scan as recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from m2skd.common.atomic import atomic_path

SIX = ("road", "sidewalk", "building", "vegetation", "terrain", "car")


def per_seed(record: dict, reading: str) -> dict[int, dict[str, float]]:
    """{training seed: {class or 'six-class mean': IoU %, 'car found %': ..., 'false cars': ...}}."""
    out = {}
    for seed, run in record["runs"].items():
        block = run["views"] if reading == "views" else run
        row = {c: 100.0 * v for c, v in block["iou"].items()}
        row["six-class mean"] = 100.0 * block["six_mean"]
        v = run["views"]
        if reading == "views" and "true_car_by_view" in v:
            row["car points found"] = float(np.mean(v["true_car_by_view"]))
            row["other points called car"] = float(np.mean(v["false_car_by_view"]))
        out[int(seed)] = row
    return out


def paired(before: dict[int, dict[str, float]], after: dict[int, dict[str, float]]) -> dict[str, dict]:
    """Per quantity both records hold: the seeds paired, each side's values and mean, and
    after - before as mean, sd (n - 1; 0 for one pair) and the seeds ahead / behind / tied."""
    seeds = sorted(set(before) & set(after))
    if not seeds:
        raise click.UsageError(f"no training seed in both records (seeds {sorted(before)} and {sorted(after)})")
    keys = [k for k in before[seeds[0]] if all(k in before[s] and k in after[s] for s in seeds)]
    res = {}
    for k in keys:
        b = np.array([before[s][k] for s in seeds])
        a = np.array([after[s][k] for s in seeds])
        d = a - b
        res[k] = {"seeds": seeds, "before": b.tolist(), "after": a.tolist(),
                  "mean_before": float(b.mean()), "mean_after": float(a.mean()), "diff_mean": float(d.mean()),
                  "diff_sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                  "ahead": int((d > 0).sum()), "behind": int((d < 0).sum()), "tied": int((d == 0).sum())}
    return res


def _load(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise click.BadParameter(f"{path}: not a sim_to_real.py record ({e})") from e
    if not isinstance(rec, dict) or not isinstance(rec.get("runs"), dict) or not rec["runs"]:
        raise click.BadParameter(f"{path}: not a sim_to_real.py record (no per-seed 'runs')")
    return rec


def _fmt(xs: list[float]) -> str:
    return " / ".join(f"{x:.1f}" for x in xs)


@click.command(help=__doc__)
@click.argument("before", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("after", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reading", type=click.Choice(["views", "recorded"]), default="views", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the pairs here")
def main(before: Path, after: Path, reading: str, json_path: Path | None) -> None:
    rb, ra = _load(before), _load(after)
    res = paired(per_seed(rb, reading), per_seed(ra, reading))
    seeds = next(iter(res.values()))["seeds"]
    t = Table(title=f"{after.name} - {before.name}, paired by training seed ({', '.join(map(str, seeds))}); "
                    f"IoU % ({reading}) unless named")
    for col in ("", before.name, after.name, "after - before: mean ± sd", "ahead / behind / tied"):
        t.add_column(col, justify="left" if not col else "right")
    order = [*SIX, "six-class mean"] + [k for k in res if k not in (*SIX, "six-class mean")]
    for k in order:
        if k in res:
            r = res[k]
            t.add_row(k, f"{_fmt(r['before'])} ({r['mean_before']:.1f})", f"{_fmt(r['after'])} ({r['mean_after']:.1f})",
                      f"{r['diff_mean']:+.1f} ± {r['diff_sd']:.1f}", f"{r['ahead']} / {r['behind']} / {r['tied']}")
    Console().print(t)
    for name, rec in ((before.name, rb), (after.name, ra)):
        Console().print(f"{name}: world version {rec.get('world_version')}, {rec.get('steps')} steps, "
                        f"world seed {rec.get('world_seed')}, device {rec.get('device')}")
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps({"before": str(before), "after": str(after), "reading": reading,
                                       "pairs": res}, indent=1))


if __name__ == "__main__":
    main()
