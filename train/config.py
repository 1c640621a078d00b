"""The training stage's config, one small dataclass per concern, nested in `TrainConfig`.

    TrainConfig.preset("tiny", model="polarnet").override(lr=3e-4, w_feat=0.2)

`paper` is the published setting of each backbone (docs/method.md, "Backbones" and
"Training"), `tiny` trains in minutes on two CPU cores. The hard classes are not here:
they are the fused cache's (its manifest), so a run cannot disagree with its data.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

from m2skd.common.config import Config, knob
from m2skd.common.geometry import PolarGrid
from m2skd.common.splits import TRAIN_SEQUENCES, VAL_SEQUENCES, parse_sequences

from .models.registry import BACKBONES, backbone

MODELS = tuple(BACKBONES)  # the registered backbones (models/registry.py)
DEFAULT_MODEL = "polarnet"


def _sequences(spec: str) -> tuple[str, ...]:
    return tuple(parse_sequences(spec))


@dataclass(frozen=True)
class ModelConfig(Config):
    """The network: backbone, grid and widths. `shape` knobs are what a checkpoint's weights depend on."""

    # One default backbone everywhere (CLI, Makefile, experiments, README): PolarNet, the
    # one that trains in minutes on a CPU and that every recorded result here used; the
    # released M2SKD code's Cylinder3D is `--model cylinder3d`.
    backbone: str = knob(DEFAULT_MODEL, "network", choices=MODELS, shape=True, cli=False)
    grid_shape: tuple[int, int, int] = knob((480, 360, 32), "voxels along rho, phi, z", shape=True, length=3,
                                            at_least=4, at_most=4096)
    min_bound: tuple[float, float, float] | None = knob(None, "grid's lower (rho, phi, z) bound; None: the "
                                                        "backbone's published one", shape=True, cli=False)
    max_bound: tuple[float, float, float] | None = knob(None, "grid's upper bound; None: published", shape=True,
                                                        cli=False)
    point_widths: tuple[int, ...] = knob((64, 128, 256, 256), "point MLP widths after BN(9)", shape=True,
                                         at_least=1, at_most=4096)
    max_points_per_cell: int = knob(0, "PolarNet: at most this many random points per BEV cell while training "
                                       "(PolarSeg: 256); 0 = all", at_least=0)
    init_size: int = knob(32, "Cylinder3D base width / PolarNet U-Net first width", shape=True, at_least=1,
                          at_most=1024)
    compress: int = knob(16, "point feature width fed to the grid (PolarNet: = height bins)", shape=True,
                         at_least=1, at_most=4096)
    dropout: float = knob(0.5, "PolarNet: DropBlock probability after each up block (PolarSeg: 0.5)", at_least=0.0,
                          below=1.0)
    remission: bool = knob(True, "feed remission as the 9th point feature; off: zeros, for data without it")
    # Cylinder3D master and the released M2SKD network apply the context block's bn1; an
    # unmerged pull request drops it, which this code followed before (docs/method.md)
    context_bn1: bool = knob(True, "Cylinder3D: apply the context block's branch BN (as the official code)")

    def __post_init__(self) -> None:
        super().__post_init__()
        backbone(self.backbone)  # raises, naming the registered ones
        if min(self.grid_shape[:2]) < 16:  # both U-Nets halve rho and phi four times
            raise ValueError(f"--grid-shape: rho and phi need at least 16 voxels (four poolings by 2), got "
                             f"{','.join(map(str, self.grid_shape))}")
        if not self.point_widths:
            raise ValueError("--point-widths: give at least one width")
        for lo, hi in [(self.min_bound, self.max_bound)]:
            if lo is not None and hi is not None and not all(a < b for a, b in zip(lo, hi, strict=True)):
                raise ValueError(f"grid bounds: every min_bound {lo} must lie below max_bound {hi}")

    @property
    def grid(self) -> PolarGrid:
        lo, hi = backbone(self.backbone).grid_bounds
        return PolarGrid(tuple(self.grid_shape), tuple(self.min_bound or lo), tuple(self.max_bound or hi))

    def shape_dict(self) -> dict[str, Any]:
        """The knobs the weights depend on (loading into another shape is refused)."""
        d = self.to_dict()
        return {f.name: d[f.name] for f in dataclasses.fields(self) if f.metadata.get("shape")}


