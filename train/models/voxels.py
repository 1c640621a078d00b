"""Points -> voxels for the networks: int64 voxel keys, grouping and max pooling.

A voxel is one int64 key, ((b * R + r) * P + p) * Z + z, so grouping is a 1-D
`torch.unique` and joining two views on the same grid is a sorted search on keys (no
dense R x P x Z tensor is ever built for it).
"""

from __future__ import annotations

import torch


def voxel_keys(vox: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(N, 1 + len(shape)) long indices -> (N,) int64 keys in row-major order."""
    key = vox[:, 0].clone()
    for d, size in enumerate(shape):
        key = key * size + vox[:, d + 1]
    return key


def keys_to_vox(keys: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    cols = []
    rest = keys
    for size in reversed(shape):
        cols.append(rest % size)
        rest = rest // size
    cols.append(rest)
    return torch.stack(cols[::-1], dim=1)


def group(vox: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points -> occupied voxels: (sorted unique keys (M,), voxel indices (M, 1+D), point->voxel (N,))."""
    keys, inverse = torch.unique(voxel_keys(vox, shape), sorted=True, return_inverse=True)
    return keys, keys_to_vox(keys, shape), inverse


def max_pool(x: torch.Tensor, inverse: torch.Tensor, n_voxels: int) -> torch.Tensor:
    """Per-voxel max of point features with torch's own scatter_reduce (torch-scatter is not
    needed: README, "Install notes")."""
    out = x.new_zeros((n_voxels, x.shape[1]))
    return out.scatter_reduce(0, inverse[:, None].expand(-1, x.shape[1]), x, reduce="amax", include_self=False)
