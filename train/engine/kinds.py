"""The kinds of training run, one entry each: what a run reads, what its validation
scores, whether it distils from a frozen `--teacher`, and its step (`steps.py`).

A new kind is one `RunKind` in `KINDS` and one step function; the run builder, the loop,
the CLI's refusals and the checkpoint's use follow from the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry
from .steps import online_step, seg_step, student_step


@dataclass(frozen=True)
class RunKind:
    name: str
    reads: str  # the loader's view: "fused", "single" or "pair" (fused and single of the same scans)
    validates_on: str  # the view validation (and the checkpoint's deployment) scores
    teacher: bool  # distils from a frozen checkpoint given as --teacher (required; refused otherwise)
    distills: bool  # has distillation terms (a Distiller)
    step: Callable
    help: str
    two_views: bool = False  # its own network runs on both views in each step (`steps.TwoViews`)
    teacher_refusal: str = "only a student distils from a --teacher checkpoint"


KINDS: Registry[RunKind] = Registry("run kind")
for _kind in (
    RunKind("teacher", "fused", "fused", False, False, seg_step,
            "Train the teacher on fused scans (segmentation loss)."),
    RunKind("baseline", "single", "single", False, False, seg_step,
            "Train a plain single-scan model (the reference the student must beat)."),
    RunKind("student", "pair", "single", True, True, student_step,
            "Distil a frozen teacher into a single-scan student (seg + feature + logit + affinity)."),
    RunKind("online", "pair", "single", False, True, online_step,
            "The released code's training: one network on the single and the fused view in each step, the fused "
            "view's outputs (detached) teaching the single view, plus cross-entropy on the fused view.",
            two_views=True,
            teacher_refusal="an online run is its own teacher (its fused view, each step): it takes no --teacher; "
                            "use `m2skd-train student --teacher` to distil a frozen one"),
):
    KINDS.add(_kind.name, _kind)
