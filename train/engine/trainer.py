"""The training loop for every kind of run (`kinds.py`: teacher, baseline, student, online).

Data order and augmentation are a pure function of (seed, step) (`sampler.py`), the
torch RNG is saved with every checkpoint, so `--resume` ends with the same weights as
an unbroken run. The parts are built in `run.py`, the per-kind losses in `steps.py`,
the logging in `run_log.py`; one optimiser step in `optimizer_step.py`, resume policy in
`resume.py`; this module only wires them into the loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from pathlib import Path

import torch

from m2skd.common.outputs import exclusive

from ..evaluation.evaluate import evaluate
from .checkpoint import check_checkpoint_space, write_config
from .run import Run, start_run
from .run_folder import claim_fresh
from .run_log import RunLog, TextLog, read_metrics
from .runtime import close_distributed
from .spec import RunSpec, TrainError, check_spec

__all__ = ["RunSpec", "TrainError", "TrainInterrupted", "read_metrics", "train"]


class TrainInterrupted(Exception):
    """Ctrl-C stopped the run between two steps; its checkpoint holds the step reached."""

    def __init__(self, ckpt: Path, step: int, signum: int = signal.SIGINT) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"interrupted at step {step} ({name}): saved {ckpt}; rerun with --resume to continue from it")
        self.ckpt, self.step, self.signum = ckpt, step, int(signum)

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a process it stopped (130 Ctrl-C, 143 SIGTERM)."""
        return 128 + self.signum

    def __reduce__(self):  # raised in a lane's process, re-raised in the parent (experiments/lanes.py)
        return type(self), (self.ckpt, self.step, self.signum)


class _DeferredInterrupt:
    """Ctrl-C (SIGINT) or SIGTERM (what a scheduler sends) while training lets the step in
    flight finish, so the run can save a consistent state (weights, Adam, RNG: an optimiser
    step cut in half is neither the old nor the new weights). A second one stops at once.
    Only for one process in its main thread: DDP ranks would have to agree on the step first."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.hit = False
        self.signum = signal.SIGINT

    def __enter__(self) -> _DeferredInterrupt:
        if self.enabled:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit, self.signum = True, signum

    def __exit__(self, *exc) -> None:
        if self.enabled:
            for s, handler in self.previous.items():
                signal.signal(s, handler)


def train(spec: RunSpec) -> Path:
    """Run (or resume) one training run; returns the path of its final checkpoint.

    OUT is checked writable and locked (by the main rank) before anything else starts."""
    check_spec(spec)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    finished = False
    try:
        with exclusive(spec.out, "m2skd-train") if main_rank else contextlib.nullcontext():
            ckpt = _train(spec)
        finished = True
        return ckpt
    finally:
        close_distributed(finished)


def _train(spec: RunSpec) -> Path:
    run = start_run(spec)
    cfg, out = spec.cfg, Path(spec.out)
    text, info = TextLog(out, run.dist.main), run.info()
    if run.dist.main:
        check_checkpoint_space(run.ckpt_path, run.model)  # up front: not after an hour of training
        if run.step == 0:  # a fresh start: the folder's earlier files are this run's own, or --force
            claim_fresh(out, spec.kind.name, spec.seed, cfg.to_dict(), spec.force)
        write_config(out, info)
    text.line(f"{spec.kind.name} ({cfg.model.backbone}) on {run.device}, seed {spec.seed}: "
              + (f"resumed at step {run.step} of {run.total}" if run.step else f"{run.total} steps")
              + (f", from the weights of {spec.init}" if spec.init and not run.step else "")
              + f"\nresolved config: {json.dumps(info, sort_keys=True)}")
    if run.init_note and not run.step:
        text.line(f"note: {run.init_note}")
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
    step = run.optimizer_step()
    run.model.train()
    if run.stopped:  # a run that stopped early (--patience) has nothing left to do
        return run.ckpt_path
    with RunLog(out, f"{spec.kind.name} ({cfg.model.backbone})", run.total, run.step, enabled=run.dist.main,
                show=spec.progress, every=cfg.runtime.log_every, tensorboard=cfg.runtime.tensorboard,
                text=text) as log, \
            _DeferredInterrupt(run.dist.world == 1) as interrupt:
        for batch in _batches(run, interrupt):
            values, n_scans = step(batch, run.step)
            run.step += 1
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
        raise TrainInterrupted(run.ckpt_path, run.step, interrupt.signum)
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
