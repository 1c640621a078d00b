"""The training loop for every kind of run (`kinds.py`: teacher, baseline, student, online).

Data order and augmentation are a pure function of (seed, step) (`sampler.py`), the
torch RNG is saved with every checkpoint, so `--resume` ends with the same weights as
an unbroken run. The parts are built in `run.py`, the per-kind losses in `steps.py`,
the logging in `run_log.py`; this module only wires them into the loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from m2skd.common.outputs import exclusive

from .checkpoint import check_checkpoint_space, write_config
from .distill import step_weights
from .evaluate import evaluate
from .run import Run, RunSpec, TrainError, check_spec, start_run
from .run_log import RunLog, TextLog, read_metrics
from .steps import weighted_total

__all__ = ["RunSpec", "TrainError", "TrainInterrupted", "read_metrics", "train"]


class TrainInterrupted(Exception):
    """Ctrl-C stopped the run between two steps; its checkpoint holds the step reached."""

    def __init__(self, ckpt: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}: saved {ckpt}; rerun with --resume to continue from it")
        self.ckpt, self.step = ckpt, step


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) while training lets the step in flight finish, so the run can save a
    consistent state (weights, Adam, RNG: an optimiser step cut in half is neither the old
    nor the new weights). A second Ctrl-C stops at once. Only for one process in its main
    thread: DDP ranks would have to agree on the step first."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.hit = False

    def __enter__(self) -> _DeferredInterrupt:
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)


def train(spec: RunSpec) -> Path:
    """Run (or resume) one training run; returns the path of its final checkpoint.

    OUT is checked writable and locked (by the main rank) before anything else starts."""
    check_spec(spec)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with exclusive(spec.out, "m2skd-train") if main_rank else contextlib.nullcontext():
        return _train(spec)


def _train(spec: RunSpec) -> Path:
    run = start_run(spec)
    cfg, out = spec.cfg, Path(spec.out)
    text, info = TextLog(out, run.dist.main), run.info()
    if run.dist.main:
        check_checkpoint_space(run.ckpt_path, run.model)  # up front: not after an hour of training
        write_config(out, info)
    text.line(f"{spec.kind} ({cfg.model.backbone}) on {run.device}, seed {spec.seed}: "
              + (f"resumed at step {run.step} of {run.total}" if run.step else f"{run.total} steps")
              + f"\nresolved config: {json.dumps(info, sort_keys=True)}")
    try:
        with text.warnings():
            ckpt = _loop(run, text)
    except BaseException as e:
        text.line(f"stopped: {type(e).__name__}: {e}")
        raise
    text.line(f"finished at step {run.step}: {ckpt}" + (" (stopped early: no better val mIoU)" if run.stopped else ""))
    return ckpt


def _loop(run: Run, text: TextLog) -> Path:
    spec, cfg, out = run.spec, run.spec.cfg, Path(run.spec.out)
    step = _Step(run)
    run.model.train()
    if run.stopped:  # a run that stopped early (--patience) has nothing left to do
        return run.ckpt_path
    with RunLog(out, f"{spec.kind} ({cfg.model.backbone})", run.total, run.step, enabled=run.dist.main,
                show=spec.progress, every=cfg.runtime.log_every, tensorboard=cfg.runtime.tensorboard,
                text=text) as log, \
            _DeferredInterrupt(run.dist.world == 1) as interrupt:
        for batch in _batches(run, interrupt):
            values, n_scans = step(batch)
            if cfg.runtime.val_every and (run.step % cfg.runtime.val_every == 0 or run.step == run.total):
                values.update(_validate(run))
            log.record(run.step, values, n_scans * run.dist.world, lr=run.optimizer.param_groups[0]["lr"])
            if run.stopped or interrupt.hit:
                break
            if run.step % cfg.runtime.checkpoint_every == 0 and run.step < run.total:
                run.save()
                text.line(f"checkpoint at step {run.step}: {run.ckpt_path}")
    run.save()
    if interrupt.hit:
        raise TrainInterrupted(run.ckpt_path, run.step)
    if spec.on_finish is not None:
        spec.on_finish(run)
    return run.ckpt_path


def _batches(run: Run, interrupt: _DeferredInterrupt):
    """The run's batches; a loader whose worker processes died of the same Ctrl-C ends the
    loop quietly (between two steps: nothing is half done)."""
    it = iter(run.loader())
    while not interrupt.hit:
        try:
            yield next(it)
        except StopIteration:
            return
        except RuntimeError:
            if interrupt.hit:
                return
            raise


class _Step:
    """One optimiser step of a run: the kind's losses, AMP where asked (CUDA), NaN guard."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.amp = run.spec.cfg.runtime.amp and run.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step_fn = run.kind.step
        self.gen = torch.Generator(device=run.device)

    def __call__(self, batch) -> tuple[dict[str, float], int]:
        run = self.run
        self.gen.manual_seed(run.spec.seed * 1_000_003 + run.step)
        with torch.autocast(run.device.type, dtype=torch.float16, enabled=self.amp):
            losses, n_scans = self.step_fn(run, batch, self.gen)
            total = weighted_total(losses, step_weights(run.spec.cfg.distill, run.step))
        if not torch.isfinite(total):
            raise TrainError(f"step {run.step + 1}: loss is {float(total)} "
                             f"({ {k: float(v) for k, v in losses.items()} }); lower --lr or check the cache")
        run.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(run.optimizer)
        self.scaler.update()
        run.step += 1
        return {**{k: float(v.detach()) for k, v in losses.items()}, "total": float(total.detach())}, n_scans


def estimate(spec: RunSpec, steps: int = 6, warmup: int = 2) -> dict:
    """Time `steps` real steps of the run on its device (after `warmup`), writing nothing,
    and extrapolate: seconds a step, scans a second, minutes an epoch, hours the run."""
    run = start_run(replace(spec, resume=False, force=True))
    step = _Step(run)
    run.model.train()
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    times, t0, scans = [], time.perf_counter(), 0
    for i, batch in enumerate(run.loader()):
        _, n = step(batch)
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - t0)
            scans += n
        t0 = now
        if i + 1 >= warmup + steps:
            break
    s_step = float(np.median(times))
    per_epoch = max(1, len(run.dataset) // (spec.cfg.optim.batch_size * run.dist.world))
    peak = (torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"device": str(run.device), "s_per_step": s_step, "scans_per_s": scans / max(sum(times), 1e-9),
            "scans": len(run.dataset), "steps_per_epoch": per_epoch, "epoch_min": per_epoch * s_step / 60,
            "run_steps": run.total, "run_h": run.total * s_step / 3600, "peak_mib": peak / 2**20,
            "peak_kind": "GPU allocated" if run.device.type == "cuda" else "process RSS"}


def _validate(run: Run) -> dict[str, float]:
    """Score the val split (the main rank), keep best.pt, decide on early stopping (all ranks agree)."""
    values, stop = {}, torch.zeros(1)
    if run.dist.main:
        run.model.eval()
        result = evaluate(run.model, run.val_dataset, run.device, view=run.val_dataset.view,
                          progress=False).summary(run.dataset.hard_classes)
        run.model.train()
        run.note_validation(result)
        values = {"val_miou": result["miou"], "val_hard_miou": result["hard_miou"]}
        patience = run.spec.cfg.runtime.patience
        stop[0] = float(bool(patience) and run.bad_validations >= patience)
    if run.dist.world > 1:
        torch.distributed.broadcast(stop, 0)
    run.stopped = bool(stop[0])
    return values
