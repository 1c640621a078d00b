"""Collating samples into batches and grouping points into voxels.

Voxels are identified by one int64 key, ((b * R + r) * P + p) * Z + z, so grouping is a
1-D `torch.unique` and joining two views on the same grid is a sorted search on keys
(no dense R x P x Z tensor is ever built for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .dataset import Sample


@dataclass
class Batch:
    feats: torch.Tensor  # (N, 9) float
    vox: torch.Tensor  # (N, 4) long: batch, rho, phi, z indices
    labels: torch.Tensor  # (N,) long train ids
    instance: torch.Tensor  # (N,) long
    sizes: list[int]  # points per sample
    n_original: list[int]
    meta: list[tuple[str, int]] = field(default_factory=list)  # (sequence, frame)

    @property
    def batch_size(self) -> int:
        return len(self.sizes)

    def to(self, device: torch.device | str) -> Batch:
        mv = {k: getattr(self, k).to(device, non_blocking=True) for k in ("feats", "vox", "labels", "instance")}
        return Batch(**mv, sizes=self.sizes, n_original=self.n_original, meta=self.meta)

    def original_mask(self) -> torch.Tensor:
        """(N,) bool: True for each sample's own points (False for fused ones)."""
        mask = torch.zeros(len(self.labels), dtype=torch.bool, device=self.labels.device)
        start = 0
        for size, n in zip(self.sizes, self.n_original, strict=True):
            mask[start:start + n] = True
            start += size
        return mask


def make_batch(samples: list[Sample]) -> Batch:
    vox = np.concatenate([np.concatenate([np.full((len(s.vox), 1), b, np.int32), s.vox], axis=1)
                          for b, s in enumerate(samples)])
    return Batch(
        feats=torch.from_numpy(np.concatenate([s.feats for s in samples])),
        vox=torch.from_numpy(vox.astype(np.int64)),
        labels=torch.from_numpy(np.concatenate([s.labels for s in samples])),
        instance=torch.from_numpy(np.concatenate([s.instance for s in samples])),
        sizes=[len(s.labels) for s in samples],
        n_original=[s.n_original for s in samples],
        meta=[(s.sequence, s.frame) for s in samples],
    )


class collate:  # lower case: used like the function it replaced, collate(view)(samples)
    """DataLoader collate_fn for a view: 'teacher' (all points), 'student' (own points only)
    or 'both' (a (teacher, student) pair from the same augmented scans).

    A class, not a closure, so loader workers started with 'spawn' can pickle it.
    """

    def __init__(self, view: str) -> None:
        self.view = view

    def __call__(self, samples: list[Sample]):
        if self.view == "teacher":
            return make_batch(samples)
        student = make_batch([s.prefix(s.n_original) for s in samples])
        return student if self.view == "student" else (make_batch(samples), student)


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
    """Per-voxel max of point features with torch's own scatter_reduce (design.md 6)."""
    out = x.new_zeros((n_voxels, x.shape[1]))
    return out.scatter_reduce(0, inverse[:, None].expand(-1, x.shape[1]), x, reduce="amax", include_self=False)
