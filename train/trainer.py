"""The training loop for the three kinds of run.

teacher   fused scans (all points), segmentation loss only
baseline  single scans (the first n_original points), segmentation loss only
student   single scans + a frozen teacher on the fused view of the same augmented scans,
          segmentation loss + w_feat L_feat + w_logit L_logit + w_aff L_aff

Data order and augmentation are a pure function of (seed, step) (see StepSampler), the
torch RNG is saved with every checkpoint, so `--resume` ends with the same weights as
an unbroken run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from m2skd.common.config import TrainConfig

from .batch import collate
from .checkpoint import (
    CheckpointError,
    check_compatible,
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
    write_config,
)
from .dataset import ShardDataset, StepSampler
from .distill import Distiller
from .losses import segmentation_loss
from .models import build_model
from .runtime import init_distributed, pick_device

KINDS = ("teacher", "baseline", "student")
VIEW = {"teacher": "teacher", "baseline": "student", "student": "both"}
CHECKPOINT = "last.pt"
METRICS = "metrics.jsonl"


class TrainError(ValueError):
    """A run that cannot start as asked (its message says why and what to do)."""


@dataclass
class RunSpec:
    kind: str
    cfg: TrainConfig
    cache: Path
    out: Path
    steps: int | None = None
    epochs: int | None = None
    seed: int = 0
    resume: bool = False
    force: bool = False
    device: str = "auto"
    teacher: Path | None = None
    progress: bool = True
    extra: dict = field(default_factory=dict)
    on_finish: Callable[[torch.nn.Module], None] | None = None  # every rank's final model (tests)


def _total_steps(spec: RunSpec, n_scans: int, world: int) -> int:
    if (spec.steps is None) == (spec.epochs is None):
        raise TrainError("give exactly one of --steps N or --epochs N")
    if spec.steps is not None:
        if spec.steps <= 0:
            raise TrainError(f"--steps must be positive, got {spec.steps}")
        return spec.steps
    per_epoch = max(1, n_scans // (spec.cfg.batch_size * world))
    return max(1, spec.epochs * per_epoch)


def _load_teacher(path: Path, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    state = load_checkpoint(path)
    check_compatible(state, cfg, path, "teacher")
    if state["kind"] != "teacher":
        raise CheckpointError(f"{path}: a {state['kind']} checkpoint, not a teacher; train one with "
                              "`m2skd-train teacher` and pass its last.pt")
    tcfg = checkpoint_config(state, path)
    if tuple(tcfg.hard_classes) != tuple(cfg.hard_classes):
        raise CheckpointError(f"{path}: teacher fused hard classes {list(tcfg.hard_classes)}, student run "
                              f"uses {list(cfg.hard_classes)}")
    teacher = build_model(tcfg, device)
    teacher.load_state_dict(state["model"])
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[losses]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                    disable=not enabled)


def train(spec: RunSpec) -> Path:
    """Run (or resume) one training run; returns the path of its final checkpoint."""
    if spec.kind not in KINDS:
        raise TrainError(f"unknown run kind {spec.kind!r}; choose from {KINDS}")
    cfg = spec.cfg
    device = pick_device(spec.device)
    if device.type == "cpu":
        # CPU index_put/scatter accumulate in a thread-dependent order unless told not to;
        # deterministic kernels make a seeded (and a resumed) run reproducible bit for bit
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist = init_distributed(device)
    out = Path(spec.out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not (spec.resume or spec.force):
        raise TrainError(f"{ckpt_path} exists: pass --resume to continue that run or --force to start over")
    if spec.kind == "student" and spec.teacher is None:
        raise TrainError("a student run needs --teacher PATH (a checkpoint from `m2skd-train teacher`)")

    dataset = ShardDataset(spec.cache, cfg.train_sequences, cfg, view=VIEW[spec.kind])
    total = _total_steps(spec, len(dataset), dist.world)

    teacher = _load_teacher(Path(spec.teacher), cfg, device) if spec.kind == "student" else None
    torch.manual_seed(spec.seed)
    model = build_model(cfg, device)
    distiller = None
    params = list(model.parameters())
    if teacher is not None:
        distiller = Distiller(cfg, model.feature_dim, teacher.feature_dim).to(device)
        params += list(distiller.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr)

    start = 0
    if spec.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        check_compatible(state, cfg, ckpt_path, "resumed")
        if state["kind"] != spec.kind or state["seed"] != spec.seed:
            raise CheckpointError(f"{ckpt_path}: a {state['kind']} run with seed {state['seed']}, not a "
                                  f"{spec.kind} run with seed {spec.seed}; use another --out or --force")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if distiller is not None and state.get("distiller") is not None:
            distiller.load_state_dict(state["distiller"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]

    run_info = {"kind": spec.kind, "seed": spec.seed, "steps": total, "cache": str(spec.cache),
                "teacher": str(spec.teacher) if spec.teacher else None, "device": str(device),
                "world_size": dist.world, "config": cfg.to_dict(), **spec.extra}
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, run_info)
        _trim_metrics(out / METRICS, start)

    ddp_model = model
    if dist.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = StepSampler(len(dataset), cfg.batch_size, spec.seed, total, start, dist.rank, dist.world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate(VIEW[spec.kind]), num_workers=cfg.workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.workers > 0 else None,
        generator=torch.Generator().manual_seed(spec.seed))  # keeps the loader off the global RNG (resume)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = {"feat": cfg.w_feat, "logit": cfg.w_logit, "aff": cfg.w_aff}
    use = {k: w > 0 for k, w in weights.items()}
    aff_gen = torch.Generator(device=device)

    def save(step: int) -> None:
        if dist.main:
            save_checkpoint(ckpt_path, kind=spec.kind, step=step, total_steps=total, cfg=cfg, model=model,
                            optimizer=optimizer, seed=spec.seed,
                            extra={"distiller": distiller.state_dict() if distiller is not None else None,
                                   "teacher": str(spec.teacher) if spec.teacher else None})

    model.train()
    step = start
    t_last, scans_since = time.perf_counter(), 0
    log_file = (out / METRICS).open("a") if dist.main else nullcontext()
    with _progress(spec.progress and dist.main) as bar, log_file as log:
        task = bar.add_task(f"{spec.kind} ({cfg.model})", total=total, completed=start, losses="", rate="")
        for batch in loader:
            aff_gen.manual_seed(spec.seed * 1_000_003 + step)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                if spec.kind == "student":
                    t_batch, s_batch = (b.to(device) for b in batch)
                    with torch.no_grad():
                        t_out = teacher(t_batch)
                    s_out = ddp_model(s_batch)
                    losses = {"seg": segmentation_loss(s_out.point_logits, s_batch.labels, cfg.lovasz_weight)}
                    losses.update(distiller(t_batch, t_out, s_batch, s_out, use, aff_gen))
                else:
                    b = batch.to(device)
                    s_batch = b
                    o = ddp_model(b)
                    losses = {"seg": segmentation_loss(o.point_logits, b.labels, cfg.lovasz_weight)}
                total_loss = losses["seg"] + sum(weights[k] * v for k, v in losses.items() if k != "seg")
            if not torch.isfinite(total_loss):
                raise TrainError(f"step {step + 1}: loss is {float(total_loss)} "
                                 f"({ {k: float(v) for k, v in losses.items()} }); lower --lr or check the cache")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total_loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            scans_since += s_batch.batch_size * dist.world
            record = {"step": step, **{k: float(v.detach()) for k, v in losses.items()},
                      "total": float(total_loss.detach())}
            if dist.main:
                now = time.perf_counter()
                rate = scans_since / max(now - t_last, 1e-9)
                record["scans_per_s"] = round(rate, 2)
                log.write(json.dumps(record) + "\n")
                log.flush()
                if step % cfg.log_every == 0 or step == total:
                    bar.update(task, completed=step, rate=f"{rate:.1f} scans/s",
                               losses=" ".join(f"{k} {v:.3f}" for k, v in record.items() if k in (*losses, "total")))
                    t_last, scans_since = now, 0
            if step % cfg.checkpoint_every == 0 and step < total:
                save(step)
    save(step)
    if spec.on_finish is not None:
        spec.on_finish(model)
    return ckpt_path


def _trim_metrics(path: Path, upto: int) -> None:
    """Drop logged steps beyond the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= upto]
    path.write_text("".join(ln + "\n" for ln in keep))


def read_metrics(out: str | Path) -> list[dict]:
    path = Path(out) / METRICS
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []

