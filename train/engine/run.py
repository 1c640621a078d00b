"""Everything a training run is made of, built once before the first step: device and
ranks, data, network, frozen teacher, distiller, optimiser, and the state resumed from
`last.pt`. `trainer.train` only loops over it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from m2skd.common.config import differences, worded
from m2skd.common.outputs import refuse_inputs

from ..config import DistillConfig, TrainConfig, with_legacy
from ..data.batch import collate
from ..data.dataset import ShardDataset
from ..data.sampler import StepSampler
from ..distillation.distill import Distiller, idle_knobs
from ..models import build_model, set_feature_level
from .checkpoint import (
    CheckpointError,
    check_compatible,
    checkpoint_config,
    content_digest,
    load_checkpoint,
    save_checkpoint,
)
from .kinds import KINDS, RunKind
from .runtime import Dist, init_distributed, pick_device
from .steps import Deterministic, TwoViews, kd_forward

CHECKPOINT = "last.pt"
BEST = "best.pt"  # the checkpoint of the best val mIoU so far (with --val-every)


class TrainError(ValueError):
    """A run that cannot start as asked (its message says why and what to do)."""


@dataclass
class RunSpec:
    """One run as asked for: what to train, on what, for how long, where."""

    kind: str
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
    on_finish: Callable[[Run], None] | None = None  # called with every rank's finished run (tests)


@dataclass
class Run:
    """A run's built parts and its position (`step`)."""

    spec: RunSpec
    device: torch.device
    dist: Dist
    dataset: ShardDataset
    total: int
    model: torch.nn.Module
    step_net: torch.nn.Module  # what a step calls: the model (both views for `online`), in DDP under torchrun
    optimizer: torch.optim.Optimizer
    teacher: torch.nn.Module | None = None
    teacher_view: str | None = None  # the teacher's input: "fused" (M2SKD) or "single" (a single-scan teacher)
    teacher_digest: str | None = None  # the teacher checkpoint's content digest: a resume checks it is the same
    init_digest: str | None = None  # the --init checkpoint's content digest (None: a random init)
    init_note: str | None = None  # what the run should say about its --init (other hard classes)
    distiller: Distiller | None = None
    val_dataset: ShardDataset | None = None
    step: int = 0
    best: dict = field(default_factory=dict)  # {"step", "val_miou", "val_hard_miou"} of best.pt
    bad_validations: int = 0  # validations since the best one
    stopped: bool = False  # stopped early (--patience)

    @property
    def ckpt_path(self) -> Path:
        return Path(self.spec.out) / CHECKPOINT

    @property
    def kind(self) -> RunKind:
        return KINDS[self.spec.kind]

    @property
    def view(self) -> str:
        """What the loader reads: a student of a single-scan teacher needs no fused view."""
        return "single" if self.teacher_view == "single" else self.kind.reads

    def note_validation(self, result: dict) -> bool:
        """Record a validation; True if it is the best so far (then best.pt is written)."""
        if self.best and result["miou"] <= self.best["val_miou"]:
            self.bad_validations += 1
            return False
        self.best = {"step": self.step, "val_miou": result["miou"], "val_hard_miou": result["hard_miou"]}
        self.bad_validations = 0
        self.save(Path(self.spec.out) / BEST)
        return True

    def loader(self) -> torch.utils.data.DataLoader:
        """Batches for steps `step`..`total`-1 (this rank's slice of each global batch)."""
        cfg, spec = self.spec.cfg, self.spec
        sampler = StepSampler(len(self.dataset), cfg.optim.batch_size, spec.seed, self.total, self.step,
                              self.dist.rank, self.dist.world)
        workers = cfg.data.workers
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, collate_fn=collate(self.view), num_workers=workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator().manual_seed(spec.seed))  # keeps the loader off the global RNG (resume)

    def save(self, path: Path | None = None) -> None:
        if not self.dist.main:
            return
        bad = sum(int((~torch.isfinite(p)).sum()) for p in self.model.parameters())
        if bad:  # never a checkpoint that evaluates and deploys as if it were a model
            raise TrainError(f"step {self.step}: {bad:,} of the network's weights are not finite (NaN or inf); "
                             f"nothing was saved (the last good checkpoint, if any, is {self.ckpt_path}); lower --lr")
        spec = self.spec
        save_checkpoint(path or self.ckpt_path, kind=spec.kind, step=self.step, total_steps=self.total,
                        cfg=spec.cfg, hard_classes=self.dataset.hard_classes, model=self.model,
                        optimizer=self.optimizer, seed=spec.seed,
                        extra_state={"distiller": self.distiller.state_dict() if self.distiller is not None else None,
                               "teacher": str(spec.teacher) if spec.teacher else None,
                               "teacher_view": self.teacher_view, "teacher_digest": self.teacher_digest,
                               "init_digest": self.init_digest,
                               "best": self.best,
                               "cache_identity": self.dataset.identity,
                               "bad_validations": self.bad_validations, "stopped": self.stopped})

    def info(self) -> dict:
        """What config.json records about the run."""
        spec = self.spec
        return {"kind": spec.kind, "seed": spec.seed, "steps": self.total, "cache": str(spec.cache),
                "teacher": str(spec.teacher) if spec.teacher else None, "teacher_view": self.teacher_view,
                "init": str(spec.init) if spec.init else None, "init_digest": self.init_digest,
                "device": str(self.device),
                "world_size": self.dist.world, "hard_classes": list(self.dataset.hard_classes),
                "config": spec.cfg.to_dict(), **spec.tags}


