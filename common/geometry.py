"""Poses and the polar / cylindrical grid, defined once.

Pose convention (KITTI odometry devkit; SemanticKITTI API `generate_sequential.py`):
`poses.txt` holds camera-0 poses P_i in the first camera frame, `calib.txt`'s `Tr` maps
velodyne -> camera 0. The LiDAR pose of scan i in the first LiDAR frame is
    T_i = inv(Tr) @ P_i @ Tr
and a point p of scan j expressed in scan t's frame is inv(T_t) @ T_j @ p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def lidar_poses(camera_poses: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """(S, 4, 4) camera-0 poses + (4, 4) Tr -> (S, 4, 4) LiDAR poses."""
    tr = np.asarray(tr, dtype=np.float64)
    return np.linalg.inv(tr) @ np.asarray(camera_poses, dtype=np.float64) @ tr


def camera_poses(lidar: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """Inverse of `lidar_poses`: what `poses.txt` stores for given LiDAR poses."""
    tr = np.asarray(tr, dtype=np.float64)
    return tr @ np.asarray(lidar, dtype=np.float64) @ np.linalg.inv(tr)


def relative_pose(poses: np.ndarray, src: int, dst: int) -> np.ndarray:
    """(4, 4) transform taking points of scan `src` into scan `dst`'s frame."""
    return np.linalg.inv(poses[dst]) @ poses[src]


def transform_points(xyz: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) rigid transform to (N, 3+) points; extra columns are kept."""
    out = np.array(xyz, dtype=np.float32, copy=True)
    out[:, :3] = (xyz[:, :3].astype(np.float64) @ m[:3, :3].T + m[:3, 3]).astype(np.float32)
    return out


def cart2polar(xyz: np.ndarray) -> np.ndarray:
    """(N, 3) x, y, z -> (N, 3) rho, phi (radians, -pi..pi), z."""
    rho = np.sqrt(xyz[:, 0] ** 2 + xyz[:, 1] ** 2)
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    return np.stack([rho, phi, xyz[:, 2]], axis=1)


@dataclass(frozen=True)
class PolarGrid:
    """A (rho, phi, z) grid over a cylinder around the sensor.

    Points outside the bounds are clipped into the edge cells, as PolarSeg and
    Cylinder3D do, so every point gets a voxel and a prediction.
    """

    shape: tuple[int, int, int] = (480, 360, 32)
    min_bound: tuple[float, float, float] = (0.0, -np.pi, -4.0)
    max_bound: tuple[float, float, float] = (50.0, np.pi, 2.0)

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.shape):
            raise ValueError(f"grid shape must be positive, got {self.shape}")
        if any(lo >= hi for lo, hi in zip(self.min_bound, self.max_bound, strict=False)):
            raise ValueError(f"grid min_bound {self.min_bound} must be below max_bound {self.max_bound}")

    @property
    def cell_size(self) -> np.ndarray:
        """(max - min) / (size - 1), as PolarSeg's and Cylinder3D's published code compute it:
        the last cell only holds points clipped onto the upper bound."""
        return (np.array(self.max_bound) - np.array(self.min_bound)) / np.maximum(np.array(self.shape) - 1, 1)

    def polar_index(self, pol: np.ndarray) -> np.ndarray:
        """(N, 3) polar coords -> (N, 3) int32 voxel indices (clipped into the grid)."""
        lo, hi, shape = np.array(self.min_bound), np.array(self.max_bound), np.array(self.shape)
        idx = np.floor((np.clip(pol, lo, hi) - lo) / self.cell_size).astype(np.int64)
        return np.clip(idx, 0, shape - 1).astype(np.int32)

    def voxel_index(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3+) cartesian points -> (N, 3) int32 voxel indices."""
        return self.polar_index(cart2polar(np.asarray(xyz, dtype=np.float64)[:, :3]))

    def voxel_centre(self, idx: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices -> (N, 3) polar coordinates of the voxel centres."""
        return (np.asarray(idx) + 0.5) * self.cell_size + np.array(self.min_bound)

    def point_features(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-point 9-d features and voxel indices, as PolarSeg / Cylinder3D build them.

        features: polar offset from the voxel centre (3), rho, phi, z (3), x, y (2),
        remission (1). Returns (float32 (N, 9), int32 (N, 3)).
        """
        points = np.asarray(points)
        pol = cart2polar(points[:, :3].astype(np.float64))
        idx = self.polar_index(pol)
        feats = np.concatenate(
            [pol - self.voxel_centre(idx), pol, points[:, :2], points[:, 3:4]], axis=1
        ).astype(np.float32)
        return feats, idx

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "min_bound": list(self.min_bound), "max_bound": list(self.max_bound)}
