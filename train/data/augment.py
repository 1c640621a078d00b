"""Scan augmentation (released M2SKD config: rotation, flip, scale of x and y, translation).

One draw of parameters is applied to all points of a fused scan; since the student's
points are the first `n_original` of the teacher's, both views get the identical
transform by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import AugmentConfig


@dataclass(frozen=True)
class Augmentation:
    rotation: float  # radians about z
    flip_x: bool
    flip_y: bool
    scale: float
    translation: tuple[float, float, float]
    tilt: tuple[float, float] = (0.0, 0.0)  # radians of roll (about x) and pitch (about y)
    scale_z: bool = False  # Cylinder3D and the released loader scale x and y only

    @classmethod
    def draw(cls, rng: np.random.Generator, cfg: AugmentConfig) -> Augmentation:
        return cls(
            rotation=float(np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))),
            flip_x=bool(cfg.flip and rng.random() < 0.5),
            flip_y=bool(cfg.flip and rng.random() < 0.5),
            scale=float(rng.uniform(*cfg.scale)),
            translation=tuple(float(v) for v in rng.normal(0.0, cfg.translate)),
            # drawn last and only when asked for, so runs without it draw what they always drew
            tilt=tuple(float(v) for v in np.deg2rad(rng.uniform(-cfg.tilt_deg, cfg.tilt_deg, 2)))
            if cfg.tilt_deg > 0 else (0.0, 0.0),
            scale_z=cfg.scale_z,
        )

    def matrix(self) -> np.ndarray:
        """(3, 4) affine map applied to xyz (flip, then rotate, then tilt, then scale, then shift)."""
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        m = m @ np.diag([-1.0 if self.flip_x else 1.0, -1.0 if self.flip_y else 1.0, 1.0])
        m = m @ np.diag([self.scale, self.scale, self.scale if self.scale_z else 1.0])
        if any(self.tilt):
            (cr, sr), (cp, sp) = ((np.cos(a), np.sin(a)) for a in self.tilt)
            roll = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
            pitch = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
            m = pitch @ roll @ m
        return np.concatenate([m, np.array(self.translation)[:, None]], axis=1)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 4) points -> augmented copy (remission untouched)."""
        m = self.matrix()
        out = np.array(points, dtype=np.float32, copy=True)
        out[:, :3] = points[:, :3] @ m[:, :3].T.astype(np.float32) + m[:, 3].astype(np.float32)
        return out