RESUME = ("no", "yes", "auto")

# Knobs a resumed run may change: they change neither what is computed nor in what order
RESUMABLE = {"workers", "log_every", "checkpoint_every", "val_every", "patience", "tensorboard"}


def check_spec(spec: RunSpec) -> None:
    if spec.kind not in KINDS:
        raise TrainError(f"unknown run kind {spec.kind!r}; choose from {tuple(KINDS)}")
    kind = KINDS[spec.kind]
    ckpt = Path(spec.out) / CHECKPOINT
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


def load_teacher(path: Path, cfg: TrainConfig, hard_classes: tuple[str, ...],
                 device: torch.device) -> tuple[torch.nn.Module, str, str]:
    """The frozen teacher and the view it reads: a teacher checkpoint (fused scans, M2SKD)
    or a baseline checkpoint (the student's own single scan: the control every
    multi-to-single claim needs), of the student's network and the cache's hard classes;
    and the checkpoint's content digest (a student knows its teacher by content, not path)."""
    state = load_checkpoint(path)
    check_compatible(state, cfg, path, "teacher")
    if state["kind"] not in ("teacher", "baseline"):
        raise CheckpointError(f"{path}: a {state['kind']} checkpoint; distil from a teacher (`m2skd-train "
                              "teacher`, fused scans) or a baseline (a single-scan teacher)")
    if tuple(state["hard_classes"]) != tuple(hard_classes):
        raise CheckpointError(f"{path}: teacher fused hard classes {state['hard_classes']}, the student's cache "
                              f"has {list(hard_classes)}")
    t_cfg = checkpoint_config(state, path)
    if t_cfg.model.remission != cfg.model.remission:  # the loader feeds both views the student's features
        raise CheckpointError(f"{path}: the teacher learnt {'with' if t_cfg.model.remission else 'without'} "
                              f"remission, the student runs {'with' if cfg.model.remission else 'without'} it: "
                              "the teacher would see inputs it never trained on; give both the same --remission")
    teacher = build_model(t_cfg.model, device)
    teacher.load_state_dict(state["model"])
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher, "fused" if state["kind"] == "teacher" else "single", state.get("digest") or content_digest(state)


