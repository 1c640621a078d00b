"""Before anything is written: check every sequence of a fusion run and cut it into shards;
what a finished shard's validity depends on (the config hash, the input files' fingerprint)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m2skd.common import kitti_io
from m2skd.common.config import digest
from m2skd.common.shards import FORMAT_VERSION

from .config import LATER_DEFAULTS, FusionConfig


class FusionError(ValueError):
    """Input that fusion cannot use (message names the file or sequence)."""


@dataclass(frozen=True)
class SequencePlan:
    name: str
    n_frames: int
    shards: tuple[tuple[int, int], ...]  # (first, last) frame of each shard
    notes: tuple[str, ...] = ()  # warnings worth the user's eye (the CLI prints them)


def cache_config(cfg: FusionConfig) -> tuple[dict, str]:
    """What a shard's validity depends on besides its input files (fusion config, format) and its hash.

    The dataset's path is not part of it: the input fingerprint covers the files
    themselves, so a dataset moved elsewhere keeps its cache."""
    fusion = {k: v for k, v in cfg.to_dict().items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}
    d = {"fusion": fusion, "format_version": FORMAT_VERSION}
    return d, digest(d)


def plan(root: Path, names: list[str], cfg: FusionConfig) -> list[SequencePlan]:
    """Check every sequence before anything is written; raise FusionError on unusable input.

    Checked here: labels present, no scan missing in the middle, poses and calibration
    complete and parseable, every scan's and label's size (from stat, no reads). What only
    reading shows (NaN, unknown label ids) stops the run at that scan, naming it; shards
    finished before it are kept."""
    plans = []
    for seq in kitti_io.iter_sequences(root, names):
        if not seq.has_labels:
            raise FusionError(
                f"{seq.path}: no labels folder (test split?). Fusion needs labels to find hard-class "
                "instances; fuse only labelled sequences (SemanticKITTI: 00-10). Nothing was written."
            )
        frames = seq.frames()
        n = len(frames)
        n_poses = len(seq.lidar_poses(n))  # poses.txt / calib.txt present, complete and parseable
        _check_sizes(seq, frames)
        notes = () if n_poses == n else (
            f"{seq.path / 'poses.txt'}: {n_poses} poses for {n} scans: the last {n_poses - n} scan(s) are "
            f"missing from velodyne/ (a partial copy?); fusing the {n} present",)
        shards = tuple((a, min(a + cfg.shard_size, n) - 1) for a in range(0, n, cfg.shard_size))
        plans.append(SequencePlan(seq.name, n, shards, notes))
    return plans


def _check_sizes(seq: kitti_io.Sequence, frames: list[int]) -> None:
    """Every scan a multiple of 16 bytes, every label 4 bytes per point (stat only)."""
    for f in frames:
        scan, label = seq.scan_path(f), seq.label_path(f)
        if not label.is_file():
            raise FusionError(f"{label}: no label for scan {f}. Nothing was written.")
        size = scan.stat().st_size
        if size % 16:
            raise FusionError(f"{scan}: size {size} bytes is not a multiple of 16 (float32 x, y, z, remission). "
                              "Nothing was written.")
        if label.stat().st_size != size // 4:
            raise FusionError(f"{label}: {label.stat().st_size // 4} labels but the scan has {size // 16} points. "
                              "Nothing was written.")
