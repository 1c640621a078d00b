"""Sequences fused in parallel processes: spawn-started workers that leave Ctrl-C to the
parent and die with it, their per-scan progress sent back on a queue."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
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


def fuse_in_pool(root: Path, plans: list[SequencePlan], out: Path, cfg: FusionConfig, workers: int, force: bool,
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
