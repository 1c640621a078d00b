"""Deployment speed: the single-scan student against a multi-scan model, on full-size scans.

    python bench/deploy_speed.py [--runs 5] [--device auto]

The student is what M2SKD deploys: one scan in, one prediction out. A multi-scan model
(the teacher's kind) needs its neighbours fused in at test time too; without labels there
are no instances to pick, so it fuses *all* points of the 4 past scans, moved with the
poses: a scan of ~5x the points. Per backbone and preset: milliseconds per scan (voxelise +
forward; for the multi-scan model also the alignment and concatenation of the past scans),
scans per second, and the ratio. Full-size synthetic scans (64 x 2000 beams, ~90k points).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from m2skd.common.geometry import relative_pose, transform_points
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import generate_sequence
from m2skd.train.config import TrainConfig
from m2skd.train.data.batch import make_batch
from m2skd.train.data.dataset import voxelise
from m2skd.train.engine.runtime import pick_device
from m2skd.train.models import build_model

PAST = 4


def _infer(model, cfg: TrainConfig, points: np.ndarray, device: torch.device) -> None:
    n = len(points)
    sample = voxelise(points, np.zeros(n, np.int64), np.zeros(n, np.int64), n, cfg, None, "00", 0)
    with torch.no_grad():
        model(make_batch([sample]).to(device)).point_logits.argmax(1).cpu()


def _time(fn, runs: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, spconv's first call)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@click.command()
@click.option("--runs", default=5, show_default=True, help="timed scans per contender (median)")
@click.option("--device", default="auto", show_default=True)
@click.option("--presets", default="tiny,paper", show_default=True)
def main(runs: int, device: str, presets: str) -> None:
    dev = pick_device(device)
    root = Path(tempfile.mkdtemp(prefix="m2skd-deploy-"))
    atexit.register(shutil.rmtree, root, True)  # a bench's world can be GBs: never left in the temp dir
    seq = generate_sequence(root, "00", SynthConfig.preset("full").override(scans=PAST + 1))
    poses = seq.lidar_poses(PAST + 1)
    scans = [seq.read(f, labels=False)[0] for f in range(PAST + 1)]
    t = Table(title=f"deployment on {dev} ({torch.get_num_threads()} threads), one full-size scan "
                    f"({len(scans[-1]):,} points), median of {runs}")
    for c in ("backbone", "preset", "student ms/scan", "student scans/s", f"multi-scan (+{PAST} past) ms/scan",
              "multi-scan scans/s", "multi / student"):
        t.add_column(c, justify="right")
    for model_name in ("polarnet", "cylinder3d"):
        for preset in presets.split(","):
            cfg = TrainConfig.preset(preset, model=model_name)
            model = build_model(cfg.model, dev).eval()

            def fused(model=model, cfg=cfg) -> None:
                parts = [transform_points(scans[f], relative_pose(poses, f, PAST)) for f in range(PAST)]
                _infer(model, cfg, np.concatenate([scans[PAST], *parts]), dev)

            single = _time(lambda model=model, cfg=cfg: _infer(model, cfg, scans[PAST], dev), runs, dev)
            multi = _time(fused, runs, dev)
            t.add_row(model_name, preset, f"{1000 * single:.0f}", f"{1 / single:.2f}", f"{1000 * multi:.0f}",
                      f"{1 / multi:.2f}", f"{multi / single:.2f}x")
    Console().print(t)


if __name__ == "__main__":
    main()
