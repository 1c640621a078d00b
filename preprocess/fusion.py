"""Hard-instance fusion of one target scan with its neighbours (docs/method.md, "Fusion").

For target scan t and each neighbour k (nearest first), the hard-class instance points
of k are moved into t's frame with the KITTI poses, inv(T_t) @ T_k. An instance that
moves in the world (25x raw id in either scan, or a centroid that drifts more than
`drift_threshold` after pose alignment) is shifted so its centroid lands on the same
instance's centroid in t. By default only instances present in t are fused; optionally
static instances occluded in t are fused too. Fused points are thinned by a voxel filter
that keeps the first (nearest-scan) point of each voxel, and appended after the original
points, which stay byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from m2skd.common import kitti_io
from m2skd.common.labels import NUM_CLASSES, class_ids, is_moving, raw_to_train
from m2skd.common.shards import FusedScan

from . import fusion_kernels as K
from .config import FusionConfig


@dataclass
class LabelledScan:
    frame: int
    points: np.ndarray  # (N, 4) float32, as in the .bin
    labels: np.ndarray  # (N,) uint8 train ids
    instance: np.ndarray  # (N,) uint32
    moving: np.ndarray  # (N,) bool: raw id is a 25x "moving" id
    _hard: tuple | None = field(default=None, repr=False, compare=False)

    def hard(self, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the scan's hard-class instance points and their instance keys.

        Cached: a scan is a neighbour of up to `window` targets and is scanned once.
        """
        if self._hard is None or self._hard[0] is not lut:
            sel = np.flatnonzero(lut[self.labels] & (self.instance > 0))
            self._hard = (lut, sel, instance_keys(self.labels[sel], self.instance[sel]))
        return self._hard[1], self._hard[2]


def load_scan(seq: kitti_io.Sequence, frame: int) -> LabelledScan:
    pts, sem, inst = seq.read(frame)
    return LabelledScan(frame, pts, raw_to_train(sem, str(seq.label_path(frame))), inst, is_moving(sem))


def hard_lut(cfg: FusionConfig) -> np.ndarray:
    lut = np.zeros(NUM_CLASSES, bool)
    lut[list(class_ids(cfg.hard_classes))] = True
    return lut


def instance_keys(labels: np.ndarray, instance: np.ndarray) -> np.ndarray:
    """(class, instance) as one uint64, so equal instance ids of two classes never merge."""
    return (labels.astype(np.uint64) << np.uint64(32)) | instance.astype(np.uint64)


def _lookup(sorted_ids: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each key in sorted_ids and whether it is there."""
    pos = np.searchsorted(sorted_ids, keys)
    if not len(sorted_ids):
        return pos, np.zeros(len(keys), bool)
    return pos, sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == keys


def fuse_scan(
    target: LabelledScan,
    neighbours: list[tuple[int, LabelledScan, np.ndarray]],
    cfg: FusionConfig,
    lut: np.ndarray | None = None,
) -> FusedScan:
    """Fuse the hard instances of `neighbours` [(offset, scan, 4x4 scan->target)] into `target`."""
    lut = hard_lut(cfg) if lut is None else lut
    t_sel, t_keys = target.hard(lut)
    t_ids, t_cent, _, t_group = K.group_centroids(t_keys, target.points[t_sel, :3].astype(np.float64))
    t_moving = np.zeros(len(t_ids), bool)
    t_moving[t_group[target.moving[t_sel]]] = True

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]] = []
    for offset, nb_scan, rel in neighbours:
        sel, keys = nb_scan.hard(lut)
        if not len(sel):
            continue
        if not cfg.fuse_occluded_static:
            present = _lookup(t_ids, keys)[1]
            sel, keys = sel[present], keys[present]
            if not len(sel):
                continue
        xyz = K.transform(nb_scan.points[sel], rel)
        ids, cent, _, group = K.group_centroids(keys, xyz)
        n_moving = np.zeros(len(ids), bool)
        n_moving[group[nb_scan.moving[sel]]] = True
        g_pos, g_present = _lookup(t_ids, ids)
        shift = np.zeros((len(ids), 3))
        keep_group = np.ones(len(ids), bool)
        for g in range(len(ids)):
            if g_present[g]:
                tc = t_cent[g_pos[g]]
                moving = n_moving[g] or t_moving[g_pos[g]] or np.linalg.norm(cent[g] - tc) > cfg.drift_threshold
                if moving and cfg.centroid_correction:
                    shift[g] = tc - cent[g]
            elif n_moving[g]:
                keep_group[g] = False  # a moving object absent from t has nowhere to go
        pts, rows = K.place(xyz, group, shift, keep_group, nb_scan.points, sel)
        sel = sel[rows]
        parts.append((pts, nb_scan.labels[sel], nb_scan.instance[sel], np.full(len(sel), offset, np.int8), offset))

    n = len(target.points)
    if parts:
        f_pts = np.concatenate([p[0] for p in parts])
        f_lab = np.concatenate([p[1] for p in parts])
        f_ins = np.concatenate([p[2] for p in parts])
        f_src = np.concatenate([p[3] for p in parts])
        if cfg.voxel > 0 and len(f_pts):
            k = K.voxel_first(f_pts[:, :3], cfg.voxel)
            f_pts, f_lab, f_ins, f_src = f_pts[k], f_lab[k], f_ins[k], f_src[k]
    else:
        f_pts = np.empty((0, 4), np.float32)
        f_lab = np.empty(0, np.uint8)
        f_ins = np.empty(0, np.uint32)
        f_src = np.empty(0, np.int8)
    return FusedScan(
        frame=target.frame,
        points=np.concatenate([target.points, f_pts]),
        labels=np.concatenate([target.labels, f_lab]),
        instance=np.concatenate([target.instance, f_ins]),
        source=np.concatenate([np.zeros(n, np.int8), f_src]),
        n_original=n,
    )
