"""`m2skd-train`: teacher, baseline, student and online training, evaluation and prediction.

    m2skd-train teacher  --cache data_cache/fused --model cylinder3d --preset tiny --steps 300
    m2skd-train baseline --cache data_cache/fused --model cylinder3d --preset tiny --steps 300
    m2skd-train student  --teacher data_cache/runs/teacher_cylinder3d_tiny_s0/last.pt ...
    m2skd-train online   --cache data_cache/fused --preset tiny+released --steps 300   # Cylinder3D, the released recipe
    m2skd-train eval     --ckpt .../last.pt --data data_cache/synth --split val --json r.json
    m2skd-train predict  --ckpt .../last.pt --data /path/to/semantickitti --sequences 11-21 --out submission
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import click
from rich.console import Console

from m2skd.common.atomic import write_text
from m2skd.common.cli import OutPath, config_options, fail, knob_values
from m2skd.common.kitti_io import KittiFormatError, iter_sequences
from m2skd.common.labels import UnknownLabelError
from m2skd.common.outputs import OutputError, ensure_writable_dir, exclusive, refuse_inputs
from m2skd.common.shards import ShardError
from m2skd.common.splits import parse_sequences
from m2skd.common.views import VIEWS

from .config import DEFAULT_MODEL, MODELS, RELEASED_MODEL, DistillConfig, TrainConfig, config_file_values
from .distillation.distill import TERMS
from .engine.checkpoint import CheckpointError
from .engine.kinds import KINDS, RunKind

warnings.filterwarnings("ignore", category=FutureWarning, module="spconv")
console = Console(stderr=True)
ERRORS = (ShardError, CheckpointError, KittiFormatError, UnknownLabelError, ValueError, FileNotFoundError)

DISTILL_KNOBS = tuple(DistillConfig.leaf_names())
ONLINE_KNOBS = ("w_fused", "fused_loss")  # the fused view's own loss: only an online run has one


def _preset(ctx, param, value: str) -> str:
    try:
        TrainConfig.preset(value, model="polarnet")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train M2SKD teachers, single-scan baselines, distilled students and online runs; evaluate them."""


def run_options(skip: tuple[str, ...] = ()):
    """The options every run takes; the config's knobs come from TrainConfig itself."""
    def decorate(f):
        f = config_options(TrainConfig, skip=skip)(f)
        opts = [
            click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
                         default=Path("data_cache/fused"), show_default=True, help="fused shards from `make fuse`"),
            click.option("--model", type=click.Choice(MODELS), default=DEFAULT_MODEL, show_default=True,
                         help="polarnet (fast on a CPU) or cylinder3d (the released M2SKD code's)"),
            click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         help="start from the settings of this file: a run's config.json (what every run writes) "
                              "or a JSON object of knobs, nested or flat; the knobs it lacks take the preset's "
                              "values, and options given here override it"),
            click.option("--preset", default="tiny", show_default=True, callback=_preset,
                         help=f"{', '.join(TrainConfig.preset_names())}, combined with '+' (tiny+released: the "
                              "released recipe on the tiny network, Cylinder3D unless --model; released-loss: its loss "
                              "values alone)"),
            click.option("--steps", type=click.IntRange(min=1), help="optimiser steps (or --epochs)"),
            click.option("--epochs", type=click.IntRange(min=1), help="passes over the training scans (or --steps)"),
            click.option("--out", type=OutPath(file_okay=False, path_type=Path),
                         help="run folder [default: data_cache/runs/KIND_MODEL_PRESET_sSEED]"),
            click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True),
            click.option("--init", type=click.Path(dir_okay=False, path_type=Path),
                         help="start from this checkpoint's network weights (same --model and widths) instead of a "
                              "random init, as the released script starts from its model_save.pt"),
            click.option("--resume", is_flag=True, help="continue from OUT/last.pt"),
            click.option("--force", is_flag=True, help="start over even if OUT/last.pt exists"),
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1"),
            click.option("--quiet", is_flag=True, help="no progress bar"),
            click.option("--dry-run", is_flag=True,
                         help="time a few real steps on this device, print what an epoch and the run will take, "
                              "write nothing"),
        ]
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate


