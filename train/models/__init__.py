"""Backbones. Each takes voxelised points and returns per-point logits and the decoder
features at its voxels. They depend on nothing in the data path: any object with the
fields of `VoxelInput` (the loader's `Batch` is one) will do."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..config import ModelConfig


class VoxelInput(Protocol):
    feats: torch.Tensor  # (N, 9) float per-point features
    vox: torch.Tensor  # (N, 4) long: sample, rho, phi, z indices

    @property
    def batch_size(self) -> int: ...


@dataclass
class ModelOutput:
    point_logits: torch.Tensor  # (N, C) for every input point
    voxel_keys: torch.Tensor  # (M,) sorted int64 keys of the voxels the features live on
    voxel_feats: torch.Tensor  # (M, F) decoder features at those voxels (what L_feat / L_aff use)
    point_voxel: torch.Tensor  # (N,) index into the M voxels for every point


# Decoder levels a backbone returns as `voxel_feats` (its `feature_level` attribute, set
# per run from the distillation config): the last one, or the one at half resolution
# (the released M2SKD code distils Cylinder3D's upBlock2 output, which is that level).
FEATURE_LEVELS = ("last", "half")


def set_feature_level(model: torch.nn.Module, level: str) -> None:
    """Which decoder level `model` returns as its voxel features (`FEATURE_LEVELS`)."""
    if level not in FEATURE_LEVELS:
        raise ValueError(f"unknown feature level {level!r}; choose from {FEATURE_LEVELS}")
    model.feature_level = level


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    device = torch.device(device)
    if cfg.backbone == "polarnet":
        from .polarnet import PolarNet

        model = PolarNet(cfg)
    else:
        from .cylinder3d import Cylinder3D

        model = Cylinder3D(cfg, device)
    return model.to(device)
