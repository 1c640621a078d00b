"""A run as asked for (`RunSpec`), the refusals before anything is built, and its length."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2skd.common.outputs import refuse_inputs

from ..config import TrainConfig
from .kinds import KINDS, RunKind

CHECKPOINT = "last.pt"
BEST = "best.pt"  # the checkpoint of the best val mIoU so far (with --val-every)

RESUME = ("no", "yes", "auto")


class TrainError(ValueError):
    """A run that cannot start as asked (its message says why and what to do)."""


@dataclass
class RunSpec:
    """One run as asked for: what to train, on what, for how long, where. `kind` may be
    given by name (the CLI's, a checkpoint's); it is a `RunKind` from then on."""

    kind: RunKind
    cfg: TrainConfig
    cache: Path
    out: Path
    steps: int | None = None
    epochs: int | None = None
    seed: int = 0
    resume: str = "no"  # `RESUME`: "no" start afresh; "yes" continue OUT/last.pt (must exist); "auto" if present
    force: bool = False
    device: str = "auto"
    teacher: Path | None = None
    progress: bool = True
    tags: dict = field(default_factory=dict)  # recorded in OUT/config.json beside the config (preset, arm)
    init: Path | None = None  # start from this checkpoint's weights (`--init`), not a random init
    on_finish: Callable[[Any], None] | None = None  # called with every rank's finished `Run` (tests)

    def __post_init__(self) -> None:
        if isinstance(self.kind, str):
            if self.kind not in KINDS:
                raise TrainError(f"unknown run kind {self.kind!r}; choose from {tuple(KINDS)}")
            self.kind = KINDS[self.kind]

    @property
    def ckpt_path(self) -> Path:
        return Path(self.out) / CHECKPOINT


def check_spec(spec: RunSpec) -> None:
    kind = spec.kind
    ckpt = spec.ckpt_path
    refuse_inputs(spec.out, "--out", {"teacher checkpoint": spec.teacher, "fused cache": spec.cache,
                                      "--init checkpoint": spec.init})
    if spec.resume not in RESUME:
        raise TrainError(f"resume={spec.resume!r}: choose from {RESUME}")
    if spec.resume != "no" and spec.force:
        raise TrainError("--resume and --force contradict each other: continue the run, or start it over")
    if spec.resume == "yes" and not ckpt.exists():
        raise TrainError(f"{ckpt}: nothing to resume (no checkpoint); drop --resume to start a new run there")
    if ckpt.exists() and spec.resume == "no" and not spec.force:
        raise TrainError(f"{ckpt} exists: pass --resume to continue that run or --force to start over")
    if kind.teacher and spec.teacher is None:
        raise TrainError(f"a {kind.name} run needs --teacher PATH (a checkpoint from `m2skd-train teacher`)")
    if not kind.teacher and spec.teacher is not None:
        raise TrainError(f"{kind.teacher_refusal}")


def total_steps(spec: RunSpec, n_scans: int, world: int) -> int:
    if (spec.steps is None) == (spec.epochs is None):
        raise TrainError("give exactly one of --steps N or --epochs N")
    batch = spec.cfg.optim.batch_size * world
    if batch > n_scans:
        raise TrainError(f"--batch-size {spec.cfg.optim.batch_size}" + (f" on {world} ranks" if world > 1 else "")
                         + f" is more scans a step than the training split holds ({n_scans}): lower it")
    for name, n in (("steps", spec.steps), ("epochs", spec.epochs)):
        if n is not None and n <= 0:
            raise TrainError(f"--{name} must be positive, got {n}")
    if spec.steps is not None:
        return spec.steps
    return max(1, spec.epochs * max(1, n_scans // batch))
