"""`make experiment`: M2SKD against its controls, every arm on one step budget, seeded
teachers, paired differences, scored on sequences used for nothing else.

Per seed s, on the same data and settings:
    baseline_s   single scans (also the single-scan teacher)
    teacher_s    fused scans (the M2SKD teacher)
    s2skd_s      student distilled from baseline_s (a single-scan teacher: the control)
    m2skd_s      student distilled from teacher_s (the method)
    online_s     the released code's training: one network on both views each step, its
                 fused view teaching its single view, the released loss (`released-loss`)
    online-nokd_s  the same without the distillation terms (does the fused data alone do it?)
Every run trains exactly `--max-steps` steps (one budget for every arm, chosen from the
baseline's validation curve; `--patience` > 0 stops early, as the experiments before
issue 30 did), validates on the `val` sequences every `--val-every` steps and keeps
best.pt (best val mIoU within the budget); students distil from their teacher's best.pt.
best.pt of each run is then scored on the `report` sequences, which nothing was selected
or tuned on: mIoU, per-class IoU, each class's ground-truth points there (a hard class
with none is left out of the hard-class mIoU of the gate and the verdicts), and the recall
of hard-class instances binned by their points in the scan.

**The gate** (issue 30): the students are trained only when the fused teacher leads the
baseline by >= `GATE["min_lead"]` hard-class points on its fused input in >= `GATE["share"]`
of the seeds (`--skip-gate` trains them anyway, and says so); otherwise the teacher has
nothing to give and a student arm would measure nothing.

Writes OUT/results.json (per run: arm, seed, stop and best step, report scores),
OUT/results.md (mean +- std over seeds and paired differences M2SKD - baseline,
M2SKD - S2SKD and M2SKD - teacher (on single scans) of mIoU, hard-class mIoU and
per-class IoU; a table of the `--variants` ablations) and OUT/val_curves.png.
`--record DIR` copies the per-run results there (small JSON, committed under docs/) and
`--rebuild DIR` rewrites the tables from such a folder without training.

This module is the command; the parts it wires: `arms.py` (the arms and their jobs),
`lanes.py` (runs side by side), `scoring.py` (what a finished run records), `stats.py`
(means, paired differences, the gate, the verdict), `tables.py` (Markdown), `plots.py`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console

from m2skd.common.atomic import write_text
from m2skd.common.cli import fail
from m2skd.common.splits import parse_sequences
from m2skd.train.config import DEFAULT_MODEL, MODELS, TrainConfig
from m2skd.train.engine.checkpoint import keep_weights, load_checkpoint
from m2skd.train.engine.runtime import pick_device

from .arms import ARMS, DEFAULT_ARMS, GATE_ARMS, TEACHER_OF, VARIANTS, extend_jobs, jobs_for
from .lanes import check_cache, deployable, run_jobs
from .scoring import run_result, world_of
from .stats import GATE, gate, summarise
from .tables import gate_markdown, markdown

console = Console()


def report(results: list[dict], out: Path) -> dict:
    summary = summarise(results)
    write_text(out / "results.json", json.dumps({"summary": summary, "runs": results}, indent=1))
    write_text(out / "results.md", markdown(summary))
    console.print(markdown(summary))
    return summary


def _plot(results: list[dict], path: Path) -> None:
    try:
        from .plots import plot_curves

        plot_curves(results, path)
    except ImportError:
        console.print("matplotlib missing (the `experiments` extra): no val_curves.png")


def teacher_file(record: Path, name: str) -> Path:
    """Where `--record` keeps the weights a recorded run teaches with (its best.pt without the
    optimiser state, ~3.4 MB for tiny PolarNet): data_cache/ does not outlive a session, and
    without them a later session would train every teacher again before its students."""
    return record / "teachers" / f"{name}.pt"


def carried(jobs: dict, record: Path, world: dict | None, teaching: set[str]) -> dict[str, dict]:
    """The jobs an earlier invocation finished and recorded, on the same world and step
    budget (and, for a job that teaches others here, with its weights kept): their records
    stand in for them, so an experiment spanning sessions trains each run once."""
    out = {}
    for name, job in jobs.items():
        path = record / f"{name}.json"
        if not path.is_file():
            continue
        prior = json.loads(path.read_text())
        if prior.get("budget") != job.steps or prior.get("world") != world or prior.get("stopped_at") is None:
            continue
        if name in teaching and not teacher_file(record, name).is_file():
            continue
        out[name] = prior
    return out


def refuse_other_world(record: Path, world: dict) -> None:
    """Committed evidence is not overwritten by accident: a record folder whose runs were
    trained on another world (a new world seed, or a new generator version, which is a new
    world) is refused before anything trains, as a new world's runs belong in a new folder."""
    other = {}
    for path in sorted(record.glob("*_s*.json")):
        prior = json.loads(path.read_text())
        if isinstance(prior.get("world"), dict) and prior["world"] != world:
            other[path.stem] = prior["world"]
    if other:
        w = next(iter(other.values()))
        raise click.ClickException(
            f"{record}: {len(other)} recorded run(s) ({', '.join(list(other)[:4])}{', ...' if len(other) > 4 else ''})"
            f" are of world seed {w.get('seed')}, generator version {w.get('generator_version')}, not this cache's "
            f"world (seed {world.get('seed')}, generator version {world.get('generator_version')}): a new world's "
            "runs belong in a new --record folder; --replace-other-world trains them again here and overwrites "
            "their records")


