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

from dataclasses import dataclass
from typing import Protocol

import torch


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
