"""Cylinder3D (Zhu et al., CVPR 2021): cylindrical voxels, point MLP + max pool per voxel,
asymmetric residual sparse 3D U-Net on spconv (layer plan in docs/method.md, "Backbones").

spconv on CPU only runs with ConvAlgo.Native (its default implicit-GEMM algorithm asks
for a CUDA stream), so the algorithm is picked from the device the model is built for.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from m2skd.common.labels import NUM_CLASSES

from ..config import ModelConfig
from .backbone import ModelOutput, VoxelInput
from .point_encoder import PointEncoder
from .voxels import group, voxel_keys

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # spconv uses torch.cuda.amp decorators torch deprecates
    import spconv.pytorch as spconv
    from spconv.core import ConvAlgo


class _Ctx:
    """Construction context: the conv algorithm for the target device."""

    def __init__(self, device: torch.device) -> None:
        self.algo = ConvAlgo.Native if device.type != "cuda" else ConvAlgo.MaskImplicitGemm

    def subm(self, cin: int, cout: int, k, key: str) -> spconv.SubMConv3d:
        k = (k, k, k) if isinstance(k, int) else k
        pad = tuple(x // 2 for x in k)
        return spconv.SubMConv3d(cin, cout, k, padding=pad, bias=False, indice_key=key, algo=self.algo)


def _act_bn(x: spconv.SparseConvTensor, bn: nn.Module) -> spconv.SparseConvTensor:
    return x.replace_feature(bn(nn.functional.leaky_relu(x.features, 0.01)))


class AsymPair(nn.Module):
    """Two asymmetric convs (e.g. 1x3x3 then 3x1x3), each LeakyReLU + BN. `first_bn=False`
    skips the first BN (its weights still exist): an unmerged Cylinder3D pull request's
    context block discards that BN's result; the official master and the released M2SKD
    network apply it (`context_bn1`, default on; off for runs saved before the knob)."""

    def __init__(self, ctx: _Ctx, cin: int, cout: int, k1, k2, key: str, first_bn: bool = True) -> None:
        super().__init__()
        self.c1, self.b1 = ctx.subm(cin, cout, k1, f"{key}_{k1}"), nn.BatchNorm1d(cout)
        self.c2, self.b2 = ctx.subm(cout, cout, k2, f"{key}_{k2}"), nn.BatchNorm1d(cout)
        self.first_bn = first_bn

    def forward(self, x):
        y = self.c1(x)
        y = _act_bn(y, self.b1) if self.first_bn else y.replace_feature(nn.functional.leaky_relu(y.features, 0.01))
        return _act_bn(self.c2(y), self.b2)


A, B_ = (1, 3, 3), (3, 1, 3)


class ResContext(nn.Module):
    """Shortcut and branch of two asymmetric convs each, summed. The context block (first)
    runs 1x3x3 -> 3x1x3 beside 3x1x3 -> 1x3x3; the down blocks the other way round."""

    def __init__(self, ctx: _Ctx, cin: int, cout: int, key: str, context: bool = True, bn1: bool = True) -> None:
        super().__init__()
        k1, k2 = (A, B_) if context else (B_, A)
        self.shortcut = AsymPair(ctx, cin, cout, k1, k2, key)
        self.branch = AsymPair(ctx, cin, cout, k2, k1, key, first_bn=bn1 or not context)

    def forward(self, x):
        s, r = self.shortcut(x), self.branch(x)
        return s.replace_feature(s.features + r.features)


class DownBlock(nn.Module):
    """Residual asymmetric block, then a strided sparse conv (height pooled in the first two)."""

    def __init__(self, ctx: _Ctx, cin: int, cout: int, key: str, pool_height: bool) -> None:
        super().__init__()
        self.res = ResContext(ctx, cin, cout, key, context=False)
        stride = (2, 2, 2) if pool_height else (2, 2, 1)
        self.pool = spconv.SparseConv3d(cout, cout, 3, stride=stride, padding=1, bias=False,
                                        indice_key=f"down_{key}", algo=ctx.algo)

    def forward(self, x):
        skip = self.res(x)
        return self.pool(skip), skip


class UpBlock(nn.Module):
    """Sparse conv at level k+1, inverse conv back to level k's voxels, add the skip, three convs.

    Index keys name the resolution level, so convs of one kernel shape at one level share
    their (identical) neighbour lists."""

    def __init__(self, ctx: _Ctx, cin: int, cout: int, level: int) -> None:
        super().__init__()
        key = f"l{level}"
        self.trans, self.tb = ctx.subm(cin, cout, 3, f"l{level + 1}_3"), nn.BatchNorm1d(cout)
        self.up = spconv.SparseInverseConv3d(cout, cout, 3, bias=False, indice_key=f"down_{key}", algo=ctx.algo)
        self.c1, self.b1 = ctx.subm(cout, cout, A, f"{key}_{A}"), nn.BatchNorm1d(cout)
        self.c2, self.b2 = ctx.subm(cout, cout, B_, f"{key}_{B_}"), nn.BatchNorm1d(cout)
        self.c3, self.b3 = ctx.subm(cout, cout, 3, f"{key}_3"), nn.BatchNorm1d(cout)

    def forward(self, x, skip):
        x = self.up(_act_bn(self.trans(x), self.tb))
        x = x.replace_feature(x.features + skip.features)  # inverse conv restores skip's indices and order
        x = _act_bn(self.c1(x), self.b1)
        x = _act_bn(self.c2(x), self.b2)
        return _act_bn(self.c3(x), self.b3)


class ReconBlock(nn.Module):
    """3x1x1, 1x3x1, 1x1x3 convs gated by sigmoid, summed, multiplied onto the input."""

    def __init__(self, ctx: _Ctx, c: int, key: str) -> None:
        super().__init__()
        ks = [(3, 1, 1), (1, 3, 1), (1, 1, 3)]
        self.convs = nn.ModuleList(ctx.subm(c, c, k, f"{key}_{k}") for k in ks)
        self.bns = nn.ModuleList(nn.BatchNorm1d(c) for _ in ks)

    def forward(self, x):
        gate = sum(torch.sigmoid(bn(conv(x).features)) for conv, bn in zip(self.convs, self.bns, strict=True))
        return x.replace_feature(gate * x.features)


class Cylinder3D(nn.Module):
    def __init__(self, cfg: ModelConfig, device: torch.device, n_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        ctx = _Ctx(device)
        w = cfg.init_size
        self.shape = tuple(cfg.grid_shape)
        self.encoder = PointEncoder(tuple(cfg.point_widths), cfg.compress)
        self.context = ResContext(ctx, cfg.compress, w, "l0", bn1=cfg.context_bn1)
        self.down = nn.ModuleList([
            DownBlock(ctx, w, 2 * w, "l0", True),
            DownBlock(ctx, 2 * w, 4 * w, "l1", True),
            DownBlock(ctx, 4 * w, 8 * w, "l2", False),
            DownBlock(ctx, 8 * w, 16 * w, "l3", False),
        ])
        self.up = nn.ModuleList([
            UpBlock(ctx, 16 * w, 16 * w, 3),
            UpBlock(ctx, 16 * w, 8 * w, 2),
            UpBlock(ctx, 8 * w, 4 * w, 1),
            UpBlock(ctx, 4 * w, 2 * w, 0),
        ])
        self.recon = ReconBlock(ctx, 2 * w, "l0")
        self.logits = ctx.subm(4 * w, n_classes, 3, "l0_3")
        # bias kept outside the sparse conv: spconv fuses a conv bias only on CUDA (no-grad path)
        self.logit_bias = nn.Parameter(torch.zeros(n_classes))
        self.feature_dim = 4 * w  # the last level's (recon + input) and upBlock2's widths alike
        self.feature_level = "last"

    def forward(self, batch: VoxelInput) -> ModelOutput:
        keys, vox, inverse = group(batch.vox, self.shape)
        feats = self.encoder(batch.feats, inverse, len(keys))
        if self.training or not torch.is_autocast_enabled():  # no argument: CUDA autocast (torch>=2.1)
            return self._sparse(feats, vox, batch.batch_size, keys, inverse)
        # A frozen or evaluated network under autocast (the student step's teacher): spconv
        # casts to fp16 only on its autograd path; its inference path gets fp16 features and
        # fp32 weights and finds no kernel ("can't find suitable algorithm"), seen on an H100.
        # So the sparse part runs in fp32 there.
        with torch.autocast(feats.device.type, enabled=False):
            return self._sparse(feats.float(), vox, batch.batch_size, keys, inverse)

    def _sparse(self, feats: torch.Tensor, vox: torch.Tensor, batch_size: int, keys: torch.Tensor,
                inverse: torch.Tensor) -> ModelOutput:
        x = spconv.SparseConvTensor(feats, vox.int(), list(self.shape), batch_size)
        x = self.context(x)
        skips = []
        for down in self.down:
            x, skip = down(x)
            skips.append(skip)
        for k, up in enumerate(self.up):
            x = up(x, skips.pop())
            if k == 2:
                half = x  # upBlock2's output: level 1, half resolution in every axis
        # distilled features: the last decoder level (recon block + its input), or upBlock2's
        # (`feature_level` half, the released code's; docs/method.md, "Distillation")
        dec = torch.cat([self.recon(x).features, x.features], dim=1)
        logits = self.logits(x.replace_feature(dec)).features + self.logit_bias
        if self.feature_level == "half":
            half_keys, half_feats, parent = half_level(half, vox)
            return ModelOutput(logits[inverse], half_keys, half_feats, parent[inverse])
        return ModelOutput(logits[inverse], keys, dec, inverse)


def half_level(x: spconv.SparseConvTensor, vox: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A level-1 sparse tensor as (sorted keys, their features, each level-0 voxel's level-1
    voxel). The first down block's strided conv (kernel 3, stride 2, padding 1) has an
    output at i // 2 for every input i (i lies in its window), so a voxel's parent is its
    indices halved, and the parent always exists."""
    shape = tuple(int(s) for s in x.spatial_shape)
    keys = voxel_keys(x.indices.long(), shape)
    order = torch.argsort(keys)
    keys = keys[order]
    parent = torch.cat([vox[:, :1], vox[:, 1:] // 2], dim=1)
    return keys, x.features[order], torch.searchsorted(keys, voxel_keys(parent, shape))
