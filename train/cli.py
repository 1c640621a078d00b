"""`m2skd-train`: teacher, baseline and student training, and evaluation.

    m2skd-train teacher  --cache data_cache/fused --model cylinder3d --preset tiny --steps 300
    m2skd-train baseline --cache data_cache/fused --model cylinder3d --preset tiny --steps 300
    m2skd-train student  --teacher data_cache/runs/teacher_cylinder3d_tiny_s0/last.pt ...
    m2skd-train eval     --ckpt .../last.pt --data data_cache/synth --split val --json r.json
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import click
from rich.console import Console

from m2skd.common.config import MODELS, TrainConfig
from m2skd.common.kitti_io import KittiFormatError, parse_sequences
from m2skd.common.labels import UnknownLabelError
from m2skd.common.shards import ShardError

from .checkpoint import CheckpointError

warnings.filterwarnings("ignore", category=FutureWarning, module="spconv")
console = Console(stderr=True)
ERRORS = (ShardError, CheckpointError, KittiFormatError, UnknownLabelError, ValueError, FileNotFoundError)


def _fail(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)  # plain: rich would wrap the file name mid-path
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train M2SKD teachers, single-scan baselines and distilled students; evaluate them."""


def run_options(f):
    opts = [
        click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=Path("data_cache/fused"),
                     show_default=True, help="fused shards from `make fuse`"),
        click.option("--model", type=click.Choice(MODELS), default="cylinder3d", show_default=True),
        click.option("--preset", type=click.Choice(["tiny", "paper"]), default="tiny", show_default=True),
        click.option("--steps", type=int, help="optimiser steps (or --epochs)"),
        click.option("--epochs", type=int, help="passes over the training scans (or --steps)"),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                     help="run folder [default: data_cache/runs/KIND_MODEL_PRESET_sSEED]"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--resume", is_flag=True, help="continue from OUT/last.pt"),
        click.option("--force", is_flag=True, help="start over even if OUT/last.pt exists"),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1"),
        click.option("--amp/--no-amp", default=None, help="mixed precision (CUDA only)"),
        click.option("--batch-size", type=int),
        click.option("--lr", type=float),
        click.option("--workers", type=int, help="loader processes"),
        click.option("--checkpoint-every", type=int),
        click.option("--train-sequences", help="override the training split, e.g. 00 or 00-07,09,10"),
        click.option("--quiet", is_flag=True, help="no progress bar"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _run(kind: str, teacher: Path | None = None, **kw) -> None:
    from .trainer import RunSpec, TrainError, train

    overrides = {k: kw.pop(k) for k in list(kw) if k in {
        "batch_size", "lr", "workers", "checkpoint_every", "amp", "w_feat", "w_logit", "w_aff", "temperature",
        "logit_variant", "kd_balance", "aff_level", "aff_cap"}}
    ts = kw.pop("train_sequences")
    if ts:
        overrides["train_sequences"] = tuple(parse_sequences(ts))
    try:
        cfg = TrainConfig.build(kw["preset"], kw["model"], **overrides)
        out = kw["out"] or Path("data_cache/runs") / f"{kind}_{kw['model']}_{kw['preset']}_s{kw['seed']}"
        spec = RunSpec(kind=kind, cfg=cfg, cache=kw["cache"], out=out, steps=kw["steps"], epochs=kw["epochs"],
                       seed=kw["seed"], resume=kw["resume"], force=kw["force"], device=kw["device"],
                       teacher=teacher, progress=not kw["quiet"], extra={"preset": kw["preset"]})
        ckpt = train(spec)
    except (TrainError, *ERRORS) as e:
        _fail(e)
    console.print(f"{kind} checkpoint: {ckpt}")


@main.command()
@run_options
def teacher(**kw) -> None:
    """Train the teacher on fused scans (segmentation loss)."""
    _run("teacher", **kw)


@main.command()
@run_options
def baseline(**kw) -> None:
    """Train a plain single-scan model (the reference the student must beat)."""
    _run("baseline", **kw)


@main.command()
@run_options
@click.option("--teacher", "teacher_ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="teacher checkpoint (same --model and --preset)")
@click.option("--w-feat", type=float, help="weight of L_feat [preset: 0.1]")
@click.option("--w-logit", type=float, help="weight of L_logit [preset: 1.0]")
@click.option("--w-aff", type=float, help="weight of L_aff [preset: 1.0]")
@click.option("--no-feat", is_flag=True, help="switch feature distillation off")
@click.option("--no-logit", is_flag=True, help="switch logit distillation off")
@click.option("--no-aff", is_flag=True, help="switch affinity distillation off")
@click.option("--temperature", type=float, help="KD temperature T [preset: 2]")
@click.option("--logit-variant", type=click.Choice(["kl", "released"]))
@click.option("--kd-balance", type=click.Choice(["point", "class"]),
              help="average L_logit over points, or per ground-truth class then over classes")
@click.option("--aff-level", type=click.Choice(["instance", "class"]))
@click.option("--aff-cap", type=int, help="voxels per instance in the affinity matrix [preset: 256]")
def student(teacher_ckpt: Path, no_feat: bool, no_logit: bool, no_aff: bool, **kw) -> None:
    """Distil a frozen teacher into a single-scan student (seg + feature + logit + affinity)."""
    for flag, key in ((no_feat, "w_feat"), (no_logit, "w_logit"), (no_aff, "w_aff")):
        if flag:
            kw[key] = 0.0
    _run("student", teacher=teacher_ckpt, **kw)


@main.command("eval")
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="raw SemanticKITTI-layout root")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="fused cache instead of raw scans")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--sequences", help="explicit sequences instead of --split")
@click.option("--view", type=click.Choice(["single", "fused"]), default="single", show_default=True,
              help="fused: input the fused scan (teacher), score its own points (needs --cache)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--predictions", type=click.Path(file_okay=False, path_type=Path),
              help="write DIR/sequences/XX/predictions/NNNNNN.label in raw ids")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--quiet", is_flag=True)
def eval_cmd(ckpt: Path, data: Path | None, cache: Path | None, split: str, sequences: str | None, view: str,
             json_path: Path | None, predictions: Path | None, device: str, batch_size: int, workers: int,
             quiet: bool) -> None:
    """Per-class IoU, mIoU and hard-class mIoU of a checkpoint on single (or fused) scans."""
    from .evaluate import dataset_for, evaluate, load_model, print_table
    from .runtime import pick_device

    try:
        dev = pick_device(device)
        model, cfg, state = load_model(ckpt, dev)
        seqs = tuple(parse_sequences(sequences)) if sequences else (
            cfg.val_sequences if split == "val" else cfg.train_sequences)
        ds = dataset_for(cfg, data=data, cache=cache, sequences=seqs, fused=view == "fused")
        conf = evaluate(model, ds, dev, batch_size=batch_size, workers=workers, predictions=predictions,
                        progress=not quiet)
    except ERRORS as e:
        _fail(e)
    result = conf.summary(cfg.hard_classes)
    result.update(checkpoint=str(ckpt), kind=state["kind"], step=state["step"], sequences=list(seqs), view=view)
    print_table({f"{state['kind']} ({view})": result}, cfg.hard_classes,
                title=f"{ckpt} on {','.join(seqs)} ({result['points']:,} points)")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
    if predictions:
        console.print(f"predictions: {predictions}/sequences/*/predictions/*.label (raw ids)")
if __name__ == "__main__":
    main()
