"""Which forward should the distillation terms read? The probe that picks `--kd-forward`'s
default (issue 30), on the experiment world's **validation** sequences (never the report set).

    python -m m2skd.experiments.kd_forward_probe --cache data_cache/fair/fused --out data_cache/fair/probe \\
        --teacher data_cache/fair/runs/teacher_s0/best.pt --record docs/evidence_fair/probe.json

From one baseline trained `--start` steps (seed 0), each arm fine-tunes `--steps` more,
once per data-order seed, and is scored on the val sequences at its last step:
    seg            the baseline's own loss, nothing else (the control)
    kl-dropped     + the KL logit term on the DropBlock forward (how runs trained before)
    kl-clean       + the KL logit term on the DropBlock-free forward (the default)
    nodrop         DropBlock off altogether (`--dropout 0`), seg only: the control of ...
    nodrop-kl      ... DropBlock off, + the KL logit term
The logit term alone, as the issue measured it (features and affinity off: the KL is the
term the ablations found costs the student its mIoU). Paired per data-order seed against
`seg` (and `nodrop-kl` against `nodrop`). The issue's probe on the demo world: seg 42.3 /
42.6, kl-dropped -3.3, kl-clean -1.35 mIoU points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np

from m2skd.common.atomic import write_text
from m2skd.common.splits import parse_sequences
from m2skd.train.config import DEFAULT_MODEL, MODELS, TrainConfig
from m2skd.train.distillation.distill import only
from m2skd.train.engine.run_log import read_metrics

from .lanes import Job, check_cache, run_jobs

# (run kind, config overrides) per arm; the KL alone, class-balanced as the default student
ARMS = {
    "seg": ("baseline", {}),
    "kl-dropped": ("student", {**only("logit"), "kd_forward": "dropped"}),
    "kl-clean": ("student", {**only("logit"), "kd_forward": "clean"}),
    "nodrop": ("baseline", {"dropout": 0.0}),
    "nodrop-kl": ("student", {**only("logit"), "dropout": 0.0}),
}
CONTROL = {"kl-dropped": "seg", "kl-clean": "seg", "nodrop-kl": "nodrop", "nodrop": "seg"}


def probe_jobs(cfg: TrainConfig, cache: Path, out: Path, teacher: Path, start: int, steps: int,
               seeds: list[int]) -> dict[str, Job]:
    """The start baseline and every (arm, data-order seed) fine-tune from its last.pt."""
    jobs = {"start": Job("baseline", cfg, cache, out / "start", start, 0)}
    tuned = cfg.override(val_every=steps)  # one validation, at the fine-tune's end
    for arm, (kind, over) in ARMS.items():
        for s in seeds:
            name = f"{arm}_s{s}"
            # seed s + 1: a data order other than the start baseline's (seed 0)
            jobs[name] = Job(kind, tuned.override(**over), cache, out / name, steps, s + 1, tags={"probe": arm},
                             init="start", teacher_ckpt=teacher if kind == "student" else None)
    return jobs


def paired(results: dict[str, float]) -> dict:
    """Per arm, its val mIoU per data-order seed and the paired difference to its control."""
    arms: dict[str, dict[int, float]] = {}
    for name, miou in results.items():
        arm, seed = name.rsplit("_s", 1)
        arms.setdefault(arm, {})[int(seed)] = 100 * miou
    out = {}
    for arm, by_seed in arms.items():
        row = {"val_miou": by_seed}
        ctrl = arms.get(CONTROL.get(arm, ""), {})
        common = sorted(set(by_seed) & set(ctrl))
        if common:
            d = [by_seed[s] - ctrl[s] for s in common]
            row.update(control=CONTROL[arm], diff=float(np.mean(d)), diffs=d)
        out[arm] = row
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the fused teacher the students distil (e.g. the gate's teacher_s0/best.pt)")
@click.option("--model", type=click.Choice(MODELS), default=DEFAULT_MODEL, show_default=True)
@click.option("--train-seqs", default="00-03", show_default=True)
@click.option("--val-seqs", default="04,05", show_default=True, help="what the default is chosen on")
@click.option("--start", type=click.IntRange(1), default=1000, show_default=True, help="steps of the start baseline")
@click.option("--steps", type=click.IntRange(1), default=400, show_default=True, help="steps of each fine-tune")
@click.option("--seeds", default="0,1", show_default=True, help="data-order seeds of the fine-tunes")
@click.option("--lanes", type=int, help="runs side by side [default: 2 on >= 2 cores]")
@click.option("--device", default="auto", show_default=True)
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), help="write the result JSON here")
def main(cache: Path, out: Path, teacher: Path, model: str, train_seqs: str, val_seqs: str, start: int, steps: int,
         seeds: str, lanes: int | None, device: str, record: Path | None) -> None:
    """Fine-tune one baseline with the KL on the DropBlock forward, on the DropBlock-free one, and
    without DropBlock, against seg-only controls; score each on the validation sequences."""
    cfg = TrainConfig.preset("tiny", model=model).override(
        workers=0, train_sequences=tuple(parse_sequences(train_seqs)), val_sequences=tuple(parse_sequences(val_seqs)))
    check_cache(cache, cfg.data.train_sequences, cfg.data.val_sequences)
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    jobs = probe_jobs(cfg, cache, out / "runs", teacher, start, steps, seed_list)
    run_jobs(jobs, lanes or (2 if (os.cpu_count() or 1) >= 2 else 1), device)
    results = {}
    for name in jobs:
        if name == "start":
            continue
        vals = [m["val_miou"] for m in read_metrics(out / "runs" / name) if "val_miou" in m]
        results[name] = vals[-1]
    summary = {"val_sequences": list(cfg.data.val_sequences), "start_steps": start, "steps": steps,
               "teacher": str(teacher), "arms": paired(results)}
    if record is not None:
        write_text(record, json.dumps(summary, indent=1))
    for arm, row in summary["arms"].items():
        vals = ", ".join(f"{v:.1f}" for v in row["val_miou"].values())
        diff = f"; {row['diff']:+.2f} against {row['control']}" if "diff" in row else ""
        click.echo(f"{arm}: val mIoU {vals}{diff}")


if __name__ == "__main__":
    main()
