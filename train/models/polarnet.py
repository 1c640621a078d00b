"""PolarNet (Zhang et al., CVPR 2020; PolarSeg): polar BEV grid, point MLP + max pool per
cell, 2D U-Net with circular padding on the angle axis, class x height output per cell."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2skd.common.labels import NUM_CLASSES

from ..config import ModelConfig
from . import ModelOutput, VoxelInput
from .point_encoder import PointEncoder
from .voxels import group


def circular_pad(x: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Pad (B, C, rho, phi): the angle axis wraps (phi = -pi is next to +pi), rho gets zeros."""
    x = F.pad(x, (pad, pad, 0, 0), mode="circular")
    return F.pad(x, (0, 0, pad, pad))


class PolarConv(nn.Module):
    """Two (circular pad, 3x3 conv, BN, LeakyReLU) layers."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.b1(self.c1(circular_pad(x))), 0.1)
        return F.leaky_relu(self.b2(self.c2(circular_pad(x))), 0.1)


class PolarUNet(nn.Module):
    """U-Net over the BEV grid; widths 2w, 4w, 8w, 16w, 16w (PolarSeg: w = 32 -> 64 ... 512, 512)."""

    def __init__(self, cin: int, w: int) -> None:
        super().__init__()
        widths = [2 * w, 4 * w, 8 * w, 16 * w, 16 * w]
        self.inc = PolarConv(cin, widths[0])
        self.downs = nn.ModuleList(PolarConv(widths[k], widths[k + 1]) for k in range(4))
        self.ups = nn.ModuleList(PolarConv(widths[k + 1] + widths[k], widths[k]) for k in reversed(range(4)))
        self.out_channels = widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2, ceil_mode=True)))
        x = skips.pop()
        for up in self.ups:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))
        return x


class PolarNet(nn.Module):
    def __init__(self, cfg: ModelConfig, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.shape = tuple(cfg.grid_shape)
        self.n_classes = n_classes
        self.cap = cfg.max_points_per_cell
        self.encoder = PointEncoder(tuple(cfg.point_widths), cfg.compress)
        self.unet = PolarUNet(cfg.compress, cfg.init_size)
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.feature_dim = self.unet.out_channels
        self.head = nn.Conv2d(self.unet.out_channels, n_classes * self.shape[2], 1)

    def _keep(self, inverse: torch.Tensor) -> torch.Tensor:
        """At most `cap` random points per BEV cell while training (PolarSeg's 256)."""
        if not (self.training and self.cap > 0):
            return torch.arange(len(inverse), device=inverse.device)
        perm = torch.randperm(len(inverse), device=inverse.device)
        order = perm[torch.sort(inverse[perm], stable=True).indices]
        cell = inverse[order]
        first = torch.searchsorted(cell, cell, right=False)
        rank = torch.arange(len(cell), device=cell.device) - first
        return order[rank < self.cap]

    def forward(self, batch: VoxelInput) -> ModelOutput:
        R, P, Z = self.shape
        keys, cells, inverse = group(batch.vox[:, :3], (R, P))
        keep = self._keep(inverse)
        pooled = self.encoder(batch.feats[keep], inverse[keep], len(keys))
        bev = pooled.new_zeros((batch.batch_size, R, P, pooled.shape[1]))
        bev[cells[:, 0], cells[:, 1], cells[:, 2]] = pooled
        dec = self.unet(bev.permute(0, 3, 1, 2))
        logits = self.head(self.dropout(dec)).view(batch.batch_size, self.n_classes, Z, R, P)
        b, r, p, z = batch.vox.unbind(1)
        point_logits = logits.permute(0, 2, 3, 4, 1)[b, z, r, p]
        voxel_feats = dec.permute(0, 2, 3, 1)[cells[:, 0], cells[:, 1], cells[:, 2]]
        return ModelOutput(point_logits, keys, voxel_feats, inverse)
