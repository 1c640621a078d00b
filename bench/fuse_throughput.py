"""Fusion throughput on full-size synthetic scans, side by side with two yardsticks.

    python bench/fuse_throughput.py [--scans 300]

(a) reading the same input bytes (.bin + .label of every scan, cat-like, page cache warm)
(b) a straightforward per-frame numpy implementation (preprocess/reference.py)
(c) the floor of any shard-writing pipeline: read and decode each scan, write it
    unfused into the same HDF5 layout (no fusion at all), one process
m2skd: the numba pipeline, fusion only, end to end with lzf HDF5 shards written (one
process; --workers 2 as the Makefile runs it, the one sequence's shards split between two
processes, start-up included), and two sequences with --workers 2.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from pathlib import Path

import click
import h5py
import numpy as np
from rich.console import Console
from rich.table import Table

from m2skd.common import kitti_io
from m2skd.common.shards import FusedScan, write_shard
from m2skd.preprocess.config import FusionConfig
from m2skd.preprocess.fusion import fuse_scan, hard_lut, load_scan
from m2skd.preprocess.pipeline import plan, run_fusion
from m2skd.preprocess.reference import reference_fuse
from m2skd.preprocess.walker import iter_windows
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import generate_sequence

# At the world's default rarity a 60-scan stretch of sequence 00 held no hard-class
# instance at all (0 fused points a scan, 2026-11-30): the bench timed fusion with nothing
# to fuse. 10x the density gives a few thousand fused points a scan.
HARD_DENSITY = 10.0


@click.command()
@click.option("--scans", default=300, show_default=True, help="scans per sequence")
@click.option("--reference-scans", default=8, show_default=True, help="scans timed for the numpy reference")
@click.option("--hard-density", default=HARD_DENSITY, show_default=True,
              help="hard-class objects in the synthetic world (fusion needs instances to fuse)")
def main(scans: int, reference_scans: int, hard_density: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="m2skd-bench-"))
    atexit.register(shutil.rmtree, tmp, True)  # a bench's world can be GBs: never left in the temp dir
    cfg = FusionConfig()
    world = SynthConfig.preset("full").override(scans=scans, hard_density=hard_density)
    seq = generate_sequence(tmp, "00", world)
    generate_sequence(tmp, "01", world)
    frames = seq.frames()
    n_points = sum(seq.scan_path(f).stat().st_size // 16 for f in frames) / len(frames)

    def read_all() -> int:
        n = 0
        for f in frames:
            for p in (seq.scan_path(f), seq.label_path(f)):
                with open(p, "rb") as fh:
                    n += len(fh.read())
        return n

    read_all()  # warm the page cache for every contender alike
    t0 = time.perf_counter()
    nbytes = read_all()
    t_read = time.perf_counter() - t0

    poses = seq.lidar_poses(len(frames))
    lut = hard_lut(cfg)
    list(iter_windows(seq, frames[:5], cfg.offsets, poses, len(frames)))  # numba compile / cache load
    t0 = time.perf_counter()
    fused_pts = 0
    for target, neigh in iter_windows(seq, frames, cfg.offsets, poses, len(frames)):
        s = fuse_scan(target, neigh, cfg, lut)
        fused_pts += len(s.points) - s.n_original
    t_fuse = time.perf_counter() - t0

    t0 = time.perf_counter()
    batch = []
    for f in frames:
        s = load_scan(seq, f)
        batch.append(FusedScan(f, s.points, s.labels, s.instance, np.zeros(len(s.points), np.int8), len(s.points)))
        if len(batch) == cfg.shard_size or f == frames[-1]:
            write_shard(tmp / "copy" / f"copy{f}.h5", batch, {"sequence": "00"})
            batch = []
    t_copy = time.perf_counter() - t0

    out = tmp / "fused"
    plan(tmp, ["00"], cfg)
    t0 = time.perf_counter()
    run_fusion(tmp, ["00"], out, cfg)
    t_e2e = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_fusion(tmp, ["00"], tmp / "fused1w2", cfg, workers=2)  # one sequence, its shards split in runs
    t_one2 = time.perf_counter() - t0
    same = _same_shards(out, tmp / "fused1w2")

    t0 = time.perf_counter()
    run_fusion(tmp, ["00", "01"], tmp / "fused2", cfg, workers=2)
    t_par = (time.perf_counter() - t0) / 2  # two sequences: per-sequence time at the same scan count

    ref_frames = frames[-reference_scans:]
    t0 = time.perf_counter()
    for f in ref_frames:
        reference_fuse(kitti_io.Sequence(tmp, "00"), f, cfg)
    t_ref = (time.perf_counter() - t0) / len(ref_frames) * len(frames)

    rate = {k: len(frames) / v for k, v in
            {"read": t_read, "fuse": t_fuse, "e2e": t_e2e, "ref": t_ref, "copy": t_copy, "par": t_par,
             "one2": t_one2}.items()}
    table = Table(title=f"fusion of {len(frames)} full-size scans ({n_points:,.0f} points avg, window {cfg.window})")
    for c in ("contender", "scans/s", "vs read bytes (a)", "vs numpy per-frame (b)"):
        table.add_column(c)
    table.add_row("(a) read the input bytes", f"{rate['read']:.1f}", "1.00x", f"{rate['read'] / rate['ref']:.1f}x")
    table.add_row("(b) numpy per-frame reference", f"{rate['ref']:.2f}", f"{rate['ref'] / rate['read']:.3f}x", "1.0x")
    table.add_row("(c) read + write unfused HDF5 shards", f"{rate['copy']:.1f}", f"{rate['copy'] / rate['read']:.2f}x",
                  f"{rate['copy'] / rate['ref']:.1f}x")
    table.add_row("m2skd fusion (read + fuse)", f"{rate['fuse']:.1f}", f"{rate['fuse'] / rate['read']:.2f}x",
                  f"{rate['fuse'] / rate['ref']:.1f}x")
    table.add_row("m2skd make fuse (+ lzf shards)", f"{rate['e2e']:.1f}", f"{rate['e2e'] / rate['read']:.2f}x",
                  f"{rate['e2e'] / rate['ref']:.1f}x")
    table.add_row("m2skd make fuse, --workers 2 (the Makefile's)", f"{rate['one2']:.1f}",
                  f"{rate['one2'] / rate['read']:.2f}x", f"{rate['one2'] / rate['ref']:.1f}x")
    table.add_row("m2skd make fuse, 2 sequences, --workers 2", f"{rate['par']:.1f}",
                  f"{rate['par'] / rate['read']:.2f}x", f"{rate['par'] / rate['ref']:.1f}x")
    Console().print(table)
    Console().print(f"end to end against the write floor (c): one process {rate['e2e'] / rate['copy']:.2f}x, "
                    f"--workers 2 {rate['one2'] / rate['copy']:.2f}x (goal >= 0.9x); their shards hold the same "
                    f"datasets and attributes: {same}")
    Console().print(f"input {nbytes / len(frames) / 1e6:.2f} MB/scan; fused points per scan "
                    f"{fused_pts / len(frames):.0f}; {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")


def _same_shards(a: Path, b: Path) -> bool:
    """Every shard's datasets and attributes equal (not file bytes: h5py's lzf stream varies)."""
    names = sorted(p.name for p in a.glob("*.h5"))
    if names != sorted(p.name for p in b.glob("*.h5")):
        return False
    for name in names:
        with h5py.File(a / name, "r") as fa, h5py.File(b / name, "r") as fb:
            if set(fa) != set(fb) or any(not np.array_equal(fa[k][()], fb[k][()]) for k in fa):
                return False
            if {k: str(v) for k, v in fa.attrs.items()} != {k: str(v) for k, v in fb.attrs.items()}:
                return False
    return True


if __name__ == "__main__":
    main()
