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

from dataclasses import dataclass

import torch
from torch import nn

from ..config import DistillConfig, TrainConfig
from ..data.batch import Batch
from ..data.voxel_labels import voxel_labels
from ..distillation.distill import Distiller, term_weights
from ..distillation.losses import fused_view_loss, view_segmentation_loss
from ..models import ModelOutput, deterministic_forward, for_distillation

Losses = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SegLoss:
    """The segmentation loss as the run's config resolves it (`view_segmentation_loss`)."""

    seg_on: str
    grid_shape: tuple[int, ...]
    lovasz_weight: float

    @classmethod
    def of(cls, cfg: TrainConfig) -> SegLoss:
        return cls(cfg.optim.seg_on, tuple(cfg.model.grid_shape), cfg.optim.lovasz_weight)

    def __call__(self, out: ModelOutput, b: Batch) -> torch.Tensor:
        return view_segmentation_loss(out.point_logits, b.vox, b.labels, self.seg_on, self.grid_shape,
                                      self.lovasz_weight)


@dataclass(frozen=True)
class StepContext:
    """What a step reads, and nothing else of the run: the network it calls (`net`: the
    model, wrapped for its deterministic forward or both views, in DDP under torchrun), the
    frozen teacher and the view it reads, the distiller, the resolved losses and the device.
    A step changes none of it; the optimiser step applies its losses."""

    net: nn.Module
    device: torch.device
    seg: SegLoss
    distill: DistillConfig
    teacher: nn.Module | None = None
    teacher_view: str | None = None  # "fused" (M2SKD) or "single" (a single-scan teacher)
    distiller: Distiller | None = None

    @property
    def uses(self) -> dict[str, bool]:
        """Which distillation terms are on (a weight > 0)."""
        return {k: w > 0 for k, w in term_weights(self.distill).items()}


def seg_step(ctx: StepContext, batch: Batch, gen: torch.Generator) -> tuple[Losses, int]:
    b = batch.to(ctx.device)
    return {"seg": ctx.seg(ctx.net(b), b)}, b.batch_size


def student_step(ctx: StepContext, batch: tuple[Batch, Batch] | Batch, gen: torch.Generator) -> tuple[Losses, int]:
    if ctx.teacher_view == "single":  # a single-scan teacher reads the student's own scan
        fused = single = batch.to(ctx.device)
    else:
        fused, single = (b.to(ctx.device) for b in batch)
    with torch.no_grad():
        t_out = ctx.teacher(fused)
    s_out = ctx.net(single)
    losses = {"seg": ctx.seg(s_out, single)}
    losses.update(ctx.distiller(fused, t_out, single, for_distillation(s_out), ctx.uses, gen))
    return losses, single.batch_size


def kd_forward(run_kind_distills: bool, distill_cfg: DistillConfig) -> bool:
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


def online_step(ctx: StepContext, batch: tuple[Batch, Batch], gen: torch.Generator) -> tuple[Losses, int]:
    fused, single = (b.to(ctx.device) for b in batch)
    s_out, f_out = ctx.net(single, fused)
    d = ctx.distill
    losses = {"seg": ctx.seg(s_out, single)}
    if d.fused_loss != "off" and d.w_fused > 0:  # the only gradient through the fused view
        shape = ctx.seg.grid_shape
        losses["fused"] = fused_view_loss(f_out.point_logits, voxel_labels(fused.vox, fused.labels, shape),
                                          voxel_labels(single.vox, single.labels, shape), d.fused_loss)
    # both sides deterministic: the student's as for a frozen teacher, and the fused view's
    # outputs as a frozen teacher's would be (its own cross-entropy above keeps DropBlock)
    losses.update(ctx.distiller(fused, detached(for_distillation(f_out)), single, for_distillation(s_out),
                                ctx.uses, gen))
    return losses, single.batch_size


def weighted_total(losses: Losses, weights: dict[str, float]) -> torch.Tensor:
    """seg + sum of the other terms, each times its weight."""
    return losses["seg"] + sum(weights[k] * v for k, v in losses.items() if k != "seg")
