"""`make fuse`: plan shards per sequence, skip finished ones, fuse the rest, write the manifest.

Sequences run in parallel processes; each walks its scans with a sliding window and
writes shards of `shard_size` consecutive scans (temp file + rename, then a sidecar
with the manifest entry). A rerun skips shards whose sidecar matches the config hash,
whose input files are unchanged (size and mtime of every scan, label, poses.txt and
calib.txt the shard read) and whose checksum verifies; everything else is rebuilt.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2skd.common import kitti_io
from m2skd.common.atomic import remove_stale_temps
from m2skd.common.config import digest
from m2skd.common.labels import CLASS_NAMES
from m2skd.common.shards import FORMAT_VERSION, ShardReader, finished_entry, shard_name, write_manifest, write_shard

from .config import FusionConfig
from .fusion import fuse_scan, hard_lut
from .walker import iter_windows, window_span


class FusionError(ValueError):
    """Input that fusion cannot use (message names the file or sequence)."""


@dataclass(frozen=True)
class SequencePlan:
    name: str
    n_frames: int
    shards: tuple[tuple[int, int], ...]  # (first, last) frame of each shard


def cache_config(cfg: FusionConfig) -> tuple[dict, str]:
    """What a shard's validity depends on besides its input files (fusion config, format) and its hash.

    The dataset's path is not part of it: the input fingerprint covers the files
    themselves, so a dataset moved elsewhere keeps its cache."""
    d = {"fusion": cfg.to_dict(), "format_version": FORMAT_VERSION}
    return d, digest(d)


def input_fingerprint(seq: kitti_io.Sequence, first: int, last: int, offsets: tuple[int, ...],
                      n_frames: int) -> str:
    """Hash of (name, size, mtime) of every file shard [first, last] is built from.

    Regenerated or edited input (a new synthetic dataset in the same folder, a relabelled
    scan) changes it, so a rerun rebuilds that shard instead of keeping a stale one;
    stat() only, so checking a finished cache costs no reads.
    """
    lo, hi = window_span(offsets)
    files = [seq.path / "poses.txt", seq.path / "calib.txt"]
    for f in range(max(0, first + lo), min(n_frames - 1, last + hi) + 1):
        files += [seq.scan_path(f), seq.label_path(f)]
    h = hashlib.sha256()
    for path in files:
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def plan(root: Path, names: list[str], cfg: FusionConfig) -> list[SequencePlan]:
    """Check every sequence before anything is written; raise FusionError on unusable input."""
    plans = []
    for seq in kitti_io.iter_sequences(root, names):
        if not seq.has_labels:
            raise FusionError(
                f"{seq.path}: no labels folder (test split?). Fusion needs labels to find hard-class "
                "instances; fuse only labelled sequences (SemanticKITTI: 00-10). Nothing was written."
            )
        frames = seq.frames()
        seq.lidar_poses(len(frames))  # poses.txt / calib.txt present, complete and parseable
        missing = [f for f in frames if not seq.label_path(f).is_file()]
        if missing:
            raise FusionError(f"{seq.path / 'labels'}: no label for scan(s) {missing[:5]}")
        n = len(frames)
        shards = tuple((a, min(a + cfg.shard_size, n) - 1) for a in range(0, n, cfg.shard_size))
        plans.append(SequencePlan(seq.name, n, shards))
    return plans


def fuse_sequence(
    root: Path, sp: SequencePlan, out: Path, cfg: FusionConfig, force: bool = False,
    on_scan: Callable[[str, int, bool], None] | None = None,
) -> list[dict]:
    """Fuse one sequence's unfinished shards; on_scan(seq, frame, skipped) after each scan."""
    config, chash = cache_config(cfg)
    seq = kitti_io.Sequence(root, sp.name)
    todo, entries = [], []
    inputs = {}
    for first, last in sp.shards:
        path = out / shard_name(sp.name, first, last)
        inputs[last] = input_fingerprint(seq, first, last, cfg.offsets, sp.n_frames)
        entry = None if force else finished_entry(path, chash, inputs[last])
        if entry is None:
            todo.append((first, last))
        else:
            entries.append(entry)
            for f in range(first, last + 1):
                if on_scan:
                    on_scan(sp.name, f, True)
    if not todo:
        return entries
    poses = seq.lidar_poses(sp.n_frames)
    lut = hard_lut(cfg)
    attrs = {"sequence": sp.name, "window": cfg.window, "hard_classes": list(cfg.hard_classes),
             "config": config, "config_hash": chash}
    # One sliding window across all unfinished scans: a scan shared by two shards is read once.
    targets = [f for a, b in todo for f in range(a, b + 1)]
    bounds = {b: a for a, b in todo}
    batch: list = []
    # A finished shard is written (HDF5, lzf, sha256) on a second thread while the next
    # one is fused: the numba kernels release the GIL, so the two overlap on a second core.
    # At most one write is pending, so memory holds at most two shards.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as writer:
        pending = None
        for target, neigh in iter_windows(seq, targets, cfg.offsets, poses, sp.n_frames):
            batch.append(fuse_scan(target, neigh, cfg, lut))
            if on_scan:
                on_scan(sp.name, target.frame, False)
            if target.frame in bounds:
                first = bounds[target.frame]
                if pending is not None:
                    entries.append(pending.result())
                pending = writer.submit(write_shard, out / shard_name(sp.name, first, target.frame), batch,
                                        {**attrs, "input_hash": inputs[target.frame]},
                                        compress_points=cfg.compress_points)
                batch = []
        if pending is not None:
            entries.append(pending.result())
    return entries


