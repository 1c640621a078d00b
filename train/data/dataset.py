"""Scans for training and evaluation: streamed from fused shards, or read from raw KITTI.

Nothing is loaded up front: a dataset holds the shard index (a few ints per scan) and
each worker process opens its own HDF5 handles on first use. A fused scan is augmented
once and voxelised once; the student's view is the prefix of the first `n_original`
points, so both views share the same augmentation and the student's voxels are a subset
of the teacher's on the same grid.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from m2skd.common import kitti_io
from m2skd.common.labels import raw_to_train
from m2skd.common.shards import MANIFEST, FusedScan, ShardError, ShardReader, cache_content, read_manifest
from m2skd.common.views import LOADER_VIEWS, check_view

from ..config import TrainConfig
from .augment import Augmentation
from .sample import Sample


def voxelise(points: np.ndarray, labels: np.ndarray, instance: np.ndarray, n_original: int, cfg: TrainConfig,
              aug: Augmentation | None, sequence: str, frame: int) -> Sample:
    if aug is not None:
        points = aug.apply(points)
    feats, vox = cfg.model.grid.point_features(points)
    if not cfg.model.remission:
        feats[:, 8] = 0.0  # the last feature is remission (common/geometry.py)
    return Sample(feats, vox, labels.astype(np.int64), instance.astype(np.int64), n_original, sequence, frame)


def cache_manifest(cache: Path, sequences: tuple[str, ...] | list[str]) -> tuple[dict, tuple[str, ...]]:
    """The cache's manifest and hard classes, or ShardError when it lacks one of `sequences`
    (no shard is opened)."""
    manifest = read_manifest(cache)
    try:
        hard_classes = tuple(manifest["config"]["fusion"]["hard_classes"])
    except (KeyError, TypeError):
        raise ShardError(f"{Path(cache) / MANIFEST}: no fusion config with hard classes; rebuild the cache "
                         "with `make fuse`") from None
    missing = set(sequences) - {e["sequence"] for e in manifest["shards"]}
    if missing:
        raise ShardError(f"{cache}: no fused scans of sequence(s) {sorted(missing)} (the cache holds "
                         f"{sorted({e['sequence'] for e in manifest['shards']})}); fuse them with `make fuse SEQ=...`")
    return manifest, hard_classes


class ShardDataset(torch.utils.data.Dataset):
    """Fused scans of the given sequences from a cache built by `m2skd-fuse`.

    Items are keyed by `(index, aug_seed)` (aug_seed None = no augmentation) or a plain
    index. `view="single"` reads only the first n_original points of each scan; `fused`
    and `pair` read them all. The cache's manifest is the one source of the hard classes
    (`hard_classes`): the run that trains on it takes them from here.
    """

    def __init__(self, cache: str | Path, sequences: tuple[str, ...] | list[str], cfg: TrainConfig,
                 view: str = "fused") -> None:
        check_view(view, LOADER_VIEWS)
        self.cache, self.cfg, self.view = Path(cache), cfg, view
        manifest, self.hard_classes = cache_manifest(self.cache, sequences)
        wanted = set(sequences)
        entries = [e for e in manifest["shards"] if e["sequence"] in wanted]
        self.readers = [ShardReader(self.cache / e["file"], e.get("sha256")) for e in entries]
        # what a resumed run must find again: the same fusion (config digest) of the same hard
        # classes, and the same stored scans (a cache rebuilt from edited input differs here)
        self.identity = {"config_hash": manifest.get("config_hash"), "hard_classes": list(self.hard_classes),
                         "content": cache_content(entries)}
        self.index = [(r, i) for r, reader in enumerate(self.readers) for i in range(len(reader))]

    def __len__(self) -> int:
        return len(self.index)

    def with_view(self, view: str) -> ShardDataset:
        """The same scans read in another view (no manifest or shard is read again)."""
        check_view(view, LOADER_VIEWS)
        other = copy.copy(self)
        other.view = view
        return other

    def scan(self, idx: int) -> tuple[str, FusedScan]:
        """(sequence, scan idx as stored, in this dataset's view), not voxelised."""
        r, i = self.index[idx]
        reader = self.readers[r]
        return str(reader.attrs.get("sequence")), reader.scan(i, "single" if self.view == "single" else "fused")

    def __getitem__(self, key) -> Sample:
        idx, seed = key if isinstance(key, tuple) else (key, None)
        sequence, scan = self.scan(idx)
        aug = None if seed is None else Augmentation.draw(np.random.default_rng(seed), self.cfg.augment)
        return voxelise(scan.points, scan.labels, scan.instance, scan.n_original, self.cfg, aug, sequence,
                         scan.frame)


class RawDataset(torch.utils.data.Dataset):
    """Single scans straight from a SemanticKITTI-layout root (evaluation and prediction export).

    `labels=True` (scoring) refuses sequences without labels; `skip(seq, frame)` leaves
    scans out (prediction export skips the ones already written)."""

    def __init__(self, root: str | Path, sequences: tuple[str, ...] | list[str], cfg: TrainConfig,
                 labels: bool = True, skip: Callable[[kitti_io.Sequence, int], bool] | None = None) -> None:
        self.cfg, self.labels = cfg, labels
        self.sequences = list(kitti_io.iter_sequences(root, list(sequences)))
        unlabelled = [s.name for s in self.sequences if not s.has_labels]
        if labels and unlabelled:
            raise kitti_io.KittiFormatError(
                f"{root}: sequence(s) {unlabelled} have no labels (the test split?): nothing to score; "
                "`m2skd-train predict` writes their predictions for the benchmark server")
        every = [(s, f) for s, seq in enumerate(self.sequences) for f in seq.frames()]
        self.index = [(s, f) for s, f in every if skip is None or not skip(self.sequences[s], f)]
        self.skipped = len(every) - len(self.index)
        if not every:
            raise kitti_io.KittiFormatError(f"{root}: no scans in sequence(s) {list(sequences)}")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> Sample:
        idx = key[0] if isinstance(key, tuple) else key
        s, frame = self.index[idx]
        seq = self.sequences[s]
        points, semantic, instance = seq.read(frame, labels=self.labels)
        if semantic is None:
            labels = np.zeros(len(points), np.int64)
            instance = np.zeros(len(points), np.int64)
        else:
            labels = raw_to_train(semantic, str(seq.label_path(frame)))
        return voxelise(points, labels, instance, len(points), self.cfg, None, seq.name, frame)