def _names(text: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if bad := [n for n in names if n not in allowed]:
        raise click.BadParameter(f"unknown {bad}; choose from {', '.join(allowed)}", param_hint=option)
    return names


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=Path("data_cache/experiment/fused"))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data_cache/experiment"))
@click.option("--runs", type=click.Path(file_okay=False, path_type=Path),
              help="where the runs live [default: OUT/runs]; ablations share the experiment's")
@click.option("--model", type=click.Choice(MODELS), default=DEFAULT_MODEL, show_default=True)
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--train-seqs", default="00-03", show_default=True)
@click.option("--val-seqs", default="04,05", show_default=True,
              help="early stopping and best.pt (two sequences: one jumps +-2 points between validations)")
@click.option("--report-seqs", default="08-10", show_default=True, help="the table: nothing is selected on these")
@click.option("--max-steps", type=int, default=12000, show_default=True,
              help="the budget: every arm trains this many steps (best.pt: the best val mIoU within it)")
@click.option("--val-every", type=int, default=250, show_default=True)
@click.option("--patience", type=int, default=0, show_default=True,
              help="stop a run after this many validations without a better val mIoU (0: never; the budget is "
              "the same for every arm)")
@click.option("--world", type=click.Path(file_okay=False, path_type=Path),
              help="the synthetic data the cache was fused from: its world seed and generator version go into "
              "every run's record")
@click.option("--skip-gate", is_flag=True, help="train the students even when the teacher fails the gate")
@click.option("--lanes", type=int, help="runs side by side [default: 2 on >= 2 cores]")
@click.option("--device", default="auto", show_default=True)
@click.option("--arms", default=",".join(DEFAULT_ARMS), show_default=True,
              help=f"which arms to train per seed, of {', '.join(ARMS)}")
@click.option("--tag", default="", help="appended to the run names (ARM-TAG_sN), e.g. win44 for runs on a cache "
              "fused with another window, beside the main runs")
@click.option("--width", type=click.IntRange(1, 8), default=1, show_default=True,
              help="the network's point MLP and U-Net widths times this (diagnosis b: is tiny too small to take "
              "the knowledge?); runs tagged wK unless --tag says otherwise")
@click.option("--extend", type=int, help="continue copies (ARM-long) of the --arms runs that teach none of "
              "them, without early stopping, to this step")
@click.option("--variants", default="", help="ablations of the M2SKD student, comma-separated, or all: "
              + ", ".join(VARIANTS))
@click.option("--record", type=click.Path(file_okay=False, path_type=Path), help="copy per-run results here")
@click.option("--replace-other-world", is_flag=True,
              help="--record holds runs of another world (seed or generator version): train them again on this "
              "one and overwrite their records (without it: refused)")
@click.option("--rebuild", type=click.Path(file_okay=False, path_type=Path),
              help="no training: rebuild the tables from per-run results recorded in this folder")
