"""PolarNet (Zhang et al., CVPR 2020; PolarSeg): polar BEV grid, point MLP + max pool per
cell, 2D U-Net with circular padding on the angle axis, class x height output per cell."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2skd.common.labels import NUM_CLASSES

from ..config import ModelConfig
from .backbone import ModelOutput, VoxelInput, batch_stats_only
from .point_encoder import PointEncoder
from .voxels import group, keys_to_vox, voxel_keys

# 'unlabelled' gets no output: a constant logit low enough that softmax gives it ~0,
# within fp16's range for autocast
UNLABELLED_LOGIT = -1e4


def circular_pad(x: torch.Tensor, pad: int = 1) -> torch.Tensor:
    """Pad (B, C, rho, phi): the angle axis wraps (phi = -pi is next to +pi), rho gets zeros."""
    x = F.pad(x, (pad, pad, 0, 0), mode="circular")
    return F.pad(x, (0, 0, pad, pad))


class PolarConv(nn.Module):
    """Two (circular pad, 3x3 conv, BN, LeakyReLU 0.01) layers (PolarSeg's double_conv_circular)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.b1(self.c1(circular_pad(x))), 0.01)
        return F.leaky_relu(self.b2(self.c2(circular_pad(x))), 0.01)


class DropBlock2D(nn.Module):
    """DropBlock (Ghiasi et al., NeurIPS 2018) while training: zero square blocks of
    `block` x `block` cells around seeds drawn with probability p / block^2, rescale the
    rest. PolarSeg applies it (block 7, p 0.5) after every up block."""

    stochastic = True  # `backbone.stochastic_modules`: a training forward's random perturbation

    def __init__(self, p: float, block: int = 7) -> None:
        super().__init__()
        self.p, self.block = p, block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        seeds = (torch.rand(x.shape[0], *x.shape[2:], device=x.device) < self.p / self.block**2).to(x.dtype)
        dropped = F.max_pool2d(seeds[:, None], self.block, stride=1, padding=self.block // 2)
        if self.block % 2 == 0:
            dropped = dropped[:, :, :-1, :-1]
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))


