"""Fusion in parallel processes: spawn-started workers that leave Ctrl-C to the parent and
die with it, their per-scan progress sent back on a queue.

The work is split into runs of consecutive shards, not whole sequences: one sequence then
uses every worker too, and eleven sequences of 271 to 4,661 scans do not end on one
worker fusing the longest alone. Why processes and not a writer thread: HDF5 and its lzf
filter hold the GIL, so in one process the writer and fusion's Python take turns
(docs/benchmarks.md, issue 35); each worker fuses and writes its own shards instead, and
nothing but progress crosses between processes (sending the fused arrays to a writer
process through a pipe cost more than writing them in place: docs/benchmarks.md).

A `concurrent.futures` pool, not `multiprocessing.Pool`: a worker that dies (the OOM
killer, a crash in native code) breaks it with an error, where `Pool` lost the dead
worker's task and waited for it forever; and the first run that fails stops the others
at once, so a bad scan is named when it is met, not after every other run has finished.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from .config import FusionConfig
from .plan import FusionError, SequencePlan
from .sequence_fusion import fuse_sequence

_QUEUE = None  # a pool worker's progress queue (handed over at start: spawn cannot pickle it per task)

# A run boundary re-reads the window's reach of scans before it (4 at -4:+0) and redoes
# their hard-class selection: runs of at least 200 scans keep that to ~2 %.
MIN_RUN_SCANS = 200
RUNS_PER_WORKER = 4  # enough runs that a worker finishing early takes another


def _init_worker(queue) -> None:
    """Pool worker start-up: Ctrl-C is the parent's to handle (it stops the pool), and the
    worker dies with its parent (Linux), so a killed `m2skd-fuse` leaves no orphan behind.
    SIGINT was blocked while this process started (fuse_in_pool), so a Ctrl-C during its
    imports cannot print a traceback; it is ignored before it is unblocked."""
    global _QUEUE
    _QUEUE = queue
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the call took effect
            os._exit(1)


def _worker(root: Path, sp: SequencePlan, out: Path, cfg: FusionConfig, force: bool) -> None:
    def tick(name, frame, skipped):
        _QUEUE.put((name, frame, skipped))
    fuse_sequence(root, sp, out, cfg, force, tick)


def split_runs(plans: list[SequencePlan], workers: int) -> list[SequencePlan]:
    """Each sequence's shards cut into runs of consecutive shards, about RUNS_PER_WORKER per
    worker over all sequences (none shorter than MIN_RUN_SCANS scans unless its sequence
    is), longest first so that the last run to start is a short one."""
    total = sum(len(sp.shards) for sp in plans)
    shard_scans = max((b - a + 1 for sp in plans for a, b in sp.shards), default=1)
    size = max(-(-MIN_RUN_SCANS // shard_scans), -(-total // (workers * RUNS_PER_WORKER)))
    runs = []
    for sp in plans:
        n = max(1, round(len(sp.shards) / size))
        cuts = [round(i * len(sp.shards) / n) for i in range(n + 1)]  # n runs of near-equal length
        runs += [replace(sp, shards=sp.shards[a:b]) for a, b in itertools.pairwise(cuts) if b > a]
    return sorted(runs, key=lambda r: -len(r.shards))


@contextlib.contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """While workers start: SIGINT blocked in this thread, so that the spawned children
    inherit it blocked (a mask survives exec) until _init_worker ignores it; and a Ctrl-C
    meanwhile (delivered to another of our threads: a mask is per thread) only noted, then
    raised once the children are whole: raised inside a start it cut the pipe a child
    reads its start-up data from, and the child printed a traceback."""
    hit: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    prev = signal.signal(signal.SIGINT, lambda *_: hit.append(1)) if main else None
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if main:
            signal.signal(signal.SIGINT, prev)
    if hit:
        raise KeyboardInterrupt


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and kill what has: after an error or a Ctrl-C, nothing
    of the pool may go on writing (the caller then removes the killed writers' temps)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.kill()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(timeout=10)


def fuse_in_pool(root: Path, plans: list[SequencePlan], out: Path, cfg: FusionConfig, workers: int, force: bool,
                 on_scan: Callable[[str, int, bool], None] | None) -> None:
    runs = split_runs(plans, workers)
    expected = sum(b - a + 1 for sp in runs for a, b in sp.shards)  # one progress tick per scan
    ctx = mp.get_context("spawn")  # numba and h5py state must not be forked
    progress = ctx.Queue()
    pool = ProcessPoolExecutor(min(workers, len(runs)), mp_context=ctx, initializer=_init_worker,
                               initargs=(progress,))
    ticks = 0

    def drain(timeout: float) -> None:
        nonlocal ticks
        try:
            item = progress.get(timeout=timeout)
        except queue_mod.Empty:
            return
        ticks += 1
        if on_scan:
            on_scan(*item)

    try:
        with _ctrl_c_deferred():  # the workers start inside submit()
            futures: list[Future] = [pool.submit(_worker, root, sp, out, cfg, force) for sp in runs]
        pending = set(futures)
        while pending:
            drain(0.2)
            done, pending = wait(pending, timeout=0, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    raise f.exception()
        # the last runs' ticks may still be on their way (the queue is fed by a thread)
        misses = 0
        while ticks < expected and misses < 10:
            before = ticks
            drain(0.1)
            misses = misses + 1 if ticks == before else 0
        pool.shutdown(wait=True)
    except BrokenProcessPool:
        raise FusionError(f"{out}: a fusion worker process died (killed, or out of memory?); the finished shards "
                          "are kept: rerun the same command to resume (fewer --workers use less memory)") from None
    finally:
        _stop(pool)  # after shutdown(wait=True) there is nothing left to stop
