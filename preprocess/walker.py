"""Sliding window over a sequence: each scan file is read once, however many targets use it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from m2skd.common import kitti_io
from m2skd.common.geometry import relative_pose

from .fusion import LabelledScan, load_scan


def window_span(offsets: tuple[int, ...]) -> tuple[int, int]:
    """(lowest, highest) frame offset a target's window reaches, the target itself included."""
    return min((*offsets, 0)), max((*offsets, 0))


def iter_windows(
    seq: kitti_io.Sequence, targets: list[int], offsets: tuple[int, ...], poses: np.ndarray, n_frames: int
) -> Iterator[tuple[LabelledScan, list[tuple[int, LabelledScan, np.ndarray]]]]:
    """Yield (target scan, [(offset, neighbour scan, neighbour -> target transform)]) for ascending targets."""
    cache: dict[int, LabelledScan] = {}
    lo, hi = window_span(offsets)
    for t in targets:
        for f in [f for f in cache if f < t + lo or f > t + hi]:
            del cache[f]  # never needed again: targets ascend
        wanted = [t + o for o in (0, *offsets) if 0 <= t + o < n_frames]
        for f in wanted:
            if f not in cache:
                cache[f] = load_scan(seq, f)
        neigh = [(o, cache[t + o], relative_pose(poses, t + o, t)) for o in offsets if 0 <= t + o < n_frames]
        yield cache[t], neigh
