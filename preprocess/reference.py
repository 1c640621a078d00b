"""A deliberately plain numpy implementation of the fusion, for tests and the benchmark.

Per target scan it re-reads every neighbour file, transforms all its points, and loops
over instances in Python: slow, but easy to check by eye against docs/method.md, "Fusion".
"""

from __future__ import annotations

import numpy as np

from m2skd.common import kitti_io
from m2skd.common.labels import class_ids, raw_to_train
from m2skd.preprocess.config import FusionConfig


def _read(seq, f):
    pts = kitti_io.read_scan(seq.scan_path(f))
    sem, inst = kitti_io.read_label(seq.label_path(f), len(pts))
    return pts, raw_to_train(sem), inst, sem >= 252


def reference_fuse(seq: kitti_io.Sequence, t: int, cfg: FusionConfig):
    """(points, labels, instance, source) of scan t, original points first."""
    n_frames = len(seq.frames())
    poses = seq.lidar_poses(n_frames)
    hard = set(class_ids(cfg.hard_classes))
    pts, lab, inst, mov = _read(seq, t)
    targets = {}
    for key in {(int(a), int(b)) for a, b in zip(lab, inst, strict=True) if a in hard and b > 0}:
        m = (lab == key[0]) & (inst == key[1])
        w = pts[m, :3].astype(np.float64)
        targets[key] = (w.mean(0), w.max(0) - w.min(0), mov[m].any())
    fused = []
    for o in cfg.offsets:
        k = t + o
        if not 0 <= k < n_frames:
            continue
        p2, l2, i2, m2 = _read(seq, k)
        rel = np.linalg.inv(poses[t]) @ poses[k]
        xyz = p2[:, :3].astype(np.float64) @ rel[:3, :3].T + rel[:3, 3]
        keys = sorted({(int(a), int(b)) for a, b in zip(l2, i2, strict=True) if a in hard and b > 0})
        for key in keys:
            m = (l2 == key[0]) & (i2 == key[1])
            w = xyz[m]
            if key in targets:
                tc, t_ext, t_moving = targets[key]
                c = w.mean(0)
                # drift beyond what the change of the visible extent explains (docs/method.md)
                view_change = np.linalg.norm((w.max(0) - w.min(0)) - t_ext)
                allowed = cfg.drift_threshold + view_change + 0.01 * np.linalg.norm(tc)
                moving = m2[m].any() or t_moving or np.linalg.norm(c - tc) > allowed
                if moving and cfg.centroid_correction:
                    w = w + (tc - c)
            elif not cfg.fuse_occluded_static or m2[m].any():
                continue
            idx = np.flatnonzero(m)
            fused.append((idx, w, p2[m, 3], l2[m], i2[m], np.full(m.sum(), o)))
    if fused:
        # the same order as the kernel: by neighbour, then by point index within it
        rows = []
        for o in cfg.offsets:
            group = [f for f in fused if f[5][0] == o]
            if not group:
                continue
            idx = np.concatenate([g[0] for g in group])
            order = np.argsort(idx, kind="stable")
            rows.append(tuple(np.concatenate([g[j] for g in group])[order] for j in range(1, 6)))
        f_xyz = np.concatenate([r[0] for r in rows]).astype(np.float32)
        f_rem = np.concatenate([r[1] for r in rows]).astype(np.float32)
        f_lab = np.concatenate([r[2] for r in rows])
        f_ins = np.concatenate([r[3] for r in rows])
        f_src = np.concatenate([r[4] for r in rows])
        if cfg.voxel > 0:
            vox = np.floor(f_xyz.astype(np.float64) / cfg.voxel).astype(np.int64)
            _, first = np.unique(vox, axis=0, return_index=True)
            keep = np.sort(first)
            f_xyz, f_rem, f_lab, f_ins, f_src = f_xyz[keep], f_rem[keep], f_lab[keep], f_ins[keep], f_src[keep]
        f_pts = np.concatenate([f_xyz, f_rem[:, None]], 1)
    else:
        f_pts, f_lab, f_ins, f_src = np.empty((0, 4), np.float32), [], [], []
    return (np.concatenate([pts, f_pts]), np.concatenate([lab, f_lab]).astype(np.uint8),
            np.concatenate([inst, f_ins]).astype(np.uint32),
            np.concatenate([np.zeros(len(pts)), f_src]).astype(np.int8))
