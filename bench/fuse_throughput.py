"""Fusion throughput on full-size synthetic scans, side by side with two yardsticks.

    python bench/fuse_throughput.py [--scans 40] [--workers 1]

(a) reading the same input bytes (.bin + .label of every scan, cat-like, page cache warm)
(b) a straightforward per-frame numpy implementation (tests/fusion_reference.py)
m2skd: the numba pipeline, fusion only, and end to end with lzf HDF5 shards written.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2skd.common import kitti_io
from m2skd.common.config import FusionConfig, SynthConfig
from m2skd.preprocess.fuse_pipeline import plan, run_fusion
from m2skd.preprocess.fusion import fuse_scan, hard_lut
from m2skd.preprocess.synth import generate_sequence
from m2skd.preprocess.walker import iter_windows
from tests.fusion_reference import reference_fuse


@click.command()
@click.option("--scans", default=40, show_default=True)
@click.option("--reference-scans", default=8, show_default=True, help="scans timed for the numpy reference")
def main(scans: int, reference_scans: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="m2skd-bench-"))
    cfg = FusionConfig()
    seq = generate_sequence(tmp, "00", SynthConfig.preset("full").override(scans=scans))
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

    out = tmp / "fused"
    plan(tmp, ["00"], cfg)
    t0 = time.perf_counter()
    run_fusion(tmp, ["00"], out, cfg)
    t_e2e = time.perf_counter() - t0

    ref_frames = frames[-reference_scans:]
    t0 = time.perf_counter()
    for f in ref_frames:
        reference_fuse(kitti_io.Sequence(tmp, "00"), f, cfg)
    t_ref = (time.perf_counter() - t0) / len(ref_frames) * len(frames)

    rate = {k: len(frames) / v for k, v in
            {"read": t_read, "fuse": t_fuse, "e2e": t_e2e, "ref": t_ref}.items()}
    table = Table(title=f"fusion of {len(frames)} full-size scans ({n_points:,.0f} points avg, window {cfg.window})")
    for c in ("contender", "scans/s", "vs read bytes (a)", "vs numpy per-frame (b)"):
        table.add_column(c)
    table.add_row("(a) read the input bytes", f"{rate['read']:.1f}", "1.00x", f"{rate['read'] / rate['ref']:.1f}x")
    table.add_row("(b) numpy per-frame reference", f"{rate['ref']:.2f}", f"{rate['ref'] / rate['read']:.3f}x", "1.0x")
    table.add_row("m2skd fusion (read + fuse)", f"{rate['fuse']:.1f}", f"{rate['fuse'] / rate['read']:.2f}x",
                  f"{rate['fuse'] / rate['ref']:.1f}x")
    table.add_row("m2skd make fuse (+ lzf shards)", f"{rate['e2e']:.1f}", f"{rate['e2e'] / rate['read']:.2f}x",
                  f"{rate['e2e'] / rate['ref']:.1f}x")
    Console().print(table)
    Console().print(f"input {nbytes / len(frames) / 1e6:.2f} MB/scan; fused points per scan "
                    f"{fused_pts / len(frames):.0f}; one process, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
