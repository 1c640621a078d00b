"""A behaviour fingerprint of the whole pipeline, to show that a refactor changed nothing:

    python -m m2skd.experiments.fingerprint --out before.json   # on the old code
    python -m m2skd.experiments.fingerprint --out after.json    # on the new code
    cmp before.json after.json

A tiny synthetic world is generated and fused (a sha256 of the shards' arrays), then every run kind
trains a few steps on both backbones with fixed seeds (every logged loss, the sha256 of
the final weights) and is scored (mIoU and hard-class mIoU, single and fused views).
Everything runs on CPU, deterministically (the trainer asks for deterministic kernels).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import click
import h5py
import torch

from m2skd.preprocess.config import FusionConfig
from m2skd.preprocess.pipeline import run_fusion
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import generate_sequence
from m2skd.train.config import TrainConfig
from m2skd.train.data.dataset import ShardDataset
from m2skd.train.engine.checkpoint import load_checkpoint, load_model
from m2skd.train.engine.trainer import RunSpec, read_metrics, train
from m2skd.train.evaluation.evaluate import evaluate

# the runs: (kind, extra knobs); a student distils from the teacher of its backbone
RUNS = (("teacher", {}), ("baseline", {}), ("student", {}), ("online", {}),
        ("student", {"preset": "released-loss"}),
        ("online", {"preset": "released-loss", "feat_level": "half", "w_feat": 0.1}))


def _shard_sha(path: Path) -> str:
    """Of the shard's arrays, not its bytes: the attributes hold the inputs' mtimes."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        for name in sorted(f):
            h.update(name.encode())
            h.update(f[name][()].tobytes())
    return h.hexdigest()[:16]


def _weights_sha(path: Path) -> str:
    h = hashlib.sha256()
    for name, t in sorted(load_checkpoint(path)["model"].items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(work: Path, steps: int) -> dict:
    # version 2 pinned: the generator's default moved to 3 (2026-12-04), and a fingerprint
    # compares code, not worlds
    world = SynthConfig.preset("tiny").override(scans=8, hard_density=25.0, seed=7, world_version=2)
    for seq in ("00", "08"):
        generate_sequence(work / "kitti", seq, world)
    manifest = run_fusion(work / "kitti", ["00", "08"], work / "cache", FusionConfig(shard_size=4))
    out: dict = {"shards": {e["file"]: _shard_sha(work / "cache" / e["file"]) for e in manifest["shards"]}, "runs": {}}
    for model in ("polarnet", "cylinder3d"):
        teacher = None
        for i, (kind, extra) in enumerate(RUNS):
            knobs = dict(extra)
            preset = "tiny" + ("+" + knobs.pop("preset") if "preset" in knobs else "")
            cfg = TrainConfig.preset(preset, model=model).override(
                workers=0, train_sequences=("00",), val_sequences=("08",), grid_shape=(48, 36, 8),
                point_widths=(16, 32), init_size=4, compress=8, checkpoint_every=1000, tensorboard=False, **knobs)
            name = f"{model}_{i}_{kind}"
            ckpt = train(RunSpec(kind=kind, cfg=cfg, cache=work / "cache", out=work / name, steps=steps, seed=3,
                                 progress=False, device="cpu", teacher=teacher if kind == "student" else None))
            if kind == "teacher":
                teacher = ckpt
            net, run_cfg, _ = load_model(ckpt, torch.device("cpu"))
            scores = {}
            for view in ("single", "fused"):
                ds = ShardDataset(work / "cache", ("08",), run_cfg, view=view)
                s = evaluate(net, ds, torch.device("cpu"), view=view, progress=False).summary(ds.hard_classes)
                scores[view] = [round(s["miou"], 10), round(s["hard_miou"], 10)]
            out["runs"][name] = {"losses": [{k: v for k, v in r.items() if k != "scans_per_s"}
                                            for r in read_metrics(work / name)],
                                 "weights": _weights_sha(ckpt), "scores": scores}
    return out


@click.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--steps", default=3, show_default=True, help="steps of every run")
def main(out: Path, steps: int) -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="m2skd-fingerprint-") as work:
        result = fingerprint(Path(work), steps)
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    click.echo(f"{out}: {len(result['shards'])} shards, {len(result['runs'])} runs fingerprinted")


if __name__ == "__main__":
    main()
