"""The published networks' training step on whatever device runs it, AMP off and on.

    python bench/paper_step.py --cache CACHE [--device auto] [--models polarnet,cylinder3d]
                               [--amp off,on] [--steps 6] [--json out.json]

Per backbone, kind (baseline, teacher, student with its frozen teacher and all three
distillations) and AMP setting: median seconds a step at the `paper` preset (batch 2),
scans a second, peak memory (GPU allocated on CUDA, process RSS on CPU), and what one
epoch of SemanticKITTI's training split (19,130 scans, sequences 00-07, 09, 10) and the
paper's 40 epochs would take at that rate. It is `m2skd-train KIND --preset paper
--dry-run` for every row, in one process; the student's teacher is a one-step teacher
checkpoint (its weights do not change the cost). CACHE: full-size fused scans, e.g.

    m2skd-synth D --sequences 00 --preset full --scans 40 && m2skd-fuse --data D --sequences 00 --out C
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from m2skd.train.config import TrainConfig
from m2skd.train.engine.estimate import estimate
from m2skd.train.engine.trainer import RunSpec, train

KITTI_TRAIN_SCANS = 19_130  # SemanticKITTI sequences 00-07, 09, 10 (docs/kitti.md)
PAPER_EPOCHS = 40  # the paper's schedule (docs/method.md)


def rows_for(model: str, preset: str, cache: Path, sequence: str, device: str, amps: list[bool], steps: int,
             tmp: Path) -> Iterator[dict]:
    base = TrainConfig.preset(preset, model=model).override(train_sequences=(sequence,), val_sequences=(sequence,))
    teacher = train(RunSpec(kind="teacher", cfg=base, cache=cache, out=tmp / f"teacher_{model}", steps=1, seed=0,
                            device=device, progress=False))
    for amp in amps:
        cfg = base.override(amp=amp)
        for kind in ("baseline", "teacher", "student"):
            spec = RunSpec(kind=kind, cfg=cfg, cache=cache, out=tmp / f"{kind}_{model}_{amp}", steps=1000, seed=0,
                           device=device, teacher=teacher if kind == "student" else None, progress=False)
            est = estimate(spec, steps=steps)
            if est["device"].startswith("cuda"):
                torch.cuda.empty_cache()
            epoch_h = KITTI_TRAIN_SCANS / est["scans_per_s"] / 3600
            yield {"model": model, "kind": kind, "amp": amp, "device": est["device"],
                   "s_per_step": est["s_per_step"], "scans_per_s": est["scans_per_s"],
                   "peak_mib": est["peak_mib"], "peak_kind": est["peak_kind"],
                   "kitti_epoch_h": epoch_h, "paper_40_epochs_h": PAPER_EPOCHS * epoch_h}


@click.command()
@click.option("--cache", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--sequence", default="00", show_default=True, help="the cache's sequence to draw scans from")
@click.option("--device", default="auto", show_default=True)
@click.option("--models", default="polarnet,cylinder3d", show_default=True)
@click.option("--amp", "amp", default="off,on", show_default=True, help="AMP settings to time (on: CUDA only)")
@click.option("--preset", default="paper", show_default=True, help="tiny: a quick check of this script")
@click.option("--steps", type=int, default=6, show_default=True, help="timed steps per row, after 2 warm-up steps")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
def main(cache: Path, sequence: str, device: str, models: str, amp: str, preset: str, steps: int,
         json_out: Path | None) -> None:
    console = Console()
    amps = [a.strip() == "on" for a in amp.split(",")]
    rows = []
    t = Table(title=f"{preset} preset, batch 2, median of {steps} steps")
    for c in ("backbone", "kind", "AMP", "device", "s/step", "scans/s", "peak MiB", "KITTI epoch h", "40 epochs h"):
        t.add_column(c, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for m in models.split(","):
            for r in rows_for(m.strip(), preset, cache, sequence, device, amps, steps, Path(tmp)):
                rows.append(r)
                console.print(json.dumps(r))  # a line per row as it comes: a cut-off run keeps what it measured
                t.add_row(r["model"], r["kind"], "on" if r["amp"] else "off", r["device"], f"{r['s_per_step']:.3f}",
                          f"{r['scans_per_s']:.1f}", f"{r['peak_mib']:,.0f}", f"{r['kitti_epoch_h']:.2f}",
                          f"{r['paper_40_epochs_h']:.1f}")
    if torch.cuda.is_available():
        console.print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    console.print(t)
    if json_out:
        json_out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
