"""Resume policy: whether a run's `last.pt` may be continued as the run now asked for. A
resumed run continues as it was (same kind, seed, data, teacher, start and settings), or
is refused with what differs and what to do; only `RESUMABLE` knobs may change."""

from __future__ import annotations

from pathlib import Path

from m2skd.common.config import differences, worded

from ..config import DistillConfig, TrainConfig, with_legacy
from ..distillation.distill import idle_knobs
from .checkpoint import CheckpointError, Provenance, check_compatible, provenance_of
from .spec import RunSpec, TrainError

# Knobs a resumed run may change: they change neither what is computed nor in what order
RESUMABLE = {"workers", "log_every", "checkpoint_every", "val_every", "patience", "tensorboard"}


def check_resume(state: dict, path: Path, spec: RunSpec, now: Provenance, total: int) -> None:
    """Refuse (CheckpointError, TrainError) to continue `state`, read from `path`, as the run
    `spec` on `now`'s teacher, start and cache for `total` steps, where it would not continue as it was."""
    check_compatible(state, spec.cfg, path, "resumed")
    if state["optimizer"] is None:
        raise CheckpointError(f"{path}: holds the network's weights only (a teacher kept beside an experiment's "
                              "records), not the optimiser's state a resume continues from; start a run from it "
                              "with --init, or use another --out")
    if state["kind"] != spec.kind.name or state["seed"] != spec.seed:
        raise CheckpointError(f"{path}: a {state['kind']} run with seed {state['seed']}, not a "
                              f"{spec.kind.name} run with seed {spec.seed}; use another --out or --force")
    was = provenance_of(state)
    saved_cache, cache = was.cache_identity, now.cache_identity  # absent from checkpoints of older versions
    fusion = ("config_hash", "hard_classes")
    if saved_cache is not None and any(saved_cache.get(k) != cache[k] for k in fusion):
        raise TrainError(f"{path}: the run trained on a cache fused otherwise (config {saved_cache['config_hash']}, "
                         f"hard classes {saved_cache['hard_classes']}) than {spec.cache} (config "
                         f"{cache['config_hash']}, hard classes {cache['hard_classes']}); resume on the cache it "
                         "started on, or start over (--force or another --out)")
    # compared only where both sides recorded it: caches and checkpoints of older versions lack it
    if saved_cache is not None and None not in (saved_cache.get("content"), cache["content"]) \
            and saved_cache["content"] != cache["content"]:
        raise TrainError(f"{path}: {spec.cache} no longer holds the scans the run trained on (same fusion config, "
                         f"other content: {saved_cache['content']} then, {cache['content']} now): it was rebuilt "
                         "from changed input (scans, labels, poses or calibration). Resuming would train one run "
                         "on two datasets; start over (--force or another --out), or restore the input and "
                         "fuse again")
    if was.teacher_digest is not None and was.teacher_digest != now.teacher_digest:
        raise TrainError(f"{path}: the run distilled from another teacher ({was.teacher}, a "
                         f"{was.teacher_view}-view teacher of digest {was.teacher_digest[:12]}) than "
                         f"{spec.teacher} (a {now.teacher_view}-view teacher of digest {now.teacher_digest[:12]}): "
                         "a resumed run continues as it was; give it the teacher it started with, or start over "
                         "(--force or another --out)")
    if spec.init is not None and was.init_digest != now.init_digest:
        raise TrainError(f"{path}: the run started from {'another checkpoint' if was.init_digest else 'a random init'} "
                         f"than --init {spec.init}; a resumed run continues as it was: drop --init or start over")
    if state["step"] > total:
        raise TrainError(f"{path}: the run is at step {state['step']}, past the {total} steps asked; ask for "
                         f"at least {state['step']} or start over with --force")
    changed = changed_knobs(state["config"], spec.cfg.to_dict(), spec.kind.distills)
    if changed:
        raise TrainError(f"{path}: resuming with other settings than the run has ({worded(changed, 'run', 'now')}); "
                         "a resumed run continues as it was: drop those options, or start a new run (--force or "
                         "another --out)")


def _leaves(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v))
        else:
            out[k] = v
    return out


def changed_knobs(saved: dict, now: dict, distills: bool = True) -> dict[str, tuple]:
    """The knobs that differ between a saved run's config and the one asked for now.
    A knob added after the run was saved counts as the value that behaves as before it
    (its default, or `LEGACY` where the default changed), so an older run resumes as it ran.
    A knob idle in both (a switched-off term's) is no difference: e.g. a `released` run
    saved before that preset named its unused feature level."""
    a, b = {**_leaves(TrainConfig().to_dict()), **_leaves(with_legacy(saved))}, _leaves(now)
    idle = RESUMABLE | (idle_knobs(a) & idle_knobs(b))
    if not distills:  # a teacher or a baseline computes no distillation term: those knobs change nothing
        idle |= DistillConfig.leaf_names()
    return differences(a, b, skip=idle)