def init_weights(model: torch.nn.Module, path: Path, cfg: TrainConfig,
                 hard_classes: tuple[str, ...]) -> tuple[str, str | None]:
    """Load a checkpoint's network weights into `model` (`--init`, as the released script
    starts from model_save.pt): refused when its network has another shape (backbone,
    grid, widths); its other state (optimiser, step) is not taken. Returns its digest and
    a note when it trained with other hard classes (the weights load, the focus differs)."""
    state = load_checkpoint(path)
    check_compatible(state, cfg, path, "--init")
    model.load_state_dict(state["model"])
    note = None
    if list(state["hard_classes"]) != list(hard_classes):
        note = (f"--init {path}: trained with hard classes {state['hard_classes']}, this run's cache has "
                f"{list(hard_classes)}")
    return state.get("digest") or content_digest(state), note


def _resume(run: Run) -> None:
    spec, path = run.spec, run.ckpt_path
    state = load_checkpoint(path)
    check_compatible(state, spec.cfg, path, "resumed")
    if state["optimizer"] is None:
        raise CheckpointError(f"{path}: holds the network's weights only (a teacher kept beside an experiment's "
                              "records), not the optimiser's state a resume continues from; start a run from it "
                              "with --init, or use another --out")
    if state["kind"] != spec.kind or state["seed"] != spec.seed:
        raise CheckpointError(f"{path}: a {state['kind']} run with seed {state['seed']}, not a "
                              f"{spec.kind} run with seed {spec.seed}; use another --out or --force")
    saved_cache = state.get("cache_identity")  # absent from checkpoints of older versions
    now = run.dataset.identity
    fusion = ("config_hash", "hard_classes")
    if saved_cache is not None and any(saved_cache.get(k) != now[k] for k in fusion):
        raise TrainError(f"{path}: the run trained on a cache fused otherwise (config {saved_cache['config_hash']}, "
                         f"hard classes {saved_cache['hard_classes']}) than {spec.cache} (config "
                         f"{now['config_hash']}, hard classes {now['hard_classes']}); resume on the cache it "
                         "started on, or start over (--force or another --out)")
    # compared only where both sides recorded it: caches and checkpoints of older versions lack it
    if saved_cache is not None and None not in (saved_cache.get("content"), now["content"]) \
            and saved_cache["content"] != now["content"]:
        raise TrainError(f"{path}: {spec.cache} no longer holds the scans the run trained on (same fusion config, "
                         f"other content: {saved_cache['content']} then, {now['content']} now): it was rebuilt "
                         "from changed input (scans, labels, poses or calibration). Resuming would train one run "
                         "on two datasets; start over (--force or another --out), or restore the input and "
                         "fuse again")
    saved_teacher = state.get("teacher_digest")  # absent from checkpoints of older versions
    if saved_teacher is not None and saved_teacher != run.teacher_digest:
        raise TrainError(f"{path}: the run distilled from another teacher ({state.get('teacher')}, a "
                         f"{state.get('teacher_view')}-view teacher of digest {saved_teacher[:12]}) than "
                         f"{spec.teacher} (a {run.teacher_view}-view teacher of digest {run.teacher_digest[:12]}): "
                         "a resumed run continues as it was; give it the teacher it started with, or start over "
                         "(--force or another --out)")
    saved_init = state.get("init_digest")
    if spec.init is not None and saved_init != run.init_digest:
        raise TrainError(f"{path}: the run started from {'another checkpoint' if saved_init else 'a random init'} "
                         f"than --init {spec.init}; a resumed run continues as it was: drop --init or start over")
    if state["step"] > run.total:
        raise TrainError(f"{path}: the run is at step {state['step']}, past the {run.total} steps asked; ask for "
                         f"at least {state['step']} or start over with --force")
    changed = _changed_knobs(state["config"], spec.cfg.to_dict(), run.kind.distills)
    if changed:
        raise TrainError(f"{path}: resuming with other settings than the run has ({worded(changed, 'run', 'now')}); "
                         "a resumed run continues as it was: drop those options, or start a new run (--force or "
                         "another --out)")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.best, run.bad_validations = state["best"], state["bad_validations"]
    # an early stop is (validations without a better one) >= patience: resumed with a larger
    # --patience, or 0, the run goes on where it stopped, as if it had had that patience
    patience = spec.cfg.runtime.patience
    run.stopped = bool(state["stopped"]) and bool(patience) and run.bad_validations >= patience
    if run.distiller is not None and state.get("distiller") is not None:
        run.distiller.load_state_dict(state["distiller"])
    torch.set_rng_state(state["torch_rng"])
    run.step = state["step"]


