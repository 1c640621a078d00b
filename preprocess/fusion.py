"""Hard-instance fusion of one target scan with its neighbours (docs/method.md, "Fusion").

For target scan t and each neighbour k (nearest first), the hard-class instance points
of k are moved into t's frame with the KITTI poses, inv(T_t) @ T_k. An instance that
moves in the world (25x raw id in either scan, or a centroid that drifts more than
`drift_threshold` after pose alignment) is shifted so its centroid lands on the same
instance's centroid in t. By default only instances present in t are fused; optionally
static instances occluded in t are fused too. Fused points are thinned by a voxel filter
that keeps the first (nearest-scan) point of each voxel, and appended after the original
points, which stay byte-identical. `align centroid`, `full_window` and `append_own` are
the released loader's fusion (preset `released`; config.RELEASED says where each comes from).
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


# Angular spacing of an HDL-64E's samples, ~0.6 deg between beams at most: the metres
# between two samples per metre of range (the target scan's sensor is at the origin).
SAMPLE_SPACING = 0.01


@dataclass(frozen=True)
class _Instances:
    """Hard-class instances of one scan (in the target's frame): sorted keys, centroids,
    extents, moving flags, and each selected point's instance index."""

    ids: np.ndarray
    cent: np.ndarray
    ext: np.ndarray
    moving: np.ndarray
    group: np.ndarray

    @classmethod
    def of(cls, keys: np.ndarray, xyz: np.ndarray, moving_points: np.ndarray) -> _Instances:
        ids, cent, _, group = K.group_centroids(keys, xyz)
        moving = np.zeros(len(ids), bool)
        moving[group[moving_points]] = True
        return cls(ids, cent, K.group_extents(group, xyz, len(ids)), moving, group)


def moves(nb: _Instances, g: int, tg: _Instances, t: int, drift_threshold: float) -> bool:
    """Whether neighbour instance g (the same object as target instance t) moved.

    A 25x id in either scan says so. Otherwise its centroid must have drifted by more
    than the threshold *plus* what a static object's visible centroid moves by anyway:
    the change of its visible extent (a big object seen from another side, a truck's
    rear face vs its flank) and the spacing of the sensor's samples at its range (far
    away a few dozen points land on other parts of it from scan to scan).
    """
    if nb.moving[g] or tg.moving[t]:
        return True
    view_change = float(np.linalg.norm(nb.ext[g] - tg.ext[t]))
    sampling = SAMPLE_SPACING * float(np.linalg.norm(tg.cent[t]))
    return float(np.linalg.norm(nb.cent[g] - tg.cent[t])) > drift_threshold + view_change + sampling


def _neighbour_points(offset: int, nb_scan: LabelledScan, rel: np.ndarray, tg: _Instances, cfg: FusionConfig,
                      lut: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """(points, labels, instance, source) of one neighbour's hard instances, placed in t."""
    sel, keys = nb_scan.hard(lut)
    if len(sel) and not cfg.fuse_occluded_static:
        present = _lookup(tg.ids, keys)[1]
        sel, keys = sel[present], keys[present]
    if not len(sel):
        return None
    released = cfg.align == "centroid"
    # released: the instance stays in its own scan's frame and is only translated (below)
    xyz = nb_scan.points[sel, :3].astype(np.float64) if released else K.transform(nb_scan.points[sel], rel)
    nb = _Instances.of(keys, xyz, nb_scan.moving[sel])
    g_pos, g_present = _lookup(tg.ids, nb.ids)
    shift = np.zeros((len(nb.ids), 3))
    keep_group = np.ones(len(nb.ids), bool)
    for g in range(len(nb.ids)):
        if g_present[g]:
            if released or (cfg.centroid_correction and moves(nb, g, tg, g_pos[g], cfg.drift_threshold)):
                shift[g] = tg.cent[g_pos[g]] - nb.cent[g]
        elif nb.moving[g] or released:
            keep_group[g] = False  # a moving object absent from t (or any, without poses) has nowhere to go
    pts, rows = K.place(xyz, nb.group, shift, keep_group, nb_scan.points, sel)
    sel = sel[rows]
    return pts, nb_scan.labels[sel], nb_scan.instance[sel], np.full(len(sel), offset, np.int8)


def fuse_scan(
    target: LabelledScan,
    neighbours: list[tuple[int, LabelledScan, np.ndarray]],
    cfg: FusionConfig,
    lut: np.ndarray | None = None,
) -> FusedScan:
    """Fuse the hard instances of `neighbours` [(offset, scan, 4x4 scan->target)] into `target`."""
    lut = hard_lut(cfg) if lut is None else lut
    t_sel, t_keys = target.hard(lut)
    tg = _Instances.of(t_keys, target.points[t_sel, :3].astype(np.float64), target.moving[t_sel])
    if cfg.full_window and len(neighbours) < len(cfg.offsets):
        neighbours = []  # the window reaches past the sequence's ends: left unfused, as released
    parts = [p for offset, nb_scan, rel in neighbours
             if (p := _neighbour_points(offset, nb_scan, rel, tg, cfg, lut)) is not None]
    fused = [np.concatenate(cols) for cols in zip(*parts, strict=True)] if parts else [
        np.empty((0, 4), np.float32), np.empty(0, np.uint8), np.empty(0, np.uint32), np.empty(0, np.int8)]
    if cfg.voxel > 0 and len(fused[0]):
        k = K.voxel_first(fused[0][:, :3], cfg.voxel)
        fused = [a[k] for a in fused]
    if cfg.append_own and len(t_sel):  # released: t's instances once more (source 0), fused or not
        own = (target.points[t_sel], target.labels[t_sel], target.instance[t_sel], np.zeros(len(t_sel), np.int8))
        fused = [np.concatenate([a, b]) for a, b in zip(fused, own, strict=True)]
    n = len(target.points)
    return FusedScan(
        frame=target.frame,
        points=np.concatenate([target.points, fused[0]]),
        labels=np.concatenate([target.labels, fused[1]]),
        instance=np.concatenate([target.instance, fused[2]]),
        source=np.concatenate([np.zeros(n, np.int8), fused[3]]),
        n_original=n,
    )
