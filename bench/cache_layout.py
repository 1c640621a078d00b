"""Fused-cache size and loader speed, full layout against compact, on full-size scans.

    python bench/cache_layout.py [--scans 40]

Full: each shard holds the scan's own points and the fused ones. Compact (`m2skd-fuse
--compact`): only the fused points; the loader reads the own points from the .bin and
.label. Prints bytes per scan (input, each layout), fused points per scan, and the
loader's scans/s (teacher + student views of one augmented scan, as a student step reads
them) for each layout with 0 and 2 worker processes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from m2skd.preprocess.config import FusionConfig
from m2skd.preprocess.pipeline import run_fusion
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import generate_sequence
from m2skd.train.batch import collate
from m2skd.train.config import TrainConfig
from m2skd.train.dataset import ShardDataset
from m2skd.train.sampler import StepSampler


def loader_rate(cache: Path, cfg: TrainConfig, batches: int, workers: int) -> float:
    ds = ShardDataset(cache, ("00",), cfg, view="pair")
    sampler = StepSampler(len(ds), 2, 0, batches)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate("pair"), num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up outside the timing
    t0, n = time.perf_counter(), 0
    for fused, _ in it:
        n += fused.batch_size
    return n / (time.perf_counter() - t0)


@click.command()
@click.option("--scans", default=40, show_default=True)
def main(scans: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="m2skd-cache-"))
    seq = generate_sequence(root, "00", SynthConfig.preset("full").override(scans=scans))
    raw = sum(seq.scan_path(f).stat().st_size + seq.label_path(f).stat().st_size for f in seq.frames()) / scans
    cfg = TrainConfig.preset("paper", model="polarnet").override(train_sequences=("00",))
    t = Table(title=f"fused cache of {scans} full-size scans (window -4:+0): bytes and loader speed")
    for c in ("layout", "MB / scan", "vs input", "fused points / scan", "loader scans/s, 0 workers",
              "loader scans/s, 2 workers"):
        t.add_column(c, justify="right")
    t.add_row("input (.bin + .label)", f"{raw / 1e6:.2f}", "1.00x", "-", "-", "-")
    for name, compact in (("full", False), ("compact", True)):
        out = root / name
        manifest = run_fusion(root, ["00"], out, FusionConfig(compact=compact))
        size = sum(p.stat().st_size for p in out.glob("*.h5")) / scans
        fused = sum(e["points"] - (0 if compact else e["original_points"]) for e in manifest["shards"]) / scans
        t.add_row(name, f"{size / 1e6:.2f}", f"{size / raw:.2f}x", f"{fused:,.0f}",
                  f"{loader_rate(out, cfg, 10, 0):.1f}", f"{loader_rate(out, cfg, 20, 2):.1f}")
    Console().print(t)


if __name__ == "__main__":
    main()
