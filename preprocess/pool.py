"""Fusion in parallel processes: spawn-started workers that leave Ctrl-C to the parent and
die with it, their per-scan progress sent back on a queue.

The work is split into runs of consecutive shards, not whole sequences: one sequence then
uses every worker too, and eleven sequences of 271 to 4,661 scans do not end on one
worker fusing the longest alone. Why processes and not a writer thread: HDF5 and its lzf
filter hold the GIL, so in one process the writer and fusion's Python take turns
(docs/benchmarks.md, issue 35); each worker fuses and writes its own shards instead, and
nothing but progress crosses between processes (sending the fused arrays to a writer
process through a pipe cost more than writing them in place: docs/benchmarks.md)."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .config import FusionConfig
from .plan import SequencePlan
from .sequence_fusion import fuse_sequence

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


# A run boundary re-reads the window's reach of scans before it (4 at -4:+0) and redoes
# their hard-class selection: at least 4 shards (200 scans at the default 50) a run keep
# that to ~2 %.
MIN_RUN_SHARDS = 4
RUNS_PER_WORKER = 4  # enough runs that a worker finishing early takes another


def split_runs(plans: list[SequencePlan], workers: int) -> list[SequencePlan]:
    """Each sequence's shards cut into runs of consecutive shards, about RUNS_PER_WORKER per
    worker over all sequences (none shorter than MIN_RUN_SHARDS unless its sequence is),
    longest first so that the last run to start is a short one."""
    total = sum(len(sp.shards) for sp in plans)
    size = max(MIN_RUN_SHARDS, -(-total // (workers * RUNS_PER_WORKER)))
    runs = []
    for sp in plans:
        n = max(1, round(len(sp.shards) / size))
        cuts = [round(i * len(sp.shards) / n) for i in range(n + 1)]  # n runs of near-equal length
        runs += [replace(sp, shards=sp.shards[a:b]) for a, b in itertools.pairwise(cuts) if b > a]
    return sorted(runs, key=lambda r: -len(r.shards))


def fuse_in_pool(root: Path, plans: list[SequencePlan], out: Path, cfg: FusionConfig, workers: int, force: bool,
                  on_scan: Callable[[str, int, bool], None] | None) -> None:
    runs = split_runs(plans, workers)
    ctx = mp.get_context("spawn")  # numba and h5py state must not be forked
    queue = ctx.Queue()
    pool = ctx.Pool(min(workers, len(runs)), initializer=_init_worker, initargs=(queue,))
    try:
        result = pool.map_async(_worker, [(root, sp, out, cfg, force) for sp in runs], chunksize=1)
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
