"""Fused-cache size and loader speed, full layout against compact, on full-size scans.

    python bench/cache_layout.py [--scans 40]

Full: each shard holds the scan's own points and the fused ones. Compact (`m2skd-fuse
--compact`): only the fused points; the loader reads the own points from the .bin and
.label. Prints bytes per scan (input, each layout), fused points per scan, and the
loader's scans/s (teacher + student views of one augmented scan, as a student step reads
them) for each layout with 0 and 2 worker processes, and what the sha256 check that
refuses a damaged shard costs (once per shard and process) beside opening without it.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from m2skd.common.shards import ShardReader, read_manifest
from m2skd.preprocess.config import FusionConfig
from m2skd.preprocess.pipeline import run_fusion
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import generate_sequence
from m2skd.train.config import TrainConfig
from m2skd.train.data.batch import collate
from m2skd.train.data.dataset import ShardDataset
from m2skd.train.data.sampler import StepSampler


def open_ms(cache: Path, verify: bool, repeats: int = 5) -> float:
    """Milliseconds to open every shard of the cache and read one scan: with the sha256 check
    a run makes once per shard and process (refusing a damaged shard), or without it."""
    entries = read_manifest(cache)["shards"]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for e in entries:
            ShardReader(cache / e["file"], e["sha256"] if verify else None).scan(0)
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best / max(sum(e["scans"] for e in entries), 1)


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
    atexit.register(shutil.rmtree, root, True)  # a bench's world can be GBs: never left in the temp dir
    seq = generate_sequence(root, "00", SynthConfig.preset("full").override(scans=scans))
    raw = sum(seq.scan_path(f).stat().st_size + seq.label_path(f).stat().st_size for f in seq.frames()) / scans
    cfg = TrainConfig.preset("paper", model="polarnet").override(train_sequences=("00",))
    t = Table(title=f"fused cache of {scans} full-size scans (window -4:+0): bytes and loader speed")
    for c in ("layout", "MB / scan", "vs input", "fused points / scan", "loader scans/s, 0 workers",
              "loader scans/s, 2 workers", "open + sha256 ms / scan", "open, no check ms / scan"):
        t.add_column(c, justify="right")
    t.add_row("input (.bin + .label)", f"{raw / 1e6:.2f}", "1.00x", "-", "-", "-", "-", "-")
    for name, compact in (("full", False), ("compact", True)):
        out = root / name
        manifest = run_fusion(root, ["00"], out, FusionConfig(compact=compact))
        size = sum(p.stat().st_size for p in out.glob("*.h5")) / scans
        fused = sum(e["points"] - (0 if compact else e["original_points"]) for e in manifest["shards"]) / scans
        t.add_row(name, f"{size / 1e6:.2f}", f"{size / raw:.2f}x", f"{fused:,.0f}",
                  f"{loader_rate(out, cfg, 10, 0):.1f}", f"{loader_rate(out, cfg, 20, 2):.1f}",
                  f"{open_ms(out, True):.2f}", f"{open_ms(out, False):.2f}")
    Console().print(t)


if __name__ == "__main__":
    main()
