"""What a backbone is: the contract every network keeps, so the losses, the distiller, the
evaluator and the trainer never ask which one they hold.

A backbone is a `torch.nn.Module` built as `Cls(cfg: ModelConfig, device)` that
- takes voxelised points (any object with the fields of `VoxelInput`; the loader's
  `Batch` is one) and returns a `ModelOutput`;
- gives 20 logit columns for every input point, in input order (train id 0 included: a
  backbone that predicts no 'unlabelled' puts a constant very low logit there);
- gives its decoder features at voxels named by sorted, unique int64 keys
  (`models/voxels.py`), and every point's voxel among them: two views of the same scans
  on the same grid then join by key (`distill.join_voxels`);
- has `feature_dim` (the width of those features) and `feature_level` ("last" or "half",
  which decoder level it returns; `set_feature_level`).
Registering it is one entry in `models/registry.py`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn


class VoxelInput(Protocol):
    feats: torch.Tensor  # (N, 9) float per-point features
    vox: torch.Tensor  # (N, 4) long: sample, rho, phi, z indices

    @property
    def batch_size(self) -> int: ...


@dataclass
class ModelOutput:
    point_logits: torch.Tensor  # (N, 20) for every input point
    voxel_keys: torch.Tensor  # (M,) sorted int64 keys of the voxels the features live on
    voxel_feats: torch.Tensor  # (M, F) decoder features at those voxels (what L_feat / L_aff use)
    point_voxel: torch.Tensor  # (N,) index into the M voxels for every point
    # the same network on the same batch without its stochastic regularisers (DropBlock,
    # dropout): what distillation compares with the teacher (`deterministic_forward`);
    # None when not asked for
    deterministic: ModelOutput | None = field(default=None, repr=False, compare=False)


class Backbone(Protocol):
    feature_dim: int
    feature_level: str

    def __call__(self, batch: VoxelInput) -> ModelOutput: ...


# Decoder levels a backbone returns as `voxel_feats`: the last one, or the one at half
# resolution (the released M2SKD code distils Cylinder3D's upBlock2 output, that level).
FEATURE_LEVELS = ("last", "half")


def set_feature_level(model: torch.nn.Module, level: str) -> None:
    """Which decoder level `model` returns as its voxel features (`FEATURE_LEVELS`)."""
    if level not in FEATURE_LEVELS:
        raise ValueError(f"unknown feature level {level!r}; choose from {FEATURE_LEVELS}")
    model.feature_level = level


def stochastic_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that perturb a training forward at random: dropout layers and
    anything else with a probability `p` > 0 that acts only while training (DropBlock)."""
    dropouts = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    return [m for m in model.modules()
            if (isinstance(m, dropouts) or getattr(m, "stochastic", False)) and float(getattr(m, "p", 0)) > 0]


@contextlib.contextmanager
def batch_stats_only(modules: list[nn.Module]) -> Iterator[None]:
    """BatchNorm in `modules` normalises by the batch's statistics as in training, but its
    running statistics are left as they were: a second pass over the same batch (the
    deterministic one) must not count twice in what the deployed network normalises with."""
    bns = [m for mod in modules for m in mod.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for bn, m in zip(bns, saved, strict=True):
            bn.momentum = m


@contextlib.contextmanager
def regularisers_off(modules: list[nn.Module]) -> Iterator[None]:
    saved = [m.p for m in modules]
    for m in modules:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(modules, saved, strict=True):
            m.p = p


def deterministic_forward(model: nn.Module, batch: VoxelInput) -> ModelOutput:
    """`model(batch)` with `.deterministic` set: the outputs without its stochastic
    regularisers, sharing every layer before the first of them where the backbone knows how
    (`forward(batch, deterministic_too=True)`, PolarNet); else a second pass with them off
    and BatchNorm's running statistics untouched; for a network without any (Cylinder3D),
    or not training, the output itself at no cost."""
    noisy = stochastic_modules(model) if model.training else []
    if not noisy:
        out = model(batch)
        out.deterministic = out
        return out
    if getattr(model, "shares_deterministic_forward", False):
        return model(batch, deterministic_too=True)
    out = model(batch)
    with regularisers_off(noisy), batch_stats_only([model]):
        out.deterministic = model(batch)
    return out


def for_distillation(out: ModelOutput) -> ModelOutput:
    """The output a distillation term reads: the deterministic one when it was computed."""
    return out.deterministic if out.deterministic is not None else out