class PolarUNet(nn.Module):
    """U-Net over the BEV grid, PolarSeg's: BatchNorm on the input, widths 2w, 4w, 8w, 16w,
    16w down (w = 32: 64 ... 512, 512); up blocks 32w -> 8w, 16w -> 4w, 8w -> 2w, 4w -> 2w
    (1024 -> 256, 512 -> 128, 256 -> 64, 128 -> 64), each a x2 bilinear upsample padded to
    the skip, [skip, up] concatenated, a double conv and DropBlock."""

    def __init__(self, cin: int, w: int, drop: float) -> None:
        super().__init__()
        widths = [2 * w, 4 * w, 8 * w, 16 * w, 16 * w]
        self.input_bn = nn.BatchNorm2d(cin)
        self.inc = PolarConv(cin, widths[0])
        self.downs = nn.ModuleList(PolarConv(widths[k], widths[k + 1]) for k in range(4))
        self.ups = nn.ModuleList(PolarConv(2 * widths[k], widths[max(k - 1, 0)]) for k in reversed(range(4)))
        self.drops = nn.ModuleList(DropBlock2D(drop) for _ in range(4))
        self.out_channels = widths[0]  # of the last up block and of the one before it

    def _up(self, x: torch.Tensor, skips: list[torch.Tensor], drop: bool) -> tuple[torch.Tensor, torch.Tensor]:
        levels = []
        for up, dropblock, skip in zip(self.ups, self.drops, reversed(skips), strict=True):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2))
            x = up(torch.cat([skip, x], dim=1))
            x = dropblock(x) if drop else x
            levels.append(x)
        return levels[-1], levels[-2]

    def forward(self, x: torch.Tensor, deterministic_too: bool = False
                ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
        """The last level's features and those of the level before it (half resolution);
        with `deterministic_too` the same again without DropBlock, from the same down path
        (the first DropBlock follows the first up block: only the up path runs twice),
        BatchNorm's running statistics updated by the first pass only."""
        skips = [self.inc(self.input_bn(x))]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        bottom, skips = skips[-1], skips[:-1]
        out = self._up(bottom, skips, drop=True)
        if not deterministic_too:
            return out, None
        with batch_stats_only(list(self.ups)):
            return out, self._up(bottom, skips, drop=False)


class PolarNet(nn.Module):
    """PolarSeg's network. It predicts the 19 real classes (no output for 'unlabelled', as
    published); `point_logits` carries a constant very low logit in column 0 so every
    backbone returns the same 20 columns to the losses and the evaluator."""

    def __init__(self, cfg: ModelConfig, device: torch.device | None = None) -> None:  # device: the contract's
        super().__init__()
        self.shape = tuple(cfg.grid_shape)
        self.n_classes = NUM_CLASSES - 1
        self.cap = cfg.max_points_per_cell
        self.encoder = PointEncoder(tuple(cfg.point_widths), cfg.compress)
        self.unet = PolarUNet(cfg.compress, cfg.init_size, cfg.dropout)
        self.feature_dim = self.unet.out_channels
        self.feature_level = "last"
        self.head = nn.Conv2d(self.unet.out_channels, self.n_classes * self.shape[2], 1)

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

    # `backbone.deterministic_forward`: the DropBlock-free output shares the down path
    shares_deterministic_forward = True

    def forward(self, batch: VoxelInput, deterministic_too: bool = False) -> ModelOutput:
        R, P, _ = self.shape
        keys, cells, inverse = group(batch.vox[:, :3], (R, P))
        keep = self._keep(inverse)
        pooled = self.encoder(batch.feats[keep], inverse[keep], len(keys))
        bev = pooled.new_zeros((batch.batch_size, R, P, pooled.shape[1]))
        bev[cells[:, 0], cells[:, 1], cells[:, 2]] = pooled
        levels, clean = self.unet(bev.permute(0, 3, 1, 2), deterministic_too and self.training)
        out = self._outputs(batch, levels, keys, cells, inverse)
        if deterministic_too:
            out.deterministic = out if clean is None else self._outputs(batch, clean, keys, cells, inverse)
        return out

    def _outputs(self, batch: VoxelInput, levels: tuple[torch.Tensor, torch.Tensor], keys: torch.Tensor,
                 cells: torch.Tensor, inverse: torch.Tensor) -> ModelOutput:
        R, P, Z = self.shape
        dec, half = levels
        # channels are (height, class), as PolarSeg lays them out
        logits = self.head(dec).view(batch.batch_size, Z, self.n_classes, R, P)
        b, r, p, z = batch.vox.unbind(1)
        real = logits.permute(0, 1, 3, 4, 2)[b, z, r, p]
        point_logits = torch.cat([real.new_full((len(real), 1), UNLABELLED_LOGIT), real], dim=1)
        if self.feature_level == "half":
            return ModelOutput(point_logits, *half_cells(half, cells, inverse))
        voxel_feats = dec.permute(0, 2, 3, 1)[cells[:, 0], cells[:, 1], cells[:, 2]]
        return ModelOutput(point_logits, keys, voxel_feats, inverse)


def half_cells(half: torch.Tensor, cells: torch.Tensor, inverse: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The half-resolution map (B, C, R', P') at the occupied cells' parents (indices halved;
    an odd size's last row max pooling dropped folds into the row before): (sorted keys,
    their features, each point's parent)."""
    shape = tuple(half.shape[2:])
    parents = torch.cat([cells[:, :1], torch.minimum(cells[:, 1:] // 2, torch.tensor(shape, device=cells.device) - 1)],
                        dim=1)
    keys, of_cell = torch.unique(voxel_keys(parents, shape), sorted=True, return_inverse=True)
    at = keys_to_vox(keys, shape)
    return keys, half.permute(0, 2, 3, 1)[at[:, 0], at[:, 1], at[:, 2]], of_cell[inverse]
