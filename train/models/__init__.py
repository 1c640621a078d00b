"""Backbones. Each returns per-point logits and the decoder features at its voxels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from m2skd.common.config import TrainConfig


@dataclass
class ModelOutput:
    point_logits: torch.Tensor  # (N, C) for every input point
    voxel_keys: torch.Tensor  # (M,) sorted int64 keys of the voxels the features live on
    voxel_feats: torch.Tensor  # (M, F) decoder features at those voxels (what L_feat / L_aff use)
    point_voxel: torch.Tensor  # (N,) index into the M voxels for every point


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    device = torch.device(device)
    if cfg.model == "polarnet":
        from .polarnet import PolarNet

        model = PolarNet(cfg)
    else:
        from .cylinder3d import Cylinder3D

        model = Cylinder3D(cfg, device)
    return model.to(device)
