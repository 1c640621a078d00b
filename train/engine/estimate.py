"""`m2skd-train ... --dry-run`: time a few real steps of a run without writing anything,
and extrapolate to an epoch and to the whole run."""

from __future__ import annotations

import resource
import time
from dataclasses import replace

import numpy as np
import torch

from .run import start_run
from .spec import RunSpec, total_steps


def estimate(spec: RunSpec, steps: int = 6, warmup: int = 2) -> dict:
    """Time `steps` real steps of the run on its device (after `warmup`), writing nothing,
    and extrapolate: seconds a step, scans a second, minutes an epoch, hours the run."""
    # timed on warmup + steps of its own, whatever the run's length (a 1-step run timed no step: nan)
    run = start_run(replace(spec, resume="no", force=True, steps=warmup + steps, epochs=None))
    run_total = total_steps(spec, len(run.dataset), run.dist.world)
    step = run.optimizer_step()
    run.model.train()
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    times, t0, scans = [], time.perf_counter(), 0
    for i, batch in enumerate(run.loader()):
        _, n = step(batch, run.step)
        run.step += 1
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - t0)
            scans += n
        t0 = now
        if i + 1 >= warmup + steps:
            break
    s_step = float(np.median(times))
    per_epoch = max(1, len(run.dataset) // (spec.cfg.optim.batch_size * run.dist.world))
    peak = (torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"device": str(run.device), "s_per_step": s_step, "scans_per_s": scans / max(sum(times), 1e-9),
            "scans": len(run.dataset), "steps_per_epoch": per_epoch, "epoch_min": per_epoch * s_step / 60,
            "run_steps": run_total, "run_h": run_total * s_step / 3600, "peak_mib": peak / 2**20,
            "peak_kind": "GPU allocated" if run.device.type == "cuda" else "process RSS"}
