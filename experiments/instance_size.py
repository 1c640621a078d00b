"""Diagnosis (c) of the training-mode experiment: do the hard classes fail because their
instances are too small in a single scan, or do they fail whatever their size?

    python -m m2skd.experiments.instance_size --cache data_cache/modes/fused --runs data_cache/modes/runs \\
        --seeds 0,1,2,3,4 --record docs/evidence_modes/instance_size.json

For each seed's baseline (single scans) and fused teacher (on single scans, and on its
fused input scored on the scan's own points), every hard-class instance of every report
scan: how many points it has in that scan and how many of them the run labels right.
Binned by that point count, per class: instances, points, recall (points labelled right /
points). Recall and not IoU: a false positive belongs to no instance, so IoU has no size
bin. `--rebuild FILE` prints the table from a recorded JSON without scoring again.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import click
import numpy as np
import torch

from m2skd.common.atomic import write_text
from m2skd.common.labels import CLASS_NAMES, class_ids
from m2skd.common.splits import parse_sequences
from m2skd.train.evaluation.evaluate import score_checkpoint
from m2skd.train.evaluation.metrics import Confusion

# Instance sizes in points of one scan; a 64-beam scan's hard instances span 1 to ~2000.
EDGES = (1, 10, 30, 100, 300)
# (arm run name, view scored, column title)
COLUMNS = (("baseline", "single", "baseline"), ("teacher", "fused", "teacher, fused input"),
           ("teacher", "single", "teacher, single scans"))


def instance_hits(labels: np.ndarray, instance: np.ndarray, pred: np.ndarray,
                  classes: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class, points, points labelled right) of every instance of one scan (of `classes`, else any).

    An instance is a (class, instance id) pair with an id > 0, as SemanticKITTI numbers them."""
    sel = instance > 0
    if classes is not None:
        sel &= np.isin(labels, classes)
    key = (labels[sel].astype(np.int64) << 32) | instance[sel].astype(np.int64)
    ids, inv = np.unique(key, return_inverse=True)
    points = np.bincount(inv, minlength=len(ids))
    right = np.bincount(inv, weights=(pred[sel] == labels[sel]).astype(np.float64), minlength=len(ids))
    return (ids >> 32).astype(np.int64), points.astype(np.int64), right.astype(np.int64)


def size_bins(cls: np.ndarray, points: np.ndarray, right: np.ndarray, classes: tuple[int, ...],
              edges: tuple[int, ...] = EDGES) -> dict:
    """{class name or "all": [[instances, points, right] per size bin]} for the hard classes."""
    b = np.searchsorted(np.asarray(edges), points, side="right") - 1
    out = {}
    for name, keep in [*((CLASS_NAMES[c], cls == c) for c in classes), ("all", np.ones(len(cls), bool))]:
        out[name] = [[int((keep & (b == i)).sum()), int(points[keep & (b == i)].sum()),
                      int(right[keep & (b == i)].sum())] for i in range(len(edges))]
    return out


def bin_names(edges: tuple[int, ...] = EDGES) -> list[str]:
    return [f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)] + [f"{edges[-1]}+"]


def score_run(ckpt: Path, cache: Path, sequences: tuple[str, ...], view: str, device: torch.device) -> dict:
    """One checkpoint's size bins over `sequences` in `view`, scored on each scan's own points."""
    found: list[tuple[np.ndarray, ...]] = []
    conf = Confusion()  # own points

    def observe(batch, pred) -> None:
        start = 0
        for size, n_own in zip(batch.sizes, batch.n_original, strict=True):
            own = slice(start, start + n_own)
            labels, p = batch.labels[own].cpu().numpy(), pred[own].cpu().numpy()
            found.append(instance_hits(labels, batch.instance[own].cpu().numpy(), p))
            conf.add(p, labels)
            start += size

    summary, state = score_checkpoint(ckpt, device, cache=cache, sequences=sequences, view=view, observe=observe)
    hard = tuple(class_ids(state["hard_classes"]))
    cls, points, right = (np.concatenate(a) for a in zip(*found, strict=True))
    keep = np.isin(cls, hard)
    gt = conf.matrix.sum(axis=0)  # columns are ground truth
    return {"bins": size_bins(cls[keep], points[keep], right[keep], hard), "miou": summary["miou"],
            "hard_miou": summary["hard_miou"], "predicted_as": predicted_as(conf.matrix.T, hard),
            "summary": summary, "gt_points": {CLASS_NAMES[c]: int(gt[c]) for c in range(1, len(gt))}}


