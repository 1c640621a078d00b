"""One voxelised scan as the loader hands it to a batch (no I/O here: the batch and the
distiller import it without loading h5py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """One voxelised scan: all points (the teacher's view); the first n_original are the scan's own."""

    feats: np.ndarray  # (N, 9) float32 per-point features
    vox: np.ndarray  # (N, 3) int32 (rho, phi, z) voxel indices
    labels: np.ndarray  # (N,) int64 train ids
    instance: np.ndarray  # (N,) int64 instance ids
    n_original: int
    sequence: str
    frame: int

    def prefix(self, n: int) -> Sample:
        return Sample(self.feats[:n], self.vox[:n], self.labels[:n], self.instance[:n], min(n, self.n_original),
                      self.sequence, self.frame)
