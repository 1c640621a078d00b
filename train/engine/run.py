"""Everything a training run is made of, built once before the first step: device and
ranks, data, network, frozen teacher, distiller, optimiser, and the state resumed from
`last.pt`. `trainer.train` only loops over it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.batch import collate
from ..data.dataset import ShardDataset
from ..data.sampler import StepSampler
from ..distillation.distill import Distiller
from ..models import build_model, set_feature_level
from .checkpoint import (
    CheckpointError,
    Progress,
    Provenance,
    check_compatible,
    checkpoint_config,
    digest_of,
    load_checkpoint,
    progress_of,
    save_checkpoint,
)
from .kinds import RunKind
from .optimizer_step import OptimizerStep
from .resume import check_resume
from .runtime import Dist, init_distributed, pick_device
from .spec import BEST, RunSpec, TrainError, total_steps
from .steps import Deterministic, SegLoss, StepContext, TwoViews, kd_forward

__all__ = ["Run", "RunSpec", "TrainError", "start_run"]


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
        return self.spec.ckpt_path

    @property
    def kind(self) -> RunKind:
        return self.spec.kind

    @property
    def provenance(self) -> Provenance:
        spec = self.spec
        return Provenance(str(spec.teacher) if spec.teacher else None, self.teacher_view, self.teacher_digest,
                          self.init_digest, self.dataset.identity)

    def optimizer_step(self) -> OptimizerStep:
        """The run's optimiser step, on the parts as they are now (in DDP under torchrun)."""
        cfg = self.spec.cfg
        return OptimizerStep(self.step_context(), self.optimizer, self.kind.step, cfg.distill, self.spec.seed,
                             cfg.runtime.amp)

    def step_context(self) -> StepContext:
        """What the kind's step reads (`steps.StepContext`), built from the run's parts."""
        cfg = self.spec.cfg
        return StepContext(self.step_net, self.device, SegLoss.of(cfg), cfg.distill, self.teacher, self.teacher_view,
                           self.distiller)

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
        save_checkpoint(path or self.ckpt_path, kind=spec.kind.name, step=self.step, total_steps=self.total,
                        cfg=spec.cfg, hard_classes=self.dataset.hard_classes, model=self.model,
                        optimizer=self.optimizer, seed=spec.seed, distiller=self.distiller,
                        provenance=self.provenance, progress=Progress(self.best, self.bad_validations, self.stopped))

    def info(self) -> dict:
        """What config.json records about the run."""
        spec = self.spec
        return {"kind": spec.kind.name, "seed": spec.seed, "steps": self.total, "cache": str(spec.cache),
                "teacher": str(spec.teacher) if spec.teacher else None, "teacher_view": self.teacher_view,
                "init": str(spec.init) if spec.init else None, "init_digest": self.init_digest,
                "device": str(self.device),
                "world_size": self.dist.world, "hard_classes": list(self.dataset.hard_classes),
                "config": spec.cfg.to_dict(), **spec.tags}


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
    return teacher, "fused" if state["kind"] == "teacher" else "single", digest_of(state)


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
    return digest_of(state), note


def _resume(run: Run) -> None:
    """Continue `last.pt` where it stopped, once `resume.check_resume` allows it."""
    spec, path = run.spec, run.ckpt_path
    state = load_checkpoint(path)
    check_resume(state, path, spec, run.provenance, run.total)
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    progress = progress_of(state)
    run.best, run.bad_validations = progress.best, progress.bad_validations
    # an early stop is (validations without a better one) >= patience: resumed with a larger
    # --patience, or 0, the run goes on where it stopped, as if it had had that patience
    patience = spec.cfg.runtime.patience
    run.stopped = progress.stopped and bool(patience) and run.bad_validations >= patience
    if run.distiller is not None and state.get("distiller") is not None:
        run.distiller.load_state_dict(state["distiller"])
    torch.set_rng_state(state["torch_rng"])
    run.step = state["step"]


def start_run(spec: RunSpec) -> Run:
    """Build every part of the run (after `check_spec`) and restore `last.pt` when resuming."""
    cfg = spec.cfg
    device = pick_device(spec.device)
    if device.type == "cpu":
        # CPU index_put/scatter accumulate in a thread-dependent order unless told not to;
        # deterministic kernels make a seeded (and a resumed) run reproducible bit for bit
        torch.use_deterministic_algorithms(True, warn_only=True)
    dist = init_distributed(device)
    kind = spec.kind
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