def predicted_as(confusion: np.ndarray, classes: tuple[int, ...], top: int = 3) -> dict:
    """{class: {predicted class: share of its points}} for the `top` predictions of each class."""
    out = {}
    for c in classes:
        row = confusion[c]
        if row.sum():
            order = np.argsort(-row, kind="stable")[:top]
            out[CLASS_NAMES[c]] = {CLASS_NAMES[k]: round(float(row[k] / row.sum()), 4) for k in order if row[k]}
    return out


def table(record: dict) -> str:
    """Markdown: per size bin, the share of hard instances and points, and each column's
    recall, mean ± std over seeds."""
    runs = record["runs"]
    names = bin_names(tuple(record["edges"]))
    classes = [c for c in next(iter(runs.values()))["bins"] if c != "all"]
    cols = [title for _, _, title in COLUMNS]
    base = [r for k, r in runs.items() if k.startswith("baseline_s") and k.endswith(":single")]
    lines = []
    for cls in ["all", *classes]:
        head = f"**{cls}**" if cls != "all" else "**all hard classes**"
        lines += [f"{head} | instances | points | " + " | ".join(f"recall, {c}" for c in cols),
                  "|".join(["---"] + ["---:"] * (2 + len(cols)))]
        for i, name in enumerate(names):
            inst = np.mean([r["bins"][cls][i][0] for r in base])
            pts = np.mean([r["bins"][cls][i][1] for r in base])
            cells = []
            for arm, view, _ in COLUMNS:
                rs = [r["bins"][cls][i] for k, r in runs.items() if k.startswith(f"{arm}_s") and k.endswith(f":{view}")]
                rec = [100 * r[2] / r[1] for r in rs if r[1]]
                cells.append(f"{np.mean(rec):.1f} ± {np.std(rec, ddof=1) if len(rec) > 1 else 0:.1f}" if rec else "-")
            lines.append(f"{name} | {inst:.0f} | {pts:.0f} | " + " | ".join(cells))
        if cls != "all":
            lines.append("predicted as (baseline, mean over seeds): " + ", ".join(
                f"{k} {100 * np.mean([r['predicted_as'].get(cls, {}).get(k, 0.0) for r in base]):.0f} %"
                for k in _top(base, cls)))
        lines.append("")
    return "\n".join(lines)


def _top(runs: list[dict], cls: str, top: int = 3) -> list[str]:
    total: dict[str, float] = {}
    for r in runs:
        for k, v in r["predicted_as"].get(cls, {}).items():
            total[k] = total.get(k, 0.0) + v
    return sorted(total, key=lambda k: -total[k])[:top]


@click.command()
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="the experiment's fused cache")
@click.option("--runs", type=click.Path(file_okay=False, path_type=Path), help="its runs folder (ARM_sSEED/best.pt)")
@click.option("--seeds", default="0,1,2,3,4", show_default=True)
@click.option("--report-seqs", default="08-10", show_default=True)
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), help="write the result JSON here")
@click.option("--rebuild", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="print the table of a recorded JSON, scoring nothing")
def main(cache: Path | None, runs: Path | None, seeds: str, report_seqs: str, record: Path | None,
         rebuild: Path | None) -> None:
    torch.set_num_threads(1)
    if rebuild is not None:
        click.echo(table(json.loads(rebuild.read_text())))
        return
    if cache is None or runs is None:
        raise click.UsageError("give --cache and --runs (or --rebuild FILE)")
    seqs = tuple(parse_sequences(report_seqs))
    result = {"edges": list(EDGES), "report_sequences": list(seqs), "runs": {}}
    for seed in (int(s) for s in seeds.split(",")):
        for arm, view, _ in COLUMNS:
            ckpt = runs / f"{arm}_s{seed}" / "best.pt"
            if not ckpt.is_file():
                raise click.ClickException(f"{ckpt}: missing (run `make experiment` first)")
            result["runs"][f"{arm}_s{seed}:{view}"] = score_run(ckpt, cache, seqs, view, torch.device("cpu"))
            click.echo(f"{arm}_s{seed} ({view}) scored", err=True)
    if record is not None:
        write_text(record, json.dumps(result, indent=1))
    click.echo(table(result))


if __name__ == "__main__":
    main()
