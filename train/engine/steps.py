"""One training step's losses for each kind of run (what each kind is: `kinds.py`).

teacher / baseline  segmentation loss on the run's one view (fused / single)
student             segmentation loss on the single view + the three distillation terms
                    against the frozen teacher on the fused view of the same augmented scans
                    (or on the single view itself: a single-scan teacher, the control)
Distillation reads the networks' deterministic outputs (`kd_forward clean`: without
DropBlock, `models.deterministic_forward`); the segmentation losses keep the regulariser.
online              the released code's training: one network on the single view, then on
                    the fused view (train mode, BatchNorm sees both, single first); seg on
                    the single view, the distillation terms against the fused view's
                    outputs detached, and `w_fused` x cross-entropy on the fused view
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data.batch import Batch
from ..data.voxel_labels import voxel_view
from ..distillation.distill import term_weights
from ..distillation.losses import fused_view_loss, view_segmentation_loss
from ..models import ModelOutput, deterministic_forward, for_distillation

if TYPE_CHECKING:
    from .run import Run

Losses = dict[str, torch.Tensor]


def _seg(run: Run, out: ModelOutput, b: Batch) -> torch.Tensor:
    cfg = run.spec.cfg
    return view_segmentation_loss(out.point_logits, b.vox, b.labels, cfg.optim.seg_on, tuple(cfg.model.grid_shape),
                                  cfg.optim.lovasz_weight)


def seg_step(run: Run, batch: Batch, gen: torch.Generator) -> tuple[Losses, int]:
    b = batch.to(run.device)
    return {"seg": _seg(run, run.step_net(b), b)}, b.batch_size


def _uses(run: Run) -> dict[str, bool]:
    return {k: w > 0 for k, w in term_weights(run.spec.cfg.distill).items()}


def student_step(run: Run, batch: tuple[Batch, Batch] | Batch, gen: torch.Generator) -> tuple[Losses, int]:
    if run.teacher_view == "single":  # a single-scan teacher reads the student's own scan
        fused = single = batch.to(run.device)
    else:
        fused, single = (b.to(run.device) for b in batch)
    with torch.no_grad():
        t_out = run.teacher(fused)
    s_out = run.step_net(single)
    losses = {"seg": _seg(run, s_out, single)}
    losses.update(run.distiller(fused, t_out, single, for_distillation(s_out), _uses(run), gen))
    return losses, single.batch_size


def kd_forward(run_kind_distills: bool, distill_cfg) -> bool:
    """Whether a run's steps need the deterministic forward: it distils, some term is on,
    and the terms read the clean forward (`kd_forward clean`)."""
    return run_kind_distills and distill_cfg.kd_forward == "clean" and any(
        w > 0 for w in term_weights(distill_cfg).values())


class Deterministic(nn.Module):
    """The network with `.deterministic` on its output (`models.deterministic_forward`), in
    one module call: under torchrun DDP wraps this (two DDP forwards before one backward
    break its reducer)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> ModelOutput:
        return deterministic_forward(self.model, batch)


class TwoViews(nn.Module):
    """The network on the single view, then on the fused view, in one module call: under
    torchrun DDP wraps this, since two DDP forwards before one backward break its reducer.
    `deterministic`: each view's output carries its deterministic one too."""

    def __init__(self, model: nn.Module, deterministic: bool = False) -> None:
        super().__init__()
        self.model = model
        self.deterministic = deterministic

    def forward(self, single: Batch, fused: Batch) -> tuple[ModelOutput, ModelOutput]:
        if self.deterministic:
            return deterministic_forward(self.model, single), deterministic_forward(self.model, fused)
        return self.model(single), self.model(fused)


def detached(out: ModelOutput) -> ModelOutput:
    return ModelOutput(out.point_logits.detach(), out.voxel_keys, out.voxel_feats.detach(), out.point_voxel)


def online_step(run: Run, batch: tuple[Batch, Batch], gen: torch.Generator) -> tuple[Losses, int]:
    fused, single = (b.to(run.device) for b in batch)
    s_out, f_out = run.step_net(single, fused)
    cfg = run.spec.cfg
    losses = {"seg": _seg(run, s_out, single)}
    if cfg.distill.fused_loss != "off" and cfg.distill.w_fused > 0:  # the only gradient through the fused view
        shape = tuple(cfg.model.grid_shape)
        losses["fused"] = fused_view_loss(f_out.point_logits, voxel_view(fused.vox, fused.labels, shape),
                                          voxel_view(single.vox, single.labels, shape), cfg.distill.fused_loss)
    # both sides deterministic: the student's as for a frozen teacher, and the fused view's
    # outputs as a frozen teacher's would be (its own cross-entropy above keeps DropBlock)
    losses.update(run.distiller(fused, detached(for_distillation(f_out)), single, for_distillation(s_out),
                                _uses(run), gen))
    return losses, single.batch_size


def weighted_total(losses: Losses, weights: dict[str, float]) -> torch.Tensor:
    """seg + sum of the other terms, each times its weight."""
    return losses["seg"] + sum(weights[k] * v for k, v in losses.items() if k != "seg")
