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


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    device = torch.device(device)
    if cfg.backbone == "polarnet":
        from .polarnet import PolarNet

        model = PolarNet(cfg)
    else:
        from .cylinder3d import Cylinder3D

        model = Cylinder3D(cfg, device)
    return model.to(device)
