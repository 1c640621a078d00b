"""Readers and writers for the SemanticKITTI file layout, with validation.

Layout (Behley et al., ICCV 2019; KITTI odometry devkit):
    ROOT/sequences/XX/velodyne/NNNNNN.bin   float32 (N, 4): x, y, z, remission
    ROOT/sequences/XX/labels/NNNNNN.label   uint32 (N,): semantic (low 16) | instance << 16
    ROOT/sequences/XX/poses.txt             12 floats a line: 3x4 camera-0 pose
    ROOT/sequences/XX/calib.txt             P0..P3, Tr (3x4 each, "KEY: v1 ... v12")
    ROOT/sequences/XX/times.txt             one timestamp (s) a line

Every reader raises KittiFormatError naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .splits import parse_sequences


class KittiFormatError(ValueError):
    """A file in the SemanticKITTI layout that cannot be read as such."""


# ---------------------------------------------------------------- scans (.bin)


def read_scan(path: str | os.PathLike) -> np.ndarray:
    """Read a velodyne `.bin` as float32 (N, 4): x, y, z, remission."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise KittiFormatError(f"{path}: scan file does not exist") from None
    except OSError as e:  # a symlink loop, a folder in its place, an unreadable disk
        raise KittiFormatError(f"{path}: cannot read the scan file ({e.strerror or e})") from None
    if raw.size % 16:
        raise KittiFormatError(
            f"{path}: size {raw.size} bytes is not a multiple of 16 (4 float32 per point); "
            "truncated or not a velodyne .bin"
        )
    pts = raw.view(np.float32).reshape(-1, 4)
    if not np.isfinite(pts).all():
        bad = int((~np.isfinite(pts).all(axis=1)).sum())
        raise KittiFormatError(f"{path}: {bad} point(s) with NaN/inf coordinates or remission")
    return pts


def write_scan(path: str | os.PathLike, points: np.ndarray) -> None:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 4:
        raise ValueError(f"{path}: points must be (N, 4) x, y, z, remission, got {points.shape}")
    with atomic_path(path) as tmp:
        np.ascontiguousarray(points, dtype=np.float32).tofile(tmp)


# ---------------------------------------------------------------- labels (.label)