def main(cache: Path, out: Path, runs: Path | None, model: str, seeds: str, train_seqs: str, val_seqs: str,
         report_seqs: str, max_steps: int, val_every: int, patience: int, lanes: int | None, device: str,
         world: Path | None, skip_gate: bool, arms: str, tag: str, width: int, extend: int | None, variants: str,
         record: Path | None, replace_other_world: bool, rebuild: Path | None) -> None:
    """M2SKD, its controls and the released training, one step budget, several seeds."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if rebuild is not None:
        results = [json.loads(p.read_text()) for p in sorted(rebuild.glob("*_s*.json"))]
        report(results, out)
        _plot(results, out / "val_curves.png")
        return
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    arm_list = _names(arms, ARMS, "--arms")
    tag = tag or (f"w{width}" if width > 1 else "")
    tag = f"-{tag}" if tag else ""
    chosen = tuple(VARIANTS) if variants == "all" else _names(variants, tuple(VARIANTS), "--variants")
    cfg = TrainConfig.preset("tiny", model=model).override(
        workers=0, train_sequences=tuple(parse_sequences(train_seqs)), val_sequences=tuple(parse_sequences(val_seqs)),
        val_every=val_every, patience=patience)
    if width > 1:
        cfg = cfg.override(point_widths=tuple(width * w for w in cfg.model.point_widths),
                           init_size=width * cfg.model.init_size)
    check_cache(cache, cfg.data.train_sequences, cfg.data.val_sequences, tuple(parse_sequences(report_seqs)))
    lanes = lanes or (2 if (os.cpu_count() or 1) >= 2 else 1)
    dev = pick_device(device)
    results = {}
    world_rec = world_of(world, tuple(sorted({*cfg.data.train_sequences, *cfg.data.val_sequences,
                                               *parse_sequences(report_seqs)})))

    if record is not None and world_rec is not None and not replace_other_world:
        refuse_other_world(record, world_rec)
    jobs = jobs_for(cfg, cache, runs or out / "runs", seed_list, max_steps, chosen, arm_list, tag)
    if extend:
        jobs = extend_jobs(jobs, extend)
    # the runs that teach (here or in a later invocation, e.g. after the gate alone): their weights are kept
    teaching = {j.teacher for j in jobs.values() if j.teacher} | {
        n for n in jobs if n.rsplit("_s", 1)[0] in {f"{t}{tag}" for t in TEACHER_OF.values()}}

    def on_done(name: str, last: Path) -> Path | None:  # score and record each run as it ends
        kept = record / f"{name}.json" if record is not None else None
        results.pop(name, None)
        if kept is not None and kept.is_file():  # recorded at this very step by an earlier invocation: kept
            prior = json.loads(kept.read_text())
            if prior["stopped_at"] == load_checkpoint(last)["step"] and prior.get("world") == world_rec:
                results[name] = prior
        if name not in results:
            results[name] = run_result(name, last, cache, tuple(parse_sequences(report_seqs)), dev, world_rec)
        if record is None:
            return None
        if not kept.is_file() or json.loads(kept.read_text()) != results[name]:
            record.mkdir(parents=True, exist_ok=True)
            write_text(kept, json.dumps(results[name], indent=1))
            teacher_file(record, name).unlink(missing_ok=True)  # an older run's copy
        if name in teaching and not teacher_file(record, name).is_file():
            keep_weights(deployable(last), teacher_file(record, name))
        return teacher_file(record, name) if name in teaching else None

    if record is not None and not extend:  # runs recorded by an earlier session are not trained again
        for name, prior in carried(jobs, record, world_rec, teaching).items():
            console.print(f"{name}: recorded in {record} (stopped at step {prior['stopped_at']}): not trained again")
            results[name] = prior
            del jobs[name]
        jobs = {n: replace(j, teacher=None, teacher_ckpt=teacher_file(record, j.teacher))
                if j.teacher in results else j for n, j in jobs.items()}
    first = {n: j for n, j in jobs.items() if n.rsplit("_s", 1)[0] in GATE_ARMS}
    if first and len(first) < len(jobs) and not tag:  # the gate: baseline and teacher first, then the rest
        run_jobs(first, lanes, device, on_done)
        g = gate(list(results.values()))
        console.print(gate_markdown(g))
        if not g["passed"] and not skip_gate:
            report([results[k] for k in sorted(results)], out)
            fail(f"the teacher leads the baseline by >= {GATE['min_lead']:.0f} hard-class points in {g['ahead']} of "
                 f"{g['seeds']} seeds: the gate is not passed, no student is trained (docs/evidence.md; --skip-gate "
                 "trains them anyway)", 3)
        if not g["passed"]:
            console.print("[yellow]gate not passed: training the students anyway (--skip-gate)")
    run_jobs(jobs, lanes, device, on_done)
    results = [results[k] for k in sorted(results)]
    report(results, out)
    _plot(results, out / "val_curves.png")
    console.print(f"results: {out}/results.json, results.md ({(time.perf_counter() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    main()
