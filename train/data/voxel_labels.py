"""Voxel-level views of a batch: each occupied voxel once, labelled by its points' majority.

Both published codes train on voxels: PolarSeg and Cylinder3D vote each voxel's label
from its points (a count per label, the first maximum wins, so a tie goes to the smallest
train id), and the released M2SKD code computes its logit and affinity terms and its
fused-view cross-entropy on voxels too. Both backbones here predict one logit vector per
voxel and copy it to the voxel's points, so a voxel's logits are those of any of its
points (`first`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from m2skd.common.labels import IGNORE_INDEX, NUM_CLASSES

from ..models.voxels import voxel_keys


@dataclass
class VoxelLabels:
    keys: torch.Tensor  # (M,) sorted int64 keys (sample index included)
    first: torch.Tensor  # (M,) index of one point of each voxel (the lowest)
    inverse: torch.Tensor  # (N,) voxel of every point
    labels: torch.Tensor  # (M,) majority train id of each voxel's points
    sample: torch.Tensor  # (M,) batch sample of each voxel


def majority_labels(inverse: torch.Tensor, labels: torch.Tensor, n_voxels: int,
                    n_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Per voxel the most frequent label of its points; ties to the smallest id."""
    counts = torch.zeros(n_voxels * n_classes, dtype=torch.long, device=labels.device)
    counts.index_add_(0, inverse * n_classes + labels, torch.ones_like(labels))
    return counts.view(n_voxels, n_classes).argmax(dim=1)  # argmax: the first maximal index


def voxel_labels(vox: torch.Tensor, labels: torch.Tensor, shape: tuple[int, ...]) -> VoxelLabels:
    """The voxels of (N, 1 + 3) indices on a grid of `shape`, with majority labels."""
    keys, inverse = torch.unique(voxel_keys(vox, shape), sorted=True, return_inverse=True)
    n = len(keys)
    idx = torch.arange(len(inverse), device=inverse.device)
    first = torch.full((n,), len(inverse), dtype=torch.long, device=inverse.device)
    first = first.scatter_reduce(0, inverse, idx, reduce="amin", include_self=True)
    return VoxelLabels(keys, first, inverse, majority_labels(inverse, labels, n), vox[first, 0])


def changed_targets(fused: VoxelLabels, single: VoxelLabels) -> torch.Tensor:
    """The released fused-view target: per fused voxel its majority label where that
    differs from the single view's label of the same voxel (0 where the single view has no
    point there), else ignored (train id 0). The released line marks those 255, which its
    cross-entropy (ignore index 0) does not ignore; ignoring them is what it means."""
    pos = torch.searchsorted(single.keys, fused.keys).clamp_(max=max(len(single.keys) - 1, 0))
    if len(single.keys):
        present = single.keys[pos] == fused.keys
        single_label = torch.where(present, single.labels[pos], torch.zeros_like(fused.labels))
    else:
        single_label = torch.zeros_like(fused.labels)
    return torch.where(fused.labels != single_label, fused.labels, torch.full_like(fused.labels, IGNORE_INDEX))