def read_label(path: str | os.PathLike, n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a `.label`: (semantic raw id uint16->uint32, instance id uint32).

    If `n_points` is given, a count mismatch with the scan is an error.
    """
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise KittiFormatError(f"{path}: label file does not exist") from None
    except OSError as e:  # a symlink loop, a folder in its place, an unreadable disk
        raise KittiFormatError(f"{path}: cannot read the label file ({e.strerror or e})") from None
    if raw.size % 4:
        raise KittiFormatError(f"{path}: size {raw.size} bytes is not a multiple of 4 (uint32 per point)")
    lab = raw.view(np.uint32)
    if n_points is not None and lab.size != n_points:
        raise KittiFormatError(f"{path}: {lab.size} labels but the scan has {n_points} points")
    return lab & 0xFFFF, lab >> 16


def write_label(path: str | os.PathLike, semantic: np.ndarray, instance: np.ndarray) -> None:
    semantic = np.asarray(semantic, dtype=np.uint32)
    instance = np.asarray(instance, dtype=np.uint32)
    if semantic.shape != instance.shape or semantic.ndim != 1:
        raise ValueError(f"{path}: semantic {semantic.shape} and instance {instance.shape} must be equal 1-D")
    if semantic.size and (semantic.max() > 0xFFFF or instance.max() > 0xFFFF):
        raise ValueError(f"{path}: semantic and instance ids must fit in 16 bits")
    with atomic_path(path) as tmp:
        ((instance << 16) | semantic).astype(np.uint32).tofile(tmp)


# ---------------------------------------------------------------- poses.txt


def read_poses(path: str | os.PathLike, n_scans: int | None = None) -> np.ndarray:
    """Read `poses.txt` as float64 (S, 4, 4) homogeneous camera-0 poses.

    If `n_scans` is given, a file with fewer lines than scans is an error.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise KittiFormatError(f"{path}: not a file (a folder?); expected the sequence's poses")
    if not path.is_file():
        raise KittiFormatError(f"{path}: poses file does not exist")
    poses = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        vals = _floats(line.split(), path, lineno)
        if len(vals) != 12:
            raise KittiFormatError(f"{path}:{lineno}: expected 12 values (3x4 pose), got {len(vals)}")
        m = np.eye(4)
        m[:3, :] = np.array(vals).reshape(3, 4)
        check_rigid(m, f"{path}:{lineno}", "pose")
        if np.abs(m[:3, 3]).max() > MAX_TRANSLATION:
            raise KittiFormatError(f"{path}:{lineno}: the pose is {np.abs(m[:3, 3]).max():.3g} m from the first scan; "
                                   f"a drive stays within {MAX_TRANSLATION:.0e} m (corrupt values?)")
        poses.append(m)
    out = np.array(poses).reshape(-1, 4, 4)
    if n_scans is not None and len(out) < n_scans:
        raise KittiFormatError(f"{path}: {len(out)} poses but the sequence has {n_scans} scans")
    return out


def write_poses(path: str | os.PathLike, poses: np.ndarray) -> None:
    poses = np.asarray(poses, dtype=np.float64)
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for m in poses:
                f.write(" ".join(f"{v:.12e}" for v in m[:3, :].ravel()) + "\n")


# ---------------------------------------------------------------- calib.txt


def read_calib(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read `calib.txt` into {key: (4, 4) float64}; `Tr` (velodyne -> camera 0) is required."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise KittiFormatError(f"{path}: not a file (a folder?); expected the sequence's calib")
    if not path.is_file():
        raise KittiFormatError(f"{path}: calib file does not exist")
    calib: dict[str, np.ndarray] = {}
    where: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise KittiFormatError(f"{path}:{lineno}: expected 'KEY: 12 values'")
        key, rest = line.split(":", 1)
        vals = _floats(rest.split(), path, lineno)
        if len(vals) != 12:
            raise KittiFormatError(f"{path}:{lineno}: {key.strip()} has {len(vals)} values, expected 12")
        m = np.eye(4)
        m[:3, :] = np.array(vals).reshape(3, 4)
        if key.strip() in calib:  # which one would be meant? the last one was used silently before
            raise KittiFormatError(f"{path}:{lineno}: a second '{key.strip()}' entry (the first is on line "
                                   f"{where[key.strip()]}); keep one")
        calib[key.strip()] = m
        where[key.strip()] = lineno
    if "Tr" not in calib:
        raise KittiFormatError(f"{path}: no 'Tr' (velodyne -> camera) entry; found {sorted(calib)}")
    check_rigid(calib["Tr"], f"{path}:{where['Tr']}", "Tr (velodyne -> camera)")  # P0-P3 are projections
    return calib


# KITTI's poses and Tr are rotations to ~1e-6; this only refuses what is not one at all
RIGID_TOLERANCE = 1e-2
# KITTI's longest drive (sequence 08) strays ~600 m from its start; a float32 scan placed
# 1e6 m away has 6 cm steps between representable coordinates: past this, values are corrupt
MAX_TRANSLATION = 1e6


def check_rigid(m: np.ndarray, where: str, what: str) -> None:
    """A 4x4 whose 3x3 part is not a rotation (all zeros, singular, a reflection, scaled)
    would silently misplace every fused point, or fail later as a LinAlgError."""
    r = m[:3, :3]
    err, det = float(np.abs(r.T @ r - np.eye(3)).max()), float(np.linalg.det(r))
    if err > RIGID_TOLERANCE or det <= 0:
        raise KittiFormatError(f"{where}: the {what} is not a rigid transform (its 3x3 part is not a rotation: "
                               f"max |R^T R - I| = {err:.3g}, det = {det:.3g})")


def write_calib(path: str | os.PathLike, calib: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for key, m in calib.items():
                f.write(f"{key}: " + " ".join(f"{v:.12e}" for v in np.asarray(m)[:3, :].ravel()) + "\n")


# ---------------------------------------------------------------- times.txt


def read_times(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise KittiFormatError(f"{path}: times file does not exist")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return np.array([_floats([ln.strip()], path, i + 1)[0] for i, ln in enumerate(lines)])


def write_times(path: str | os.PathLike, times: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for t in np.asarray(times, dtype=np.float64):
                f.write(f"{t:.6e}\n")


def _floats(tokens: list[str], path: Path, lineno: int) -> list[float]:
    try:
        vals = [float(t) for t in tokens]
    except ValueError as e:
        raise KittiFormatError(f"{path}:{lineno}: not a number ({e})") from None
    if not all(np.isfinite(vals)):
        raise KittiFormatError(f"{path}:{lineno}: NaN/inf value")
    return vals


# ---------------------------------------------------------------- sequence layout

_SCAN_RE = re.compile(r"^(\d{6})\.bin$")


@dataclass(frozen=True)
class Sequence:
    """One `sequences/XX` folder of a dataset in the SemanticKITTI layout."""

    root: Path  # the dataset root (the folder holding `sequences/`)
    name: str  # "00", "08", ...

    @property
    def path(self) -> Path:
        return self.root / "sequences" / self.name

    def scan_path(self, frame: int) -> Path:
        return self.path / "velodyne" / f"{frame:06d}.bin"

    def label_path(self, frame: int) -> Path:
        return self.path / "labels" / f"{frame:06d}.label"

    def prediction_path(self, frame: int) -> Path:
        return self.path / "predictions" / f"{frame:06d}.label"

    @property
    def has_labels(self) -> bool:
        return (self.path / "labels").is_dir()

    def frames(self) -> list[int]:
        """Frame numbers of the scans on disk, checked to be 0..S-1 with no gap."""
        vel = self.path / "velodyne"
        if not vel.is_dir():
            raise KittiFormatError(f"{vel}: no velodyne folder (is {self.root} a SemanticKITTI root?)")
        names = [f for f in os.listdir(vel) if _SCAN_RE.match(f)]
        for f in names:  # a folder, a broken link or a link loop at a scan's name: say so, not a size later
            if not (vel / f).is_file():
                raise KittiFormatError(f"{vel / f}: not a scan file (a folder, a broken link or a link loop)")
        frames = sorted(int(_SCAN_RE.match(f).group(1)) for f in names)
        if not frames:
            raise KittiFormatError(f"{vel}: no NNNNNN.bin scans")
        expected = range(frames[-1] + 1)
        if len(frames) != len(expected):
            missing = sorted(set(expected) - set(frames))[:5]
            raise KittiFormatError(f"{vel}: scans missing in the middle of the sequence: {missing} ...")
        return frames

    def lidar_poses(self, n_scans: int | None = None) -> np.ndarray:
        """(S, 4, 4) LiDAR poses in the frame of the first scan (see geometry.lidar_poses)."""
        from .geometry import lidar_poses

        calib = read_calib(self.path / "calib.txt")
        return lidar_poses(read_poses(self.path / "poses.txt", n_scans), calib["Tr"])

    def read(self, frame: int, labels: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(points (N,4), raw semantic ids or None, instance ids or None) of one frame."""
        pts = read_scan(self.scan_path(frame))
        if not labels:
            return pts, None, None
        sem, inst = read_label(self.label_path(frame), len(pts))
        return pts, sem, inst


def iter_sequences(root: str | os.PathLike, spec: str | Iterable[str]) -> Iterator[Sequence]:
    root = Path(root)
    for name in parse_sequences(spec):
        seq = Sequence(root, name)
        if not seq.path.is_dir():
            raise KittiFormatError(f"{seq.path}: sequence folder does not exist")
        yield seq


# ---------------------------------------------------------------- what a fused shard was built from


def input_fingerprint(seq: Sequence, first: int, last: int, span: tuple[int, int], n_frames: int) -> str:
    """Hash of (name, size, mtime) of every file fused shard [first, last] is built from:
    poses, calibration, and the scans and labels of frames first + span[0] .. last + span[1]
    (the fusion window's reach, clipped to the sequence's n_frames).

    Regenerated or edited input (a new synthetic dataset in the same folder, a relabelled
    scan) changes it, so m2skd-fuse rebuilds that shard instead of keeping a stale one, and a
    compact cache (which reads the scans' own points back from the dataset) is refused by
    the loader; stat() only, so checking a finished cache costs no reads.
    """
    lo, hi = span
    files = [seq.path / "poses.txt", seq.path / "calib.txt"]
    for f in range(max(0, first + lo), min(n_frames - 1, last + hi) + 1):
        files += [seq.scan_path(f), seq.label_path(f)]
    h = hashlib.sha256()
    for path in files:
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]