def _run(kind: str, teacher: Path | None = None, **kw) -> None:
    from .engine.estimate import estimate
    from .engine.trainer import RunSpec, TrainError, TrainInterrupted, train

    ctx = click.get_current_context(silent=True)
    if "released" in kw["preset"].split("+") and ctx is not None \
            and ctx.get_parameter_source("model") == click.core.ParameterSource.DEFAULT:
        kw["model"] = RELEASED_MODEL  # the released recipe's backbone, unless --model says otherwise
    try:
        knobs = knob_values(TrainConfig, kw)
        config_file = kw.pop("config_file")
        if config_file is not None:  # the file's knobs over the preset, the command line's over the file's
            from_file = config_file_values(str(config_file), config_file.read_text())
            if ctx is not None and ctx.get_parameter_source("model") == click.core.ParameterSource.DEFAULT:
                kw["model"] = from_file.pop("backbone", kw["model"])
            elif from_file.get("backbone", kw["model"]) != kw["model"]:
                raise ValueError(f"--config {config_file} is a {from_file['backbone']} run, --model says "
                                 f"{kw['model']}: drop one of them")
            from_file.pop("backbone", None)
            knobs = {**from_file, **{k: v for k, v in knobs.items() if v is not None}}
        cfg = TrainConfig.preset(kw["preset"], model=kw["model"]).override(**knobs)
        out = kw["out"] or Path("data_cache/runs") / f"{kind}_{kw['model']}_{kw['preset']}_s{kw['seed']}"
        spec = RunSpec(kind=kind, cfg=cfg, cache=kw["cache"], out=out, steps=kw["steps"], epochs=kw["epochs"],
                       seed=kw["seed"], resume="yes" if kw["resume"] else "no", force=kw["force"], device=kw["device"],
                       teacher=teacher, progress=not kw["quiet"], tags={"preset": kw["preset"]}, init=kw["init"])
        if kw["dry_run"]:
            est = estimate(spec)
        else:
            ckpt = train(spec)
    except (TrainError, *ERRORS) as e:
        fail(str(e))
    except TrainInterrupted as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, nothing saved since the last checkpoint
        fail("interrupted again: stopped at once; --resume continues from the last checkpoint", 130)
    if kw["dry_run"]:
        console.print(f"{kind} ({kw['model']}, {kw['preset']}) on {est['device']}: {est['s_per_step']:.3f} s/step, "
                      f"{est['scans_per_s']:.1f} scans/s, peak {est['peak_kind']} {est['peak_mib']:,.0f} MiB; "
                      f"an epoch of {est['scans']:,} scans ({est['steps_per_epoch']:,} steps) "
                      f"~{est['epoch_min']:.1f} min; this run ({est['run_steps']:,} steps) ~{est['run_h']:.2f} h")
        return
    console.print(f"{kind} checkpoint: {ckpt}")


def _kind_command(kind: RunKind) -> None:
    """`m2skd-train KIND`, built from its entry in `kinds.KINDS`: the knobs it uses, a
    required --teacher if it distils a frozen one (else a hidden one, refused saying why),
    and --no-TERM for each distillation term if it distils."""
    skip = () if kind.distills and kind.two_views else ONLINE_KNOBS if kind.distills else DISTILL_KNOBS

    def command(teacher_ckpt: Path | None, **kw) -> None:
        if not kind.teacher and teacher_ckpt is not None:
            fail(kind.teacher_refusal)
        for term in TERMS if kind.distills else ():
            if kw.pop(f"no_{term}"):
                kw[TERMS[term].weight] = 0.0
        _run(kind.name, teacher=teacher_ckpt, **kw)

    if kind.distills:
        for term, t in reversed(TERMS.items()):
            off = f"switch the {term} distillation off (= --{t.weight.replace('_', '-')} 0)"
            command = click.option(f"--no-{term}", is_flag=True, help=off)(command)
    if kind.teacher:
        command = click.option("--teacher", "teacher_ckpt", required=True,
                               type=click.Path(dir_okay=False, path_type=Path),
                               help="teacher checkpoint (same --model and --preset)")(command)
    else:
        command = click.option("--teacher", "teacher_ckpt", hidden=True, help="refused")(command)
    main.command(kind.name, help=kind.help)(run_options(skip=skip)(command))


for _kind in KINDS.values():
    _kind_command(_kind)


@main.command("eval")
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="raw SemanticKITTI-layout root")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), help="fused cache instead of raw scans")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--sequences", help="explicit sequences instead of --split")
@click.option("--view", type=click.Choice(VIEWS), default="single", show_default=True,
              help="fused: input the fused scan (teacher), score its own points (needs --cache)")
@click.option("--json", "json_path", type=OutPath(dir_okay=False, path_type=Path))
@click.option("--predictions", type=OutPath(file_okay=False, path_type=Path),
              help="write DIR/sequences/XX/predictions/NNNNNN.label in raw ids")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=1, show_default=True)
