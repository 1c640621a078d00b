"""Numba kernels for the hot parts of fusion: transform, per-instance centroids, voxel filter."""

from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(cache=True)
def transform(xyz, m):
    """(N, 3+) points -> (N, 3) float64 points under the (4, 4) rigid transform m."""
    n = xyz.shape[0]
    out = np.empty((n, 3), np.float64)
    for i in range(n):
        x, y, z = np.float64(xyz[i, 0]), np.float64(xyz[i, 1]), np.float64(xyz[i, 2])
        for r in range(3):
            out[i, r] = m[r, 0] * x + m[r, 1] * y + m[r, 2] * z + m[r, 3]
    return out


@nb.njit(cache=True)
def group_centroids(keys, xyz):
    """Sorted unique keys, their centroids (K, 3) and point counts, and each point's group index."""
    n = keys.shape[0]
    order = np.argsort(keys, kind="mergesort")
    group = np.empty(n, np.int64)
    k = -1
    for j in range(n):
        i = order[j]
        if j == 0 or keys[i] != keys[order[j - 1]]:
            k += 1
        group[i] = k
    n_groups = k + 1
    ids = np.empty(n_groups, keys.dtype)
    sums = np.zeros((n_groups, 3), np.float64)
    counts = np.zeros(n_groups, np.int64)
    for i in range(n):
        g = group[i]
        ids[g] = keys[i]
        sums[g, 0] += xyz[i, 0]
        sums[g, 1] += xyz[i, 1]
        sums[g, 2] += xyz[i, 2]
        counts[g] += 1
    for g in range(n_groups):
        sums[g] /= counts[g]
    return ids, sums, counts, group


@nb.njit(cache=True)
def voxel_first(xyz, voxel):
    """Indices (ascending) of the first point in each voxel of edge `voxel` metres."""
    n = xyz.shape[0]
    keys = np.empty(n, np.int64)
    off = 1 << 20  # +-52 km at 5 cm: far beyond any LiDAR
    for i in range(n):
        ix = np.int64(math.floor(xyz[i, 0] / voxel)) + off
        iy = np.int64(math.floor(xyz[i, 1] / voxel)) + off
        iz = np.int64(math.floor(xyz[i, 2] / voxel)) + off
        keys[i] = (ix << 42) | (iy << 21) | iz
    order = np.argsort(keys, kind="mergesort")  # stable: the first point of a voxel comes first
    keep = np.empty(n, np.int64)
    k = 0
    for j in range(n):
        if j == 0 or keys[order[j]] != keys[order[j - 1]]:
            keep[k] = order[j]
            k += 1
    return np.sort(keep[:k])
