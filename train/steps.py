"""One training step's losses for each kind of run.

teacher / baseline  segmentation loss on the run's one view (fused / single)
student             segmentation loss on the single view + the three distillation terms
                    against the frozen teacher on the fused view of the same augmented scans
                    (or on the single view itself: a single-scan teacher, the control)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .batch import Batch
from .losses import segmentation_loss
from .run import Run

Losses = dict[str, torch.Tensor]


def seg_step(run: Run, batch: Batch, gen: torch.Generator) -> tuple[Losses, int]:
    b = batch.to(run.device)
    out = run.net(b)
    return {"seg": segmentation_loss(out.point_logits, b.labels, run.spec.cfg.optim.lovasz_weight)}, b.batch_size


def student_step(run: Run, batch: tuple[Batch, Batch] | Batch, gen: torch.Generator) -> tuple[Losses, int]:
    if run.teacher_view == "single":  # a single-scan teacher reads the student's own scan
        fused = single = batch.to(run.device)
    else:
        fused, single = (b.to(run.device) for b in batch)
    with torch.no_grad():
        t_out = run.teacher(fused)
    s_out = run.net(single)
    cfg = run.spec.cfg
    losses = {"seg": segmentation_loss(s_out.point_logits, single.labels, cfg.optim.lovasz_weight)}
    use = {k: w > 0 for k, w in cfg.distill.weights.items()}
    losses.update(run.distiller(fused, t_out, single, s_out, use, gen))
    return losses, single.batch_size


STEPS: dict[str, Callable[[Run, object, torch.Generator], tuple[Losses, int]]] = {
    "teacher": seg_step, "baseline": seg_step, "student": student_step}


def weighted_total(losses: Losses, weights: dict[str, float]) -> torch.Tensor:
    """seg + sum of the weighted distillation terms."""
    return losses["seg"] + sum(weights[k] * v for k, v in losses.items() if k != "seg")