@click.option("--workers", type=click.IntRange(0, 256), default=0, show_default=True)
@click.option("--force", is_flag=True, help="--json or --predictions hold another checkpoint's: replace them")
@click.option("--quiet", is_flag=True)
def eval_cmd(ckpt: Path, data: Path | None, cache: Path | None, split: str, sequences: str | None, view: str,
             json_path: Path | None, predictions: Path | None, device: str, batch_size: int, workers: int,
             force: bool, quiet: bool) -> None:
    """Per-class IoU, mIoU and hard-class mIoU of a checkpoint on single (or fused) scans."""
    from .engine.runtime import pick_device
    from .evaluation.evaluate import score_checkpoint
    from .evaluation.export import write_predictions
    from .evaluation.output_folder import (
        PredictionFolderError,
        claim_folder,
        refuse_foreign_json,
        refuse_foreign_predictions,
    )
    from .evaluation.report import print_table

    try:
        inputs = {"checkpoint": ckpt, "fused cache": cache, "raw data": data}
        if json_path is not None:
            refuse_inputs(json_path, "--json", inputs)
            refuse_foreign_json(json_path, ckpt, force)
        if predictions is not None:
            refuse_inputs(predictions, "--predictions", inputs)
            refuse_foreign_predictions(predictions)
        if json_path is not None:
            ensure_writable_dir(json_path.parent)  # --predictions: exclusive() checks it, removes it if refused
        # predictions as predict writes them: the folder locked and marked with the checkpoint that made it
        with exclusive(predictions, "m2skd-train eval") if predictions else contextlib.nullcontext():
            if predictions is not None:
                claim_folder(predictions, ckpt, force)
            result, state = score_checkpoint(ckpt, pick_device(device), cache=cache, data=data, split=split,
                                             view=view, sequences=tuple(parse_sequences(sequences)) if sequences
                                             else None, batch_size=batch_size, workers=workers,
                                             progress=not quiet, observe=None if predictions is None else
                                             lambda b, pred: write_predictions(predictions, b, pred.cpu().numpy()))
    except (*ERRORS, PredictionFolderError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted: nothing scored; the prediction files written so far are complete", 130)
    seqs = state["sequences"]
    result.update(checkpoint=str(ckpt), kind=state["kind"], step=state["step"], sequences=seqs, view=view)
    print_table({f"{state['kind']} ({view})": result}, tuple(state["hard_classes"]),
                title=f"{ckpt} on {','.join(seqs)} ({result['points']:,} points)")
    if json_path:
        try:  # atomic: a full disk is one line, and no 0-byte result is left
            write_text(json_path, json.dumps(result, indent=1))
        except OutputError as e:
            fail(str(e))
    if predictions:
        console.print(f"predictions: {predictions}/sequences/*/predictions/*.label (raw ids)")


@main.command("predict")
@click.option("--ckpt", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="the checkpoint to deploy (a student or a baseline: single-scan input)")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="SemanticKITTI-layout root; labels are not needed")
@click.option("--sequences", default="11-21", show_default=True, help="the test split by default")
@click.option("--out", required=True, type=OutPath(file_okay=False, path_type=Path))
@click.option("--zip/--no-zip", "make_zip", default=True, show_default=True, help="write OUT/submission.zip too")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=click.IntRange(0, 256), default=0, show_default=True, help="loader processes")
@click.option("--force", is_flag=True, help="OUT holds another model's predictions: delete them and start over")
@click.option("--quiet", is_flag=True)
def predict_cmd(ckpt: Path, data: Path, sequences: str, out: Path, make_zip: bool, device: str, workers: int,
                force: bool, quiet: bool) -> None:
    """Predictions for the benchmark server: OUT/sequences/XX/predictions/NNNNNN.label in raw
    ids, checked as its validator checks them, and the zip it takes. Resumes where it stopped."""
    from .engine.checkpoint import load_model
    from .engine.runtime import pick_device
    from .evaluation.export import check_predictions, check_zip, predict_sequences, write_zip
    from .evaluation.output_folder import PredictionFolderError, claim_folder, refuse_foreign_predictions

    try:
        names = parse_sequences(sequences)
        refuse_inputs(out, "--out", {"checkpoint": ckpt, "raw data": data})
        refuse_foreign_predictions(out, "--out", also=("submission.zip",))  # e.g. a fused cache
        with exclusive(out, "m2skd-train predict"):
            dev = pick_device(device)
            model, cfg, state = load_model(ckpt, dev)
            if state["kind"] == "teacher":
                raise CheckpointError(f"{ckpt}: a teacher needs fused scans, which the test split cannot give "
                                      "(no labels to find instances); deploy a student or a baseline")
            for seq in iter_sequences(data, names):  # a missing sequence refused before the folder is claimed
                seq.frames()
            claim_folder(out, ckpt, force)
            written, skipped = predict_sequences(model, cfg, data, names, out, dev, show=not quiet, workers=workers)
            problems = check_predictions(data, names, out)
            if not problems and make_zip:
                problems = check_zip(write_zip(out, names), data, names)
    except (*ERRORS, PredictionFolderError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("interrupted: the predictions written so far are complete files; the same command resumes", 130)
    if problems:
        fail("the predictions would be rejected:\n  " + "\n  ".join(problems[:20]))
    console.print(f"{written} scans predicted, {skipped} already done; {out}/sequences/*/predictions valid"
                  + (f", {out}/submission.zip ready for the benchmark server" if make_zip else ""))
if __name__ == "__main__":
    main()