@dataclass(frozen=True)
class OptimConfig(Config):
    """Optimisation (the released config: Adam 1e-3, batch 2, no scheduler)."""

    lr: float = knob(1e-3, "Adam learning rate", above=0.0, at_most=10.0)
    batch_size: int = knob(2, "scans per step (per rank under torchrun)", at_least=1, at_most=4096)
    lovasz_weight: float = knob(1.0, "weight of the Lovasz-softmax term beside cross-entropy", at_least=0.0,
                                at_most=1000.0)
    # PolarSeg and Cylinder3D both train on voxels, each labelled by its points' majority
    # (ties to the smallest id, as their label voting); per point weights a voxel by its points
    seg_on: str = knob("voxel", "segmentation loss on voxels (majority labels, as the published codes) or points",
                       choices=("voxel", "point"))



@dataclass(frozen=True)
class AugmentConfig(Config):
    """Scan augmentation (the released config)."""

    rotate_deg: float = knob(45.0, "random rotation about z, +- degrees", at_least=0.0, at_most=180.0)
    flip: bool = knob(True, "random flips of x and y")
    scale: tuple[float, float] = knob((0.95, 1.05), "random scale range: low,high", length=2, above=0.0,
                                      at_most=10.0)
    # Cylinder3D's and the released loader's scaling multiplies x and y only
    scale_z: bool = knob(False, "scale z as well as x and y")
    translate: tuple[float, float, float] = knob((0.5, 0.5, 0.1), "translation sigma per axis (m): x,y,z", length=3,
                                                 at_least=0.0, at_most=100.0)
    tilt_deg: float = knob(0.0, "random roll and pitch, +- degrees (ground that is not level under the sensor)",
                           at_least=0.0, at_most=45.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale[0] > self.scale[1]:
            raise ValueError(f"--scale: low {self.scale[0]} is above high {self.scale[1]} (give low,high)")


@dataclass(frozen=True)
class DistillConfig(Config):
    """The student's three distillation terms (docs/method.md, "Distillation")."""

    w_feat: float = knob(0.1, "weight of L_feat (0: off)", at_least=0.0, at_most=1e4)
    # the released code distils Cylinder3D's upBlock2 output (half resolution); the paper
    # does not say which level, this code's default is the last one
    feat_level: str = knob("last", "L_feat on the decoder's last level, or on its half-resolution level "
                           "(Cylinder3D's upBlock2 output, as released)", choices=("last", "half"))
    feat_variant: str = knob("mse", "L_feat as the mean squared difference over voxels and channels, or as "
                             "released: per voxel the mean over channels, kept where > 1, averaged",
                             choices=("mse", "released"))
    w_logit: float = knob(1.0, "weight of L_logit (0: off)", at_least=0.0, at_most=1e4)
    w_aff: float = knob(1.0, "weight of L_aff (0: off)", at_least=0.0, at_most=1e4)
    temperature: float = knob(2.0, "KD temperature T", above=0.0, at_most=1000.0)
    logit_variant: str = knob("kl", "kl: KL(p_t||p_s) T^2; released: the released code's softmax(0.3 z) variant",
                              choices=("kl", "released"))
    # "point" puts ~97 % of the weight on road, building, vegetation...; "class" keeps the
    # teacher's knowledge of the hard classes from drowning (docs/tuning.md).
    kd_balance: str = knob("class", "average L_logit over points, or per ground-truth class then over classes",
                           choices=("class", "point"))
    # The paper distils everywhere; "correct" is a remedy tried when the student lagged
    # (docs/evidence.md): no point pulls the student towards a wrong teacher label.
    kd_where: str = knob("all", "L_logit at every labelled point, or only where the teacher's label is right",
                         choices=("all", "correct"))
    # "released" on the released code's level: each single-scan voxel once
    logit_on: str = knob("point", "L_logit per point or per single-scan voxel (released code)",
                         choices=("point", "voxel"))
    aff_level: str = knob("instance", "affinity per instance on features (paper), per class and scan on features, "
                          "or as released: per hard class on the logits of the 19 real classes, the batch's scans "
                          "pooled, summed",
                          choices=("instance", "class", "released"))
    aff_cap: int = knob(256, "voxels per instance in the affinity matrix (random subset; not for 'released')",
                        at_least=2, at_most=65536)
    # The terms on a DropBlock-perturbed student ask it to undo noise, not to match the
    # teacher: ~80 % of the KL there was DropBlock's (issue 30, docs/method.md "Distillation")
    kd_forward: str = knob("clean", "what the distillation terms compare with the teacher: the student's forward "
                           "without DropBlock/dropout (clean; the segmentation loss keeps them), or the same "
                           "perturbed forward the segmentation loss reads (dropped; how runs before it trained)",
                           choices=("clean", "dropped"))
    kd_warmup: int = knob(0, "distillation weights rise linearly from 0 over this many steps (0: from the start, "
                          "as released)", at_least=0)
    # `online` only (one network on both views, the released training): its fused view's own loss
    w_fused: float = knob(0.2, "online: weight of the cross-entropy on the fused view", at_least=0.0, at_most=1e4)
    fused_loss: str = knob("changed", "online: fused-view cross-entropy on the voxels whose label the fused points "
                           "changed (released), on every voxel, or off", choices=("changed", "all", "off"))


@dataclass(frozen=True)
class DataConfig(Config):
    train_sequences: tuple[str, ...] = knob(TRAIN_SEQUENCES, "training split, e.g. 00-07,09,10", parse=_sequences)
    val_sequences: tuple[str, ...] = knob(VAL_SEQUENCES, "validation split", parse=_sequences)
    workers: int = knob(2, "loader processes", at_least=0, at_most=256)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.train_sequences:
            raise ValueError("--train-sequences: give at least one sequence")


@dataclass(frozen=True)
class RuntimeConfig(Config):
    amp: bool = knob(False, "fp16 autocast (CUDA only; ignored on CPU)")
    checkpoint_every: int = knob(500, "steps between checkpoints", at_least=1)
    log_every: int = knob(1, "steps between progress updates", at_least=1)
    tensorboard: bool = knob(True, "write TensorBoard event files to OUT/tb (needs the `tensorboard` extra)")
    val_every: int = knob(0, "score the val split every N steps, keep OUT/best.pt (0: never)", at_least=0)
    patience: int = knob(0, "stop after this many validations without a better val mIoU (0: never)", at_least=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patience and not self.val_every:
            raise ValueError("--patience needs --val-every (validations to be patient over)")


@dataclass(frozen=True)
class TrainConfig(Config):
    """Everything one training run depends on besides its data, seed and length."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    @classmethod
    def _presets(cls) -> dict[str, dict[str, Any]]:
        return {"paper": {}, "tiny": TINY, "released": RELEASED, "released-loss": RELEASED_LOSS}

    @classmethod
    def preset(cls, name: str, model: str = DEFAULT_MODEL) -> TrainConfig:  # type: ignore[override]
        """The named preset for one backbone: its published network and setting
        (its registry entry), narrowed by the preset, its grid bounds filled in. Presets combine
        with '+', applied left to right: `tiny+released` is the released recipe on the tiny network."""
        entry = backbone(model)
        presets = cls._presets()
        names = name.split("+")
        if bad := [n for n in names if n not in presets]:
            raise ValueError(f"unknown {cls.__name__} preset {bad[0]!r}; choose from {sorted(presets)}, "
                             "combined with '+' (e.g. tiny+released)")
        lo, hi = entry.grid_bounds
        cfg = cls().override(backbone=model, min_bound=lo, max_bound=hi, **entry.published)
        for n in names:
            cfg = cfg.override(**presets[n]).override(**PRESET_BY_BACKBONE.get((n, model), {}))
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:  # type: ignore[override]
        """A saved config; a knob it lacks (saved before the knob existed) takes the value
        that reproduces the behaviour of then (`LEGACY`), else its default."""
        return super().from_dict(with_legacy(d))


def config_file_values(path: str, text: str) -> dict[str, Any]:
    """The knobs a config file sets, by leaf name: a run's config.json (`{"kind", "config":
    {...}, ...}`, what every run writes) or a bare TrainConfig dict, nested as config.json
    nests it or flat; a subset is fine (the preset gives the rest). Unknown names and a
    file that is not a JSON object are refused, naming the file."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--config {path}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"--config {path}: not a JSON object of settings")
    d = d["config"] if isinstance(d.get("config"), dict) else d
    leaves = TrainConfig.leaf_names()
    subs = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in subs and isinstance(v, dict):
            out.update(v)
        else:
            out[k] = v
    if bad := sorted(set(out) - leaves):
        raise ValueError(f"--config {path}: unknown setting(s) {bad}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


def with_legacy(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (a TrainConfig dict) with each `LEGACY` knob it lacks filled in."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for name, sub in typing.get_type_hints(TrainConfig).items():
        if isinstance(out.get(name), dict):
            for knob_name in sub.leaf_names() & LEGACY.keys():
                out[name].setdefault(knob_name, LEGACY[knob_name])
    return out


# `tiny`: a 96 x 72 x 16 grid and narrow layers that train in minutes on two CPU cores
TINY: dict[str, Any] = {"grid_shape": (96, 72, 16), "point_widths": (16, 32, 64), "init_size": 8, "compress": 8,
                        "checkpoint_every": 100}
# `released-loss`: every loss value of the released M2SKD code (github skyshoumeng/M2SKD;
# docs/method.md, "The released code's values", gives each one's source line), on any
# network and augmentation: what the experiment's online arms use beside a PolarNet baseline
RELEASED_LOSS: dict[str, Any] = {"seg_on": "voxel", "w_logit": 5.0, "logit_variant": "released", "logit_on": "voxel",
                                 "kd_balance": "point", "kd_where": "all", "w_aff": 1.0, "aff_level": "released",
                                 "w_feat": 0.0, "feat_level": "half",
                                 "feat_variant": "released", "w_fused": 0.2, "fused_loss": "changed", "kd_warmup": 0,
                                 "scale_z": False}
# `released`: the released recipe end to end (issue 31): its loss values, and its loader's
# augmentation (dataset_semantickitti.py: rotation random()*90 - 45 deg, 4 flips, x/y scaled
# by U(0.95, 1.05), translation N(0, [.5, .5, .1])), Adam 1e-3, batch 2
# (config/semantickitti.yaml), validation every 3000 iterations keeping the best val mIoU
# (train_cylinder_asym.py: `check_iter = 3000`); its backbone, Cylinder3D, is what
# `m2skd-train --preset released` takes when --model is not given
RELEASED: dict[str, Any] = {**RELEASED_LOSS, "rotate_deg": 45.0, "flip": True, "scale": (0.95, 1.05),
                            "translate": (0.5, 0.5, 0.1), "lr": 1e-3, "batch_size": 2, "val_every": 3000}
RELEASED_MODEL = "cylinder3d"
# Knobs whose default changed: a config saved before the knob existed ran the old way
LEGACY: dict[str, Any] = {"seg_on": "point", "scale_z": True, "context_bn1": False, "kd_forward": "dropped"}
# PolarNet's compressed width is its number of height bins, at every size
PRESET_BY_BACKBONE: dict[tuple[str, str], dict[str, Any]] = {("tiny", "polarnet"): {"compress": 16}}
