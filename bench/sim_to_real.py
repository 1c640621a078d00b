"""Sim-to-real yardstick: a single-scan model trained only on synthetic full-size scans,
scored on the real labelled SemanticKITTI scan 000750 (shared/data/real/).

    python bench/sim_to_real.py --out data_cache/sim2real [--sequences 00-05] [--steps 3000]

It generates the synthetic sequences (full preset, hard_density 1), fuses them (the
trainer reads shards), trains a PolarNet baseline without remission (the real labelled
scan has none), and prints per-class IoU on the classes present in the real scan and the
mean over road, sidewalk, building, vegetation, terrain and car. Resumes: generation,
fusion and training each skip what is done. `--record FILE` keeps the result as JSON.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from m2skd.common.labels import CLASS_NAMES, IGNORE_INDEX
from m2skd.common.splits import parse_sequences
from m2skd.preprocess.config import FusionConfig
from m2skd.preprocess.pipeline import run_fusion
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import generate_sequence
from m2skd.train.batch import make_batch
from m2skd.train.checkpoint import load_model
from m2skd.train.config import TrainConfig
from m2skd.train.dataset import voxelise
from m2skd.train.metrics import Confusion, predict
from m2skd.train.trainer import RunSpec, train

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
SIX = ("road", "sidewalk", "building", "vegetation", "terrain", "car")


def score_real(ckpt: Path) -> dict:
    model, cfg, _ = load_model(ckpt, torch.device("cpu"))
    xyz = np.load(REAL / "semantickitti_points_000750.npy").astype(np.float32)
    labels = np.load(REAL / "semantickitti_labels_000750.npy").astype(np.int64).ravel()
    points = np.concatenate([xyz, np.zeros((len(xyz), 1), np.float32)], axis=1)
    sample = voxelise(points, labels, np.zeros_like(labels), len(points), cfg, None, "real", 750)
    with torch.no_grad():
        pred = predict(model(make_batch([sample])).point_logits)
    conf = Confusion()
    conf.add(pred, torch.from_numpy(labels))
    iou = conf.iou()
    present = [c for c in range(1, len(CLASS_NAMES)) if (labels == c).any()]
    return {"iou": {CLASS_NAMES[c]: float(iou[c]) for c in present},
            "six_mean": float(np.mean([iou[CLASS_NAMES.index(n)] for n in SIX])),
            "present_mean": float(np.mean([iou[c] for c in present])),
            "points": int((labels != IGNORE_INDEX).sum())}


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data_cache/sim2real"))
@click.option("--sequences", default="00-05", show_default=True)
@click.option("--scans", type=int, default=100, show_default=True, help="scans per synthetic sequence")
@click.option("--steps", type=int, default=3000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="world seed")
@click.option("--tilt", type=float, default=0.0, show_default=True,
              help="augmentation: random roll/pitch (deg); with --z-shift, for a world whose ground is level")
@click.option("--z-shift", type=float, default=0.0, show_default=True, help="augmentation: height shift sigma (m)")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), help="write the result JSON here")
def main(out: Path, sequences: str, scans: int, steps: int, seed: int, tilt: float, z_shift: float,
         record: Path | None) -> None:
    t0 = time.perf_counter()
    names = parse_sequences(sequences)
    synth = SynthConfig.preset("full").override(scans=scans, seed=seed)
    for name in names:
        generate_sequence(out / "synth", name, synth)
    run_fusion(out / "synth", names, out / "fused", FusionConfig())
    cfg = TrainConfig.preset("tiny", model="polarnet").override(remission=False, workers=1,
                                                                 train_sequences=tuple(names), tilt_deg=tilt)
    if z_shift:
        cfg = cfg.override(translate=(*cfg.augment.translate[:2], z_shift))
    run_dir = out / ("run" if not (tilt or z_shift) else f"run_tilt{tilt:g}_z{z_shift:g}")
    ckpt = train(RunSpec(kind="baseline", cfg=cfg, cache=out / "fused", out=run_dir, steps=steps, seed=0,
                         resume="auto", progress=True))
    res = score_real(ckpt)
    res.update(sequences=names, scans=scans, steps=steps, world_seed=seed, tilt_deg=tilt, z_shift=z_shift,
               minutes=(time.perf_counter() - t0) / 60)
    t = Table(title=f"trained on {len(names)} synthetic sequences, scored on SemanticKITTI 000750")
    t.add_column("class")
    t.add_column("IoU %", justify="right")
    for name, v in res["iou"].items():
        t.add_row(name, f"{100 * v:.1f}")
    t.add_row("[bold]mean of road, sidewalk, building, vegetation, terrain, car", f"{100 * res['six_mean']:.1f}")
    t.add_row("mean over the classes present", f"{100 * res['present_mean']:.1f}")
    Console().print(t)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
