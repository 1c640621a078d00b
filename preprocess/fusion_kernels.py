"""Numba kernels for the hot parts of fusion: transform, per-instance centroids, voxel filter."""

from __future__ import annotations

import math

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def transform(xyz, m):
    """(N, 3+) points -> (N, 3) float64 points under the (4, 4) rigid transform m."""
    n = xyz.shape[0]
    out = np.empty((n, 3), np.float64)
    for i in range(n):
        x, y, z = np.float64(xyz[i, 0]), np.float64(xyz[i, 1]), np.float64(xyz[i, 2])
        for r in range(3):
            out[i, r] = m[r, 0] * x + m[r, 1] * y + m[r, 2] * z + m[r, 3]
    return out


@nb.njit(cache=True, nogil=True)
def place(xyz, group, shift, keep_group, points, sel):
    """Pack the kept neighbour points as float32 (M, 4): xyz moved by their group's shift,
    remission from the neighbour's row sel[i]; and the kept positions i (ascending)."""
    n = xyz.shape[0]
    m = 0
    for i in range(n):
        if keep_group[group[i]]:
            m += 1
    out = np.empty((m, 4), np.float32)
    rows = np.empty(m, np.int64)
    j = 0
    for i in range(n):
        g = group[i]
        if keep_group[g]:
            out[j, 0] = xyz[i, 0] + shift[g, 0]
            out[j, 1] = xyz[i, 1] + shift[g, 1]
            out[j, 2] = xyz[i, 2] + shift[g, 2]
            out[j, 3] = points[sel[i], 3]
            rows[j] = i
            j += 1
    return out, rows


@nb.njit(cache=True, nogil=True, inline="always")
def _slot(key, mask):
    # Fibonacci hashing: the high bits of key * 2^64/phi spread voxel and instance keys
    # (which differ mostly in their low bits) evenly over the table
    h = np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)
    return np.int64((h >> np.uint64(24)) & np.uint64(mask))


@nb.njit(cache=True, nogil=True)
def _table_size(n):
    size = 16
    while size < 2 * n:
        size <<= 1
    return size


@nb.njit(cache=True, nogil=True)
def _first_groups(keys):
    """Group of each key, numbered in order of first appearance, and the distinct keys.

    An open-addressing hash table: O(n), where a sort is O(n log n) and was the
    costliest step of fusion (voxel filter and instance grouping, ~60% of kernel time).
    """
    n = keys.shape[0]
    size = _table_size(n)
    mask = size - 1
    slot_key = np.empty(size, keys.dtype)
    slot_group = np.full(size, -1, np.int64)
    group = np.empty(n, np.int64)
    uniq = np.empty(n, keys.dtype)
    k = 0
    for i in range(n):
        key = keys[i]
        s = _slot(key, mask)
        while True:
            g = slot_group[s]
            if g < 0:
                slot_group[s] = k
                slot_key[s] = key
                uniq[k] = key
                group[i] = k
                k += 1
                break
            if slot_key[s] == key:
                group[i] = g
                break
            s = (s + 1) & mask
    return group, uniq[:k]


@nb.njit(cache=True, nogil=True)
def group_centroids(keys, xyz):
    """Sorted unique keys, their centroids (K, 3) and point counts, and each point's group index."""
    n = keys.shape[0]
    first, uniq = _first_groups(keys)
    n_groups = uniq.shape[0]
    order = np.argsort(uniq)  # a handful of instances: sorting them is free
    rank = np.empty(n_groups, np.int64)
    for j in range(n_groups):
        rank[order[j]] = j
    ids = uniq[order]
    group = np.empty(n, np.int64)
    sums = np.zeros((n_groups, 3), np.float64)
    counts = np.zeros(n_groups, np.int64)
    for i in range(n):
        g = rank[first[i]]
        group[i] = g
        sums[g, 0] += xyz[i, 0]
        sums[g, 1] += xyz[i, 1]
        sums[g, 2] += xyz[i, 2]
        counts[g] += 1
    for g in range(n_groups):
        sums[g] /= counts[g]
    return ids, sums, counts, group


@nb.njit(cache=True, nogil=True)
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
    group, uniq = _first_groups(keys)
    # point i opens its voxel iff its group number is the count of voxels opened before it
    keep = np.empty(uniq.shape[0], np.int64)
    k = 0
    for i in range(n):
        if group[i] == k:
            keep[k] = i
            k += 1
    return keep


@nb.njit(cache=True, nogil=True)
def group_extents(group, xyz, n_groups):
    """(K, 3) axis-aligned extent (max - min) of each group's points."""
    lo = np.full((n_groups, 3), np.inf)
    hi = np.full((n_groups, 3), -np.inf)
    for i in range(group.shape[0]):
        g = group[i]
        for d in range(3):
            v = xyz[i, d]
            if v < lo[g, d]:
                lo[g, d] = v
            if v > hi[g, d]:
                hi[g, d] = v
    return hi - lo
