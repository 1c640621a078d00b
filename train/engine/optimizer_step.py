"""One optimiser step of a run: the kind's losses (`steps.py`) weighted, AMP where asked
(CUDA), a non-finite loss refused before it reaches the weights."""

from __future__ import annotations

import torch

from ..distillation.distill import step_weights
from .run import Run, TrainError
from .steps import weighted_total


class OptimizerStep:
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
