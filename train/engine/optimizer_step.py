"""One optimiser step of a run: the kind's losses (`steps.py`) weighted, AMP where asked
(CUDA), a non-finite loss refused before it reaches the weights."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import DistillConfig
from ..distillation.distill import step_weights
from .spec import TrainError
from .steps import StepContext, weighted_total


class OptimizerStep:
    """Step `step` -> `step + 1` of a run: the kind's losses on a batch, AMP where asked
    (CUDA), NaN guard. It updates the weights and the optimiser's state, nothing of the run
    around them: the caller counts the step. The step's random draws are seeded by (seed,
    step), so a resumed run draws what an unbroken one does."""

    def __init__(self, ctx: StepContext, optimizer: torch.optim.Optimizer, step_fn: Callable,
                 distill: DistillConfig, seed: int, amp: bool) -> None:
        self.ctx, self.optimizer, self.step_fn, self.distill, self.seed = ctx, optimizer, step_fn, distill, seed
        self.amp = amp and ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.gen = torch.Generator(device=ctx.device)

    def __call__(self, batch, step: int) -> tuple[dict[str, float], int]:
        """(every loss and the weighted total as floats, scans in the batch) of step `step` + 1."""
        self.gen.manual_seed(self.seed * 1_000_003 + step)
        with torch.autocast(self.ctx.device.type, dtype=torch.float16, enabled=self.amp):
            losses, n_scans = self.step_fn(self.ctx, batch, self.gen)
            total = weighted_total(losses, step_weights(self.distill, step))
        if not torch.isfinite(total):
            raise TrainError(f"step {step + 1}: loss is {float(total)} "
                             f"({ {k: float(v) for k, v in losses.items()} }); lower --lr or check the cache")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "total": float(total.detach())}, n_scans
