"""`make fuse`: plan shards per sequence, skip finished ones, fuse the rest, write the manifest.

Sequences run in parallel processes; each walks its scans with a sliding window and
writes shards of `shard_size` consecutive scans (temp file + rename, then a sidecar
with the manifest entry). A rerun skips shards whose sidecar matches the config hash,
whose input files are unchanged (size and mtime of every scan, label, poses.txt and
calib.txt the shard read) and whose checksum verifies; everything else is rebuilt.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from m2skd.common import kitti_io
from m2skd.common.atomic import remove_stale_temps
from m2skd.common.config import digest
from m2skd.common.labels import CLASS_NAMES
from m2skd.common.outputs import exclusive
from m2skd.common.shards import (
    FORMAT_VERSION,
    MANIFEST,
    ShardReader,
    finished_entry,
    is_manifest,
    shard_name,
    write_manifest,
    write_shard,
)

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
    notes: tuple[str, ...] = ()  # warnings worth the user's eye (the CLI prints them)


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
             "config": config, "config_hash": chash, "layout": "compact" if cfg.compact else "full"}
    if cfg.compact:  # where the scans' own points are read back from (not part of any hash)
        attrs["data_root"] = str(Path(root).resolve())
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
                                        compress_points=cfg.compress_points, own_points=not cfg.compact)
                batch = []
        if pending is not None:
            entries.append(pending.result())
    return entries


_QUEUE = None  # a pool worker's progress queue (handed over at start: spawn cannot pickle it per task)


def _init_worker(queue) -> None:
    """Pool worker start-up: Ctrl-C is the parent's to handle (it stops the pool), and the
    worker dies with its parent (Linux), so a killed `m2skd-fuse` leaves no orphan behind."""
    global _QUEUE
    _QUEUE = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call took effect
            os._exit(1)


def _worker(args):
    root, sp, out, cfg, force = args

    def tick(name, frame, skipped):
        _QUEUE.put((name, frame, skipped))
    return fuse_sequence(root, sp, out, cfg, force, tick)


def _check_mixing(out: Path, names: list[str], chash: str, force: bool) -> list[str]:
    """Sequences of OUT fused with another config than this run's, outside this run.

    A cache holds one config (the teacher must not train on a mix): they are refused
    unless `force`, which drops them from the manifest (their files stay)."""
    other = sorted({e.get("sequence") for e in _sidecars(out)
                    if e.get("config_hash") != chash and e.get("sequence") not in names})
    if other and not force:
        raise FusionError(f"{out}: holds sequence(s) {other} fused with another config; a cache holds one config. "
                          "Fuse them again with this one (add them to --sequences), use another --out, or pass "
                          "--force to drop them from the manifest.")
    return other


def _replaced(out: Path, names: list[str], chash: str) -> list[str]:
    """This run's sequences that OUT holds fused with another config (their shards are redone)."""
    return sorted({e.get("sequence") for e in _sidecars(out)
                   if e.get("config_hash") != chash and e.get("sequence") in names})


def _check_manifest_is_ours(out: Path) -> None:
    """A manifest.json that m2skd-fuse did not write (another tool's, a user's file) is never overwritten."""
    path = out / MANIFEST
    if not path.exists():
        return
    try:
        ours = is_manifest(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ours = False
    if not ours:
        raise FusionError(f"{path}: not a manifest m2skd-fuse wrote; it is left as it is: choose another --out")


def _sidecars(out: Path) -> list[dict]:
    entries = []
    for side in out.glob("*.h5.json"):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            entries.append(json.loads(side.read_text()))
    return entries


def _fuse_in_pool(root: Path, plans: list[SequencePlan], out: Path, cfg: FusionConfig, workers: int, force: bool,
                  on_scan: Callable[[str, int, bool], None] | None) -> None:
    ctx = mp.get_context("spawn")  # numba and h5py state must not be forked
    queue = ctx.Queue()
    pool = ctx.Pool(min(workers, len(plans)), initializer=_init_worker, initargs=(queue,))
    try:
        result = pool.map_async(_worker, [(root, sp, out, cfg, force) for sp in plans])
        while not result.ready() or not queue.empty():
            try:
                item = queue.get(timeout=0.2)
            except Exception:  # queue.Empty
                continue
            if on_scan:
                on_scan(*item)
        result.get()  # re-raises a worker's error
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def run_fusion(
    root: str | Path, names: list[str], out: str | Path, cfg: FusionConfig, workers: int = 1,
    force: bool = False, on_scan: Callable[[str, int, bool], None] | None = None,
    on_plan: Callable[[list[SequencePlan]], None] | None = None,
) -> dict:
    """Fuse the given sequences of ROOT into OUT; return the manifest.

    OUT is checked writable and locked against a second writer before anything else."""
    root, out = Path(root), Path(out)
    with exclusive(out, "m2skd-fuse"):
        _check_manifest_is_ours(out)
        plans = plan(root, names, cfg)
        config, chash = cache_config(cfg)
        dropped = _check_mixing(out, names, chash, force)
        notes = [f"{out}: --force drops sequence(s) {dropped}, fused with another config, from the manifest"] \
            if dropped else []
        if replaced := _replaced(out, names, chash):
            notes.append(f"{out}: sequence(s) {replaced} were fused with another config; their shards are "
                         "replaced by this config's")
        plans[0] = replace(plans[0], notes=(*plans[0].notes, *notes))
        if on_plan:
            on_plan(plans)
        remove_stale_temps(out)  # a killed run's half-written shard
        try:
            if workers <= 1 or len(plans) == 1:
                for sp in plans:
                    fuse_sequence(root, sp, out, cfg, force, on_scan)
            else:
                _fuse_in_pool(root, plans, out, cfg, workers, force, on_scan)
        finally:
            remove_stale_temps(out)  # workers stopped by Ctrl-C or an error leave theirs
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
