"""The experiment's arms and how each becomes a training job: which run kind, which
teacher, which settings (`make experiment`, docs/evidence.md)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from m2skd.train.config import RELEASED_LOSS, TrainConfig
from m2skd.train.distillation.distill import only

from .lanes import Job

# the experiment's arms (each trains with one of `m2skd-train`'s run kinds)
ARMS = ("baseline", "teacher", "s2skd", "m2skd", "online", "online-nokd")


DEFAULT_ARMS = ARMS


GATE_ARMS = ("baseline", "teacher")


TEACHER_OF = {"s2skd": "baseline", "m2skd": "teacher"}


# the online arms: `m2skd-train online` with the released code's values, with and without distillation
# the released loss values only: the arms keep the baseline's network and augmentation
ONLINE = {"online": RELEASED_LOSS, "online-nokd": {**RELEASED_LOSS, **only()}}  # only(): every term off


# a student and what it is distilled from, for the share of the teacher's gap it closes:
# M2SKD's frozen teacher on fused scans, an online run's own network on fused scans
GAP = {"m2skd": "teacher", "online": "online", "online-nokd": "online-nokd"}


# Ablations (`--variants`): the M2SKD student with one thing changed, same teacher, seed
# and data, each paired against the full method (docs/method.md, "Distillation").
VARIANTS = {
    # which terms are on, not which are off: a new term does not stay on in "feat_only"
    "feat_only": only("feat"),
    "logit_only": only("logit"),
    "aff_only": only("aff"),
    "aff_class": {"aff_level": "class"},  # per-class affinity, as the released code
    "logit_released": {"logit_variant": "released"},  # the released code's logit term
    "kd_correct": {"kd_where": "correct"},  # a remedy: L_logit only where the teacher is right
}


STUDENT_ARMS = ("m2skd", "s2skd", "online", "online-nokd")


def arm_of(result: dict) -> str:
    """A recorded run's arm (results recorded before the word "arm" call it "kind")."""
    return result.get("arm") or result["kind"]


def variant_arm(name: str) -> str:
    return f"m2skd-{name}"


def jobs_for(cfg: TrainConfig, cache: Path, runs: Path, seeds: list[int], max_steps: int,
             variants: tuple[str, ...] = (), arms: tuple[str, ...] = ARMS, tag: str = "") -> dict[str, Job]:
    """Per seed the `arms` (their names + `tag`: a tagged set, e.g. on a cache fused with
    another window, sits beside the main runs) and the M2SKD student's `variants`."""
    jobs = {}
    for s in seeds:
        for arm in arms:
            kind = "student" if arm in TEACHER_OF else "online" if arm in ONLINE else arm  # the run kind
            teacher = f"{TEACHER_OF[arm]}{tag}_s{s}" if arm in TEACHER_OF else None
            name = f"{arm}{tag}_s{s}"
            jobs[name] = Job(kind, cfg.override(**ONLINE.get(arm, {})), cache, runs / name, max_steps, s,
                             teacher, {"experiment": arm + tag})
        for v in variants:
            name = f"{variant_arm(v)}{tag}_s{s}"
            jobs[name] = Job("student", cfg.override(**VARIANTS[v]), cache, runs / name, max_steps, s,
                             f"teacher{tag}_s{s}", {"experiment": variant_arm(v) + tag})
    return jobs


def extend_jobs(jobs: dict[str, Job], steps: int) -> dict[str, Job]:
    """The runs of `jobs` that teach none of them, continued without early stopping to
    `steps` as copies named KIND-long beside them (did the val plateau stop them too soon?);
    the teachers stay as they are."""
    teachers = {j.teacher for j in jobs.values() if j.teacher}
    out = {n: j for n, j in jobs.items() if n in teachers}
    for name, job in jobs.items():
        if name in teachers:
            continue
        arm, seed = name.rsplit("_s", 1)
        dst = job.out.with_name(f"{arm}-long_s{seed}")
        if not dst.exists() and (job.out / "last.pt").is_file():
            shutil.copytree(job.out, dst, ignore=shutil.ignore_patterns("*.lock", "tb"))
        out[dst.name] = replace(job, cfg=job.cfg.override(patience=0), out=dst, steps=steps,
                                tags={"experiment": f"{arm}-long"})
    return out
