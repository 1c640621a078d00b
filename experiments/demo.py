"""`make demo` / `make demo-seeds`: teacher, baseline and student on the synthetic data,
evaluated on single-scan val, with one results table, JSON/Markdown files and PNG plots.

Every run resumes where it stopped (`--resume`), so an interrupted demo picks up again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from m2skd.common.atomic import write_text
from m2skd.common.labels import CLASS_NAMES, class_ids
from m2skd.common.splits import parse_sequences
from m2skd.train.config import DEFAULT_MODEL, MODELS, TrainConfig
from m2skd.train.data.batch import collate
from m2skd.train.data.dataset import ShardDataset
from m2skd.train.engine.checkpoint import load_checkpoint, load_model
from m2skd.train.engine.runtime import pick_device
from m2skd.train.engine.trainer import read_metrics
from m2skd.train.evaluation.metrics import predict

from .lanes import Job, check_cache, run_jobs
from .scoring import score, world_of
from .stats import points, spread

console = Console()


def train_all(cfg: TrainConfig, cache: Path, runs_dir: Path, steps: int, teacher_steps: int, seeds: list[int],
              device: str, lanes: int) -> dict[str, Path]:
    """Teacher, then per seed baseline and student; `lanes` runs at a time (`lanes.run_jobs`:
    teacher and baselines start together, each student when the teacher is done). Two
    single-threaded runs side by side train ~1.9x faster on 2 CPU cores than one run using
    both (PolarNet tiny: small kernels that scale poorly over threads), which is what keeps
    `make demo` under 20 minutes."""
    tags = {"preset": "tiny", "demo": True}
    jobs = {"teacher": Job("teacher", cfg, cache, runs_dir / "teacher", teacher_steps, 0, None, tags)}
    for seed in seeds:
        for kind, teacher in (("baseline", None), ("student", "teacher")):
            jobs[f"{kind}_s{seed}"] = Job(kind, cfg, cache, runs_dir / f"{kind}_s{seed}", steps, seed, teacher, tags)
    return run_jobs(jobs, lanes, device)


def _row_names(hard: tuple[str, ...]) -> list[str]:
    return ["miou", "hard_miou", *[CLASS_NAMES[c] for c in class_ids(hard)]]


def results_table(res: dict, hard: tuple[str, ...]) -> Table:
    t = Table(title="M2SKD demo: single-scan val (teacher: fused val), IoU %")
    for col in ("", "baseline", "teacher (fused)", "M2SKD student", "student gain"):
        t.add_column(col, justify="right" if col else "left")
    for key in _row_names(hard):
        b, te, s = (points(res[k], key) for k in ("baseline", "teacher", "student"))
        name = {"miou": "[bold]mIoU", "hard_miou": "[bold]hard-class mIoU"}.get(key, key)
        gain = s - b
        t.add_row(name, f"{b:.1f}", f"{te:.1f}", f"{s:.1f}", f"[{'green' if gain > 0 else 'red'}]{gain:+.1f}")
    return t


def results_markdown(res: dict, hard: tuple[str, ...]) -> str:
    lines = ["| | baseline | teacher (fused val) | M2SKD student | student gain |", "|---|---:|---:|---:|---:|"]
    for key in _row_names(hard):
        b, te, s = (points(res[k], key) for k in ("baseline", "teacher", "student"))
        name = {"miou": "**mIoU**", "hard_miou": "**hard-class mIoU**"}.get(key, key)
        lines.append(f"| {name} | {b:.1f} | {te:.1f} | {s:.1f} | {s - b:+.1f} |")
    return "\n".join(lines) + "\n"


def _plots(out: Path, cache: Path, runs: dict[str, Path], device: torch.device, val: tuple[str, ...]) -> None:
    from . import plots  # matplotlib: the `experiments` extra

    _, cfg, state = load_model(runs["student"], device)
    ds = ShardDataset(cache, val, cfg, view="fused")
    middle = len(ds) // 2
    _, scan = ds.scan(middle)
    plots.single_vs_fused(scan.points, scan.labels, scan.n_original, tuple(state["hard_classes"]),
                          out / "single_vs_fused.png")
    sample = ShardDataset(cache, val, cfg, view="single")[middle]
    batch = collate("single")([sample]).to(device)
    panels = {"ground truth": sample.labels}
    for name in ("baseline", "student"):
        model, _, _ = load_model(runs[name], device)
        with torch.no_grad():
            panels[name] = predict(model(batch).point_logits).cpu().numpy()
    panels["M2SKD student"] = panels.pop("student")
    plots.predictions(scan.points[: scan.n_original], panels, out / "predictions.png")
    plots.training_curves({k: read_metrics(v.parent) for k, v in runs.items()}, out / "training_curves.png")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=Path("data_cache/fused"))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="the sequences the cache was fused from: their synth.json names the world (seed, generator "
                   "version) in results.json; the fused cache does not know it")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data_cache/demo"))
@click.option("--model", type=click.Choice(MODELS), default=DEFAULT_MODEL, show_default=True)
@click.option("--steps", type=int, default=1000, show_default=True, help="steps of the baseline and student runs")
@click.option("--teacher-steps", type=int, help="steps of the teacher run [default: 2 x --steps]")
@click.option("--train-seqs", default="00-03", show_default=True, help="sequences to train on")
@click.option("--val-seqs", default="08-10", show_default=True, help="sequences to evaluate on")
@click.option("--seeds", default="0", show_default=True, help="baseline/student seeds, e.g. 0,1,2")
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=1, show_default=True)
@click.option("--lanes", type=int, help="runs trained side by side [default: 2 on a CPU with >= 2 cores, else 1]")
@click.option("--no-plots", is_flag=True)
def main(cache: Path, data: Path | None, out: Path, model: str, steps: int, teacher_steps: int | None,
         train_seqs: str, val_seqs: str, seeds: str, device: str, workers: int, lanes: int | None,
         no_plots: bool) -> None:
    """Train and compare teacher, single-scan baseline and M2SKD student on the demo data."""
    t0 = time.perf_counter()
    seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    # The teacher is trained once and longer than the runs it is compared with: it is the
    # pretrained model the paper distils from, and a student can only learn what its
    # teacher knows (docs/tuning.md).
    teacher_steps = teacher_steps or 2 * steps
    cfg = TrainConfig.preset("tiny", model=model).override(
        workers=workers, train_sequences=tuple(parse_sequences(train_seqs)),
        val_sequences=tuple(parse_sequences(val_seqs)))
    check_cache(cache, cfg.data.train_sequences, cfg.data.val_sequences)
    world = world_of(data, cfg.data.train_sequences + cfg.data.val_sequences)
    dev = pick_device(device)
    runs_dir = out / "runs"
    if lanes is None:
        lanes = 2 if dev.type == "cpu" and (os.cpu_count() or 1) >= 2 else 1
    ckpts = train_all(cfg, cache, runs_dir, steps, teacher_steps, seed_list, device, lanes)
    teacher = ckpts["teacher"]
    per_seed = {}
    for seed in seed_list:
        per_seed[seed] = {
            "baseline": score(ckpts[f"baseline_s{seed}"], cache, cfg.data.val_sequences, "single", dev),
            "student": score(ckpts[f"student_s{seed}"], cache, cfg.data.val_sequences, "single", dev)}
    res = {"teacher": score(teacher, cache, cfg.data.val_sequences, "fused", dev), **per_seed[seed_list[0]]}
    res = {k: res[k] for k in ("baseline", "teacher", "student")}
    res["setup"] = {"model": model, "preset": "tiny", "steps": steps, "teacher_steps": teacher_steps,
                    "seed": seed_list[0], "device": str(dev),
                    "train": list(cfg.data.train_sequences), "val": list(cfg.data.val_sequences),
                    "world": world and {k: world[k] for k in ("seed", "generator_version")}}
    hard = tuple(load_checkpoint(teacher)["hard_classes"])
    console.print(results_table(res, hard))
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.json", json.dumps(res, indent=1))
    md = results_markdown(res, hard)
    if len(seed_list) > 1:
        seeds_res = _seed_summary(per_seed)
        write_text(out / "seeds.json", json.dumps({"seeds": seed_list, **seeds_res,
                                                "per_seed": {str(k): v for k, v in per_seed.items()}}, indent=1))
        smd = _seed_markdown(seeds_res, seed_list)
        write_text(out / "seeds.md", smd)
        console.print(smd)
    write_text(out / "results.md", md)
    if not no_plots:
        _plots(out, cache, {"teacher": teacher, "baseline": runs_dir / f"baseline_s{seed_list[0]}" / "last.pt",
                            "student": runs_dir / f"student_s{seed_list[0]}" / "last.pt"}, dev, cfg.data.val_sequences)
    console.print(f"results: {out}/results.json, results.md" + ("" if no_plots else ", *.png")
                  + f" ({(time.perf_counter() - t0) / 60:.1f} min)")


def _seed_summary(per_seed: dict) -> dict:
    out = {kind: {key: spread([points(r[kind], key) for r in per_seed.values()]) for key in ("miou", "hard_miou")}
           for kind in ("baseline", "student")}
    gains = [points(r["student"], "hard_miou") - points(r["baseline"], "hard_miou") for r in per_seed.values()]
    out["hard_miou_gain"] = {**spread(gains), "positive": sum(g > 0 for g in gains)}
    return out


def _seed_markdown(s: dict, seeds: list[int]) -> str:
    def f(d):
        return f"{d['mean']:.1f} ± {d['std']:.1f} ({', '.join(f'{v:.1f}' for v in d['values'])})"

    return "\n".join([
        f"| seeds {','.join(map(str, seeds))} | mIoU | hard-class mIoU |", "|---|---|---|",
        f"| baseline | {f(s['baseline']['miou'])} | {f(s['baseline']['hard_miou'])} |",
        f"| M2SKD student | {f(s['student']['miou'])} | {f(s['student']['hard_miou'])} |",
        f"| student gain (hard mIoU) | | {f(s['hard_miou_gain'])}; positive in {s['hard_miou_gain']['positive']}"
        f"/{len(seeds)} |", ""])


if __name__ == "__main__":
    main()