def _worker(args):
    root, sp, out, cfg, force, queue = args

    def tick(name, frame, skipped):
        queue.put((name, frame, skipped))
    return fuse_sequence(root, sp, out, cfg, force, tick)


def run_fusion(
    root: str | Path, names: list[str], out: str | Path, cfg: FusionConfig, workers: int = 1,
    force: bool = False, on_scan: Callable[[str, int, bool], None] | None = None,
    on_plan: Callable[[list[SequencePlan]], None] | None = None,
) -> dict:
    """Fuse the given sequences of ROOT into OUT; return the manifest."""
    root, out = Path(root), Path(out)
    plans = plan(root, names, cfg)
    if on_plan:
        on_plan(plans)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)  # a killed run's half-written shard
    config, chash = cache_config(cfg)
    if workers <= 1 or len(plans) == 1:
        for sp in plans:
            fuse_sequence(root, sp, out, cfg, force, on_scan)
    else:
        ctx = mp.get_context("spawn")  # numba and h5py state must not be forked
        with ctx.Manager() as mgr:
            queue = mgr.Queue()
            with ctx.Pool(min(workers, len(plans))) as pool:
                result = pool.map_async(_worker, [(root, sp, out, cfg, force, queue) for sp in plans])
                total = sum(sp.n_frames for sp in plans)
                seen = 0
                while seen < total:
                    try:
                        item = queue.get(timeout=0.5)
                    except Exception:  # queue.Empty through the manager proxy
                        if result.ready():
                            result.get()  # re-raises a worker's error
                            break
                        continue
                    seen += 1
                    if on_scan:
                        on_scan(*item)
                result.get()
    return write_manifest(out, config, chash)


def fused_stats(manifest: dict, out: str | Path) -> dict:
    """Mean fused points per scan, overall and per hard class (for the CLI summary)."""
    per_class: dict[str, float] = {}
    fused = scans = 0
    for e in manifest["shards"]:
        r = ShardReader(Path(out) / e["file"])
        for i in range(len(r)):
            s = r.scan(i)
            lab = s.labels[s.n_original:]
            fused += len(lab)
            for c, n in zip(*np.unique(lab, return_counts=True), strict=False):
                per_class[CLASS_NAMES[c]] = per_class.get(CLASS_NAMES[c], 0) + int(n)
        scans += len(r)
        r.close()
    return {"scans": scans, "fused_per_scan": fused / max(scans, 1),
            "per_class_per_scan": {k: v / max(scans, 1) for k, v in sorted(per_class.items())}}
