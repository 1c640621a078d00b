"""One sequence's unfinished shards: a sliding window over its scans, each fused, every
shard written on a second thread while the next one is fused."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from m2skd.common import kitti_io
from m2skd.common.shards import finished_entry, shard_name, write_shard

from .config import FusionConfig
from .fusion import fuse_scan, hard_lut
from .plan import SequencePlan, cache_config
from .walker import iter_windows, window_span


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
        inputs[last] = kitti_io.input_fingerprint(seq, first, last, window_span(cfg.offsets), sp.n_frames)
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
