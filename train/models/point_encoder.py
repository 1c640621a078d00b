"""Per-point MLP + max pool per cell, the shared front end of PolarNet and Cylinder3D."""

from __future__ import annotations

import torch
from torch import nn

from .voxels import max_pool


class PointEncoder(nn.Module):
    """BN(9) -> Linear/BN/ReLU ... -> Linear, max-pooled per cell, then Linear -> `out` + ReLU
    (PolarSeg: 64-128-256-512 -> 32; Cylinder3D: 64-128-256-256 -> 16)."""

    def __init__(self, widths: tuple[int, ...], out: int, in_dim: int = 9) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(in_dim)]
        c = in_dim
        for i, w in enumerate(widths):
            layers.append(nn.Linear(c, w))
            if i < len(widths) - 1:
                layers += [nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
            c = w
        self.mlp = nn.Sequential(*layers)
        self.compress = nn.Sequential(nn.Linear(c, out), nn.ReLU(inplace=True))

    def forward(self, feats: torch.Tensor, inverse: torch.Tensor, n_cells: int) -> torch.Tensor:
        return self.compress(max_pool(self.mlp(feats), inverse, n_cells))
