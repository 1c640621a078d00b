"""Synthetic vs real: class shares over a 00-10 split beside SemanticKITTI's published
content, range and remission percentiles beside the real scans, ray-cast time.

    python bench/synth_realism.py [--split 00-10] [--scans 8] [--density 1] [--json FILE]

Real: shared/data/real (SemanticKITTI scan 000750 with train ids; a raw KITTI HDL-64E
scan with remission). Synthetic: full-size scans spread over each sequence of the split.
A class share matches when it lies within 2 points or 25 % of the published share,
whichever is larger (the tolerance the realism issue set).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from m2skd.common.kitti_io import read_scan
from m2skd.common.labels import CLASS_NAMES, HARD_CLASS_IDS, PUBLISHED_CONTENT, raw_to_train
from m2skd.common.splits import parse_sequences
from m2skd.synth.cli import world_version_option
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import SequenceSim

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
MATCHED = ("road", "sidewalk", "building", "vegetation", "terrain", "fence", "car")
PCT = (5, 25, 50, 75, 95)


def measure(split: list[str], scans: int, density: float, seed: int = 0, version: int = 2) -> dict:
    cfg = SynthConfig.preset("full").override(hard_density=density, seed=seed, world_version=version)
    counts, ranges, rem, n_pts, secs, streets = np.zeros(20), [], [], [], [], {}
    for name in split:
        sim = SequenceSim(cfg, name)
        streets[name] = sim.street.name
        sim.scan(0)  # numba compile / cache load outside the timing
        for f in np.linspace(0, cfg.scans - 1, scans).astype(int):
            t0 = time.perf_counter()
            pts, sem, _ = sim.scan(int(f))
            secs.append(time.perf_counter() - t0)
            counts += np.bincount(raw_to_train(sem), minlength=20)
            ranges.append(np.linalg.norm(pts[:, :3], axis=1))
            rem.append(pts[:, 3])
            n_pts.append(len(pts))
    share = counts[1:] / counts[1:].sum()  # of labelled points, as the published content
    return {"share": {CLASS_NAMES[c + 1]: float(share[c]) for c in range(19)},
            "hard_total": float(share[[c - 1 for c in HARD_CLASS_IDS]].sum()),
            "range": np.percentile(np.concatenate(ranges), PCT).tolist(),
            "remission": np.percentile(np.concatenate(rem), (5, 25, 50, 75, 95)).tolist(),
            "points": [float(np.mean(n_pts)), int(min(n_pts)), int(max(n_pts))],
            "ms_per_scan": 1000 * float(np.median(secs)), "streets": streets}


def matches(ours: float, published: float) -> bool:
    return abs(ours - published) <= max(0.02, 0.25 * published)


@click.command()
@click.option("--split", default="00-10", show_default=True)
@click.option("--scans", default=8, show_default=True, help="scans per sequence, spread over 200 frames")
@click.option("--density", default=1.0, show_default=True, help="hard_density")
@click.option("--seeds", default="0", show_default=True, help="world seeds, comma-separated: shares are their "
              "mean, with their range beside (rarity varies with the seed)")
@world_version_option()
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(split: str, scans: int, density: float, seeds: str, world_version: int, json_path: Path | None) -> None:
    seed_list = [int(x) for x in seeds.split(",") if x.strip()]
    per_seed = [measure(parse_sequences(split), scans, density, seed, world_version) for seed in seed_list]
    m = _mean(per_seed)
    sk_xyz = np.load(REAL / "semantickitti_points_000750.npy")
    raw = read_scan(REAL / "kitti_object_004139.bin")
    t = Table(title=f"synthetic {split} (generator version {world_version}, {scans} full-size scans a sequence, "
              f"hard_density {density}, world seeds {seeds}) vs real")
    for c in ("quantity", "synthetic (mean of the seeds)", "range over the seeds", "SemanticKITTI", "KITTI raw 004139",
              "match"):
        t.add_column(c)

    def spread(f, fmt):
        vals = [100 * f(r) for r in per_seed]
        return f"{min(vals):{fmt}} - {max(vals):{fmt}}" if len(vals) > 1 else ""
    for name in (*MATCHED, "parking", "other-ground", "trunk", "pole"):
        ok = matches(m["share"][name], PUBLISHED_CONTENT[name])
        t.add_row(f"% {name}", f"{100 * m['share'][name]:.1f}", spread(lambda r, n=name: r["share"][n], ".1f"),
                  f"{100 * PUBLISHED_CONTENT[name]:.1f}", "-", ("yes" if ok else "NO") if name in MATCHED else "")
    hard_pub = sum(PUBLISHED_CONTENT[CLASS_NAMES[c]] for c in HARD_CLASS_IDS)
    t.add_row("% hard classes together", f"{100 * m['hard_total']:.2f}", spread(lambda r: r["hard_total"], ".2f"),
              f"{100 * hard_pub:.2f}", "-", "")
    for c in HARD_CLASS_IDS:
        t.add_row(f"  % {CLASS_NAMES[c]}", f"{100 * m['share'][CLASS_NAMES[c]]:.3f}",
                  spread(lambda r, n=CLASS_NAMES[c]: r["share"][n], ".3f"),
                  f"{100 * PUBLISHED_CONTENT[CLASS_NAMES[c]]:.3f}", "-", "")
    t.add_row("points per scan", f"{m['points'][0]:,.0f} ({m['points'][1]:,}-{m['points'][2]:,})", "",
              f"{len(sk_xyz):,} (000750)", f"{len(raw):,}", "")
    t.add_row("range p5/25/50/75/95 (m)", " / ".join(f"{v:.1f}" for v in m["range"]), "",
              " / ".join(f"{v:.1f}" for v in np.percentile(np.linalg.norm(sk_xyz, axis=1), PCT)),
              " / ".join(f"{v:.1f}" for v in np.percentile(np.linalg.norm(raw[:, :3], axis=1), PCT)), "")
    t.add_row("remission p5/25/50/75/95", " / ".join(f"{v:.2f}" for v in m["remission"]), "", "-",
              " / ".join(f"{v:.2f}" for v in np.percentile(raw[:, 3], PCT)), "")
    t.add_row("ray-cast time per scan (ms, 2 cores)", f"{m['ms_per_scan']:.0f}", "", "-", "-", "")
    Console().print(t)
    Console().print("streets: " + ", ".join(f"{k} {v}" for k, v in m["streets"].items()))
    if json_path:
        json_path.write_text(json.dumps({**m, "world_version": world_version, "seeds": seed_list, "per_seed": per_seed},
                                        indent=1))


def _mean(per_seed: list[dict]) -> dict:
    """The seeds' measurements averaged (shares, percentiles, points, time); the first
    seed's streets (the same for 00-10 on every seed)."""
    m = dict(per_seed[0])
    m["share"] = {k: float(np.mean([r["share"][k] for r in per_seed])) for k in m["share"]}
    for k in ("hard_total", "ms_per_scan"):
        m[k] = float(np.mean([r[k] for r in per_seed]))
    for k in ("range", "remission"):
        m[k] = np.mean([r[k] for r in per_seed], axis=0).tolist()
    m["points"] = [float(np.mean([r["points"][0] for r in per_seed])), min(r["points"][1] for r in per_seed),
                   max(r["points"][2] for r in per_seed)]
    return m


if __name__ == "__main__":
    main()
