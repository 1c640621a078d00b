"""Synthetic vs real: points per scan, range percentiles, class proportions, time per scan.

    python bench/synth_realism.py [--scans 10]

Real: shared/data/real (SemanticKITTI scan 000750 with train ids; a raw KITTI HDL-64E
scan with remission). Synthetic: full-size scans of three sequences.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from m2skd.common.kitti_io import read_scan
from m2skd.common.labels import CLASS_NAMES, raw_to_train
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import SequenceSim

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@click.command()
@click.option("--scans", default=10, show_default=True, help="scans per sequence, spread over 200 frames")
def main(scans: int) -> None:
    cfg = SynthConfig.preset("full")
    counts, ranges, rem, n_pts, secs = np.zeros(20), [], [], [], []
    for name in ("00", "01", "08"):
        sim = SequenceSim(cfg, name)
        sim.scan(0)  # numba compile / cache load outside the timing
        for f in np.linspace(0, cfg.scans - 1, scans).astype(int):
            t0 = time.perf_counter()
            pts, sem, _ = sim.scan(int(f))
            secs.append(time.perf_counter() - t0)
            counts += np.bincount(raw_to_train(sem), minlength=20)
            ranges.append(np.linalg.norm(pts[:, :3], axis=1))
            rem.append(pts[:, 3])
            n_pts.append(len(pts))
    share = counts / counts.sum()
    sk_xyz = np.load(REAL / "semantickitti_points_000750.npy")
    sk_lab = np.load(REAL / "semantickitti_labels_000750.npy").ravel()
    sk_share = np.bincount(sk_lab, minlength=20) / len(sk_lab)
    raw = read_scan(REAL / "kitti_object_004139.bin")

    t = Table(title="synthetic (full preset) vs real scans")
    for c in ("quantity", "synthetic", "SemanticKITTI 000750", "KITTI raw 004139"):
        t.add_column(c)
    pct = (5, 25, 50, 75, 95)

    def rp(r):
        return " / ".join(f"{v:.1f}" for v in np.percentile(r, pct))

    t.add_row("points per scan", f"{np.mean(n_pts):,.0f} ({min(n_pts):,}-{max(n_pts):,})", f"{len(sk_xyz):,}",
              f"{len(raw):,}")
    t.add_row("range p5/25/50/75/95 (m)", rp(np.concatenate(ranges)), rp(np.linalg.norm(sk_xyz, axis=1)),
              rp(np.linalg.norm(raw[:, :3], axis=1)))
    t.add_row("remission p5/50/95", " / ".join(f"{v:.2f}" for v in np.percentile(np.concatenate(rem), (5, 50, 95))),
              "-", " / ".join(f"{v:.2f}" for v in np.percentile(raw[:, 3], (5, 50, 95))))
    for c in range(20):
        t.add_row(f"% {CLASS_NAMES[c]}", f"{100 * share[c]:.2f}", f"{100 * sk_share[c]:.2f}", "-")
    t.add_row("ray-cast time per scan (ms)", f"{1000 * np.median(secs):.0f}", "-", "-")
    Console().print(t)


if __name__ == "__main__":
    main()