def _leaves(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v))
        else:
            out[k] = v
    return out


def _changed_knobs(saved: dict, now: dict, distills: bool = True) -> dict[str, tuple]:
    # A knob added after the run was saved counts as the value that behaves as before it
    # (its default, or `LEGACY` where the default changed), so an older run resumes as it ran.
    # A knob idle in both (a switched-off term's) is no difference: e.g. a `released` run
    # saved before that preset named its unused feature level.
    a, b = {**_leaves(TrainConfig().to_dict()), **_leaves(with_legacy(saved))}, _leaves(now)
    idle = RESUMABLE | (idle_knobs(a) & idle_knobs(b))
    if not distills:  # a teacher or a baseline computes no distillation term: those knobs change nothing
        idle |= DistillConfig.leaf_names()
    return differences(a, b, skip=idle)


def start_run(spec: RunSpec) -> Run:
    """Build every part of the run (after `check_spec`) and restore `last.pt` when resuming."""
    cfg = spec.cfg
    device = pick_device(spec.device)
    if device.type == "cpu":
        # CPU index_put/scatter accumulate in a thread-dependent order unless told not to;
        # deterministic kernels make a seeded (and a resumed) run reproducible bit for bit
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist = init_distributed(device)
    kind = KINDS[spec.kind]
    dataset = ShardDataset(spec.cache, cfg.data.train_sequences, cfg, view=kind.reads)
    total = total_steps(spec, len(dataset), dist.world)
    teacher, teacher_view, teacher_digest = (load_teacher(Path(spec.teacher), cfg, dataset.hard_classes, device)
                                             if kind.teacher else (None, None, None))
    if teacher_view == "single":
        dataset = dataset.with_view("single")
    val = None
    if cfg.runtime.val_every:
        val = ShardDataset(spec.cache, cfg.data.val_sequences, cfg, view=kind.validates_on)
    torch.manual_seed(spec.seed)  # after the teacher: the student's init depends on the seed alone
    model = build_model(cfg.model, device)
    for net_ in (model, teacher):  # both sides' features at the level L_feat compares
        if net_ is not None:
            set_feature_level(net_, cfg.distill.feat_level)
    params = list(model.parameters())
    distiller = None
    if kind.distills:  # an online run's teacher is its own network: same width, no adapter
        t_dim = teacher.feature_dim if teacher is not None else model.feature_dim
        distiller = Distiller(cfg.distill, dataset.hard_classes, model.feature_dim, t_dim,
                              cfg.model.grid_shape).to(device)
        params += list(distiller.parameters())
    clean = kd_forward(kind.distills, cfg.distill)
    net = TwoViews(model, clean) if kind.two_views else Deterministic(model) if clean else model
    run = Run(spec, device, dist, dataset, total, model, net, torch.optim.Adam(params, lr=cfg.optim.lr),
              teacher=teacher, teacher_view=teacher_view, teacher_digest=teacher_digest, distiller=distiller,
              val_dataset=val)
    if spec.init is not None:
        run.init_digest, run.init_note = init_weights(model, Path(spec.init), cfg, dataset.hard_classes)
    if spec.resume != "no" and run.ckpt_path.exists():
        _resume(run)
    if dist.world > 1:
        run.step_net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    return run
