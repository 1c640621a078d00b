"""Scans for training and evaluation: streamed from fused shards, or read from raw KITTI.

Nothing is loaded up front: a dataset holds the shard index (a few ints per scan) and
each worker process opens its own HDF5 handles on first use. A fused scan is augmented
once and voxelised once; the student's view is the prefix of the first `n_original`
points, so both views share the same augmentation and the student's voxels are a subset
of the teacher's on the same grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from m2skd.common import kitti_io
from m2skd.common.config import TrainConfig
from m2skd.common.labels import class_ids, raw_to_train
from m2skd.common.shards import ShardError, ShardReader, read_manifest

from .augment import Augmentation

VIEWS = ("teacher", "student", "both")


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


def _voxelise(points: np.ndarray, labels: np.ndarray, instance: np.ndarray, n_original: int, cfg: TrainConfig,
              aug: Augmentation | None, sequence: str, frame: int) -> Sample:
    if aug is not None:
        points = aug.apply(points)
    feats, vox = cfg.grid.point_features(points)
    return Sample(feats, vox, labels.astype(np.int64), instance.astype(np.int64), n_original, sequence, frame)


def aug_seed(seed: int, step: int, slot: int) -> int:
    """Augmentation seed of one batch slot: a pure function of (run seed, step, slot), so a
    resumed run or another worker count draws exactly the same augmentation."""
    return int(np.random.SeedSequence([seed, step, slot]).generate_state(1)[0])


class ShardDataset(torch.utils.data.Dataset):
    """Fused scans of the given sequences from a cache built by `m2skd-fuse`.

    Items are keyed by `(index, aug_seed)` (aug_seed None = no augmentation) or a plain
    index. `view="student"` reads only the first n_original points of each scan.
    """

    def __init__(self, cache: str | Path, sequences: tuple[str, ...] | list[str], cfg: TrainConfig,
                 view: str = "teacher") -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        self.cache, self.cfg, self.view = Path(cache), cfg, view
        manifest = read_manifest(self.cache)
        hard = manifest.get("config", {}).get("fusion", {}).get("hard_classes")
        if hard is not None and tuple(class_ids(hard)) != tuple(class_ids(cfg.hard_classes)):
            raise ShardError(f"{self.cache}: fused with hard classes {list(hard)}, this run uses "
                             f"{list(cfg.hard_classes)}; refuse the mix (rebuild the cache or pass --hard-classes)")
        wanted = set(sequences)
        self.readers = [ShardReader(self.cache / e["file"]) for e in manifest["shards"] if e["sequence"] in wanted]
        self.index = [(r, i) for r, reader in enumerate(self.readers) for i in range(len(reader))]
        if not self.index:
            have = sorted({e["sequence"] for e in manifest["shards"]})
            raise ShardError(f"{self.cache}: no fused scans of sequence(s) {sorted(wanted)} (the cache holds "
                             f"{have}); fuse them with `make fuse SEQ=...`")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> Sample:
        idx, seed = key if isinstance(key, tuple) else (key, None)
        r, i = self.index[idx]
        reader = self.readers[r]
        scan = reader.scan(i, prefix=self.view == "student")
        aug = None if seed is None else Augmentation.draw(np.random.default_rng(seed), self.cfg)
        return _voxelise(scan.points, scan.labels, scan.instance, scan.n_original, self.cfg, aug,
                         str(reader.attrs.get("sequence")), scan.frame)


class RawDataset(torch.utils.data.Dataset):
    """Single scans straight from a SemanticKITTI-layout root (evaluation and prediction export)."""

    def __init__(self, root: str | Path, sequences: tuple[str, ...] | list[str], cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.sequences = list(kitti_io.iter_sequences(root, list(sequences)))
        self.index = [(s, f) for s, seq in enumerate(self.sequences) for f in seq.frames()]
        if not self.index:
            raise kitti_io.KittiFormatError(f"{root}: no scans in sequence(s) {list(sequences)}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> Sample:
        idx = key[0] if isinstance(key, tuple) else key
        s, frame = self.index[idx]
        seq = self.sequences[s]
        points, semantic, instance = seq.read(frame, labels=seq.has_labels)
        if semantic is None:
            labels = np.zeros(len(points), np.int64)
            instance = np.zeros(len(points), np.int64)
        else:
            labels = raw_to_train(semantic, str(seq.label_path(frame)))
        return _voxelise(points, labels, instance, len(points), self.cfg, None, seq.name, frame)


class StepSampler(torch.utils.data.Sampler):
    """Batches of `(index, aug_seed)` for steps start..total-1, a pure function of (seed, step).

    Epoch e visits a seeded permutation; step s is chunk s % steps_per_epoch of epoch
    s // steps_per_epoch, so resuming at step s replays exactly what an unbroken run would
    have seen. Under DDP each rank takes its slice of the global batch (bs * world).
    """

    def __init__(self, n: int, batch_size: int, seed: int, total_steps: int, start_step: int = 0,
                 rank: int = 0, world: int = 1, augment: bool = True) -> None:
        self.n, self.bs, self.seed, self.total, self.start = n, batch_size, seed, total_steps, start_step
        self.rank, self.world, self.augment = rank, world, augment
        self.global_bs = batch_size * world
        self.steps_per_epoch = max(1, n // self.global_bs)

    def _epoch(self, e: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, e])
        need = self.steps_per_epoch * self.global_bs
        parts = [rng.permutation(self.n) for _ in range(-(-need // self.n))]
        return np.concatenate(parts)[:need]

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        cached = (-1, None)
        for step in range(self.start, self.total):
            e, k = divmod(step, self.steps_per_epoch)
            if cached[0] != e:
                cached = (e, self._epoch(e))
            chunk = cached[1][k * self.global_bs:(k + 1) * self.global_bs]
            slots = range(self.rank * self.bs, (self.rank + 1) * self.bs)
            yield [(int(chunk[j]), aug_seed(self.seed, step, j) if self.augment else None) for j in slots]
