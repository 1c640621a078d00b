"""Typed configs with named presets.

Each stage has one dataclass; `preset(name)` gives the named setting (`tiny` for CPU and
tests, `paper` / `full` for the published one), `override(**fields)` applies CLI values,
and `to_dict()` is what every run writes beside its outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from .geometry import PolarGrid
from .labels import DEFAULT_HARD_CLASSES, class_ids

T = TypeVar("T", bound="Config")


@dataclass(frozen=True)
class Config:
    @classmethod
    def preset(cls: type[T], name: str) -> T:
        presets = cls._presets()
        if name not in presets:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose from {sorted(presets)}")
        return cls(**presets[name])

    @classmethod
    def _presets(cls) -> dict[str, dict[str, Any]]:
        return {"default": {}}

    def override(self: T, **fields: Any) -> T:
        """A copy with the given fields replaced; None values are ignored (unset CLI options)."""
        names = {f.name for f in dataclasses.fields(self) if f.init}
        unknown = set(fields) - names
        if unknown:
            raise ValueError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in fields.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name: f for f in dataclasses.fields(cls) if f.init}
        kw = {}
        for k, v in d.items():
            if k not in names:
                raise ValueError(f"{cls.__name__}: unknown field {k!r} in saved config")
            kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    def digest(self) -> str:
        """Stable short hash of the resolved config (for caches and resume checks)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    return v


@dataclass(frozen=True)
class SynthConfig(Config):
    """The synthetic LiDAR sequence generator (design.md 5)."""

    scans: int = 200
    beams: int = 64  # HDL-64E
    columns: int = 2000  # ~0.18 deg azimuth steps, as KITTI's 10 Hz sweeps
    max_range: float = 120.0
    range_noise: float = 0.02  # metres, 1 sigma
    dropout: float = 0.01  # probability a return is lost, plus a range-dependent term
    speed_min: float = 6.0  # ego speed, m/s
    speed_max: float = 10.0
    period: float = 0.1  # s between scans (10 Hz)
    seed: int = 0
    # Hard-class objects per metre of road, relative to a SemanticKITTI-like rarity (1.0).
    # A 120-scan synthetic drive passes only 1-3 instances of each hard class at 1.0, so a
    # one-sequence train split would teach (and a one-sequence val split would score) a
    # handful of objects; the demo raises it so hard-class IoU measures more than luck.
    hard_density: float = 1.0

    @classmethod
    def _presets(cls) -> dict[str, dict[str, Any]]:
        return {
            "full": {},
            # What `make demo` trains on: half the beams, a quarter of the columns.
            "demo": {"beams": 32, "columns": 1024, "scans": 120, "max_range": 80.0, "hard_density": 6.0},
            # Small scans for tests: same field of view, fewer beams and columns.
            "tiny": {"beams": 16, "columns": 360, "scans": 20, "max_range": 60.0},
        }


# Real KITTI calibration of odometry sequences 00-02 (their calib.txt): P0..P3 are the
# rectified camera projections, Tr maps velodyne -> camera 0. The synthetic sequences
# reuse it so the pose convention is exercised with the real axis swap and offset.
KITTI_CALIB_00_02: dict[str, tuple[float, ...]] = {
    "P0": (7.188560000000e02, 0.0, 6.071928000000e02, 0.0, 0.0, 7.188560000000e02, 1.852157000000e02, 0.0,
           0.0, 0.0, 1.0, 0.0),
    "P1": (7.188560000000e02, 0.0, 6.071928000000e02, -3.861448000000e02, 0.0, 7.188560000000e02,
           1.852157000000e02, 0.0, 0.0, 0.0, 1.0, 0.0),
    "P2": (7.188560000000e02, 0.0, 6.071928000000e02, 4.538225000000e01, 0.0, 7.188560000000e02,
           1.852157000000e02, -1.130887000000e-01, 0.0, 0.0, 1.0, 3.779761000000e-03),
    "P3": (7.188560000000e02, 0.0, 6.071928000000e02, -3.372877000000e02, 0.0, 7.188560000000e02,
           1.852157000000e02, 2.369057000000e00, 0.0, 0.0, 1.0, 4.915215000000e-03),
    "Tr": (4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02,
           -7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02,
           9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01),
}


def kitti_calib_matrices() -> dict:
    import numpy as np

    out = {}
    for k, v in KITTI_CALIB_00_02.items():
        m = np.eye(4)
        m[:3, :] = np.array(v).reshape(3, 4)
        out[k] = m
    return out



@dataclass(frozen=True)
class FusionConfig(Config):
    """Multi-scan hard-instance fusion (design.md 1.2)."""

    past: int = 4  # scans t-1..t-past, as the released M2SKD code
    future: int = 0  # scans t+1..t+future (offline, the future is on disk)
    hard_classes: tuple[str, ...] = DEFAULT_HARD_CLASSES
    voxel: float = 0.05  # metres; thins fused points so a static object seen in many scans doesn't dominate
    drift_threshold: float = 0.5  # metres of centroid drift after pose alignment that marks an instance as moving
    centroid_correction: bool = True  # move moving instances onto the target instance's centroid
    fuse_occluded_static: bool = False  # also fuse static instances absent from scan t
    shard_size: int = 50  # scans per HDF5 shard
    compress_points: bool = False  # shuffle+lzf on points: 22% smaller shards, ~9x slower writes

    def __post_init__(self) -> None:
        if self.past < 0 or self.future < 0 or self.past + self.future == 0:
            raise ValueError(f"fusion window must include a neighbour, got past={self.past} future={self.future}")
        if self.voxel < 0 or self.shard_size <= 0:
            raise ValueError("voxel must be >= 0 and shard_size > 0")
        class_ids(self.hard_classes)  # raises on unknown names

    @property
    def offsets(self) -> tuple[int, ...]:
        """Neighbour offsets, nearest first (past before future at equal distance)."""
        out = []
        for k in range(1, max(self.past, self.future) + 1):
            if k <= self.past:
                out.append(-k)
            if k <= self.future:
                out.append(k)
        return tuple(out)

    @property
    def window(self) -> str:
        return f"-{self.past}:+{self.future}"

    @classmethod
    def _presets(cls) -> dict[str, dict[str, Any]]:
        return {"released": {}, "symmetric": {"past": 2, "future": 2}}


def parse_window(spec: str) -> tuple[int, int]:
    """'-K:+K', '-4:+0', '4' (past only) -> (past, future)."""
    s = spec.strip()
    if ":" in s:
        a, b = s.split(":", 1)
        try:
            past, future = -int(a), int(b)
        except ValueError:
            raise ValueError(f"bad window {spec!r}: use e.g. -4:+0 or -2:+2") from None
    else:
        try:
            past, future = abs(int(s)), 0
        except ValueError:
            raise ValueError(f"bad window {spec!r}: use e.g. -4:+0 or -2:+2") from None
    if past < 0 or future < 0:
        raise ValueError(f"bad window {spec!r}: past must be <= 0 and future >= 0")
    return past, future


MODELS = ("polarnet", "cylinder3d")

# Published grids (design.md 1.5): PolarSeg's polar volume and Cylinder3D's cylinder.
GRID_BOUNDS = {
    "polarnet": ((3.0, -3.141592653589793, -3.0), (50.0, 3.141592653589793, 1.5)),
    "cylinder3d": ((0.0, -3.141592653589793, -4.0), (50.0, 3.141592653589793, 2.0)),
}

# KITTI split (design.md 2); the synthetic demo uses 00 to train and 08 to validate.
TRAIN_SEQUENCES = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
VAL_SEQUENCES = ("08",)


@dataclass(frozen=True)
class TrainConfig(Config):
    """Backbone, optimisation, augmentation and distillation settings of one training run.

    `paper` is the published setting (design.md 1.5-1.6), `tiny` trains in minutes on two
    CPU cores: a 96x72x16 grid and narrow layers. Fields that change the network's shape
    (model, grid, widths) are checked when a checkpoint is loaded.
    """

    model: str = "cylinder3d"
    grid_shape: tuple[int, int, int] = (480, 360, 32)
    min_bound: tuple[float, float, float] | None = None  # None: the model's published bounds
    max_bound: tuple[float, float, float] | None = None
    point_widths: tuple[int, ...] = (64, 128, 256, 256)  # point MLP after BN(9)
    max_points_per_cell: int = 0  # PolarSeg keeps at most 256 random points per BEV cell; 0 = all
    init_size: int = 32  # Cylinder3D base width / PolarNet U-Net first width
    compress: int = 16  # point feature width fed to the grid (PolarNet: = height bins)
    dropout: float = 0.5  # PolarNet head dropout
    hard_classes: tuple[str, ...] = DEFAULT_HARD_CLASSES

    # optimisation (released config: Adam 1e-3, batch 2, no scheduler)
    lr: float = 1e-3
    batch_size: int = 2
    lovasz_weight: float = 1.0
    amp: bool = False  # CUDA only; ignored on CPU
    workers: int = 2
    checkpoint_every: int = 500
    log_every: int = 1

    # augmentation (released config)
    aug_rotate_deg: float = 45.0
    aug_flip: bool = True
    aug_scale: tuple[float, float] = (0.95, 1.05)
    aug_translate: tuple[float, float, float] = (0.5, 0.5, 0.1)

    # distillation (student only, design.md 1.4)
    w_feat: float = 0.1
    w_logit: float = 1.0
    w_aff: float = 1.0
    temperature: float = 2.0
    logit_variant: str = "kl"  # "kl": KL(p_t||p_s) * T^2; "released": T=1/0.3, |log ratio| > 0.01
    # How L_logit averages its per-point terms: "point" (a plain mean: ~97 % of the weight
    # on road, building, vegetation...) or "class" (mean per ground-truth class, then over
    # the classes present, as the Lovasz term does), so the teacher's knowledge of the
    # hard classes is not drowned (README, "what was tuned").
    kd_balance: str = "class"
    aff_level: str = "instance"  # "instance" (paper) or "class" (released code)
    aff_cap: int = 256  # voxels per instance in the affinity matrix (random subset)

    train_sequences: tuple[str, ...] = TRAIN_SEQUENCES
    val_sequences: tuple[str, ...] = VAL_SEQUENCES

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose from {MODELS}")
        if self.logit_variant not in ("kl", "released"):
            raise ValueError(f"logit_variant must be 'kl' or 'released', got {self.logit_variant!r}")
        if self.kd_balance not in ("point", "class"):
            raise ValueError(f"kd_balance must be 'point' or 'class', got {self.kd_balance!r}")
        if self.aff_level not in ("instance", "class"):
            raise ValueError(f"aff_level must be 'instance' or 'class', got {self.aff_level!r}")
        if self.batch_size <= 0 or self.lr <= 0 or self.temperature <= 0 or self.aff_cap < 2:
            raise ValueError("batch_size, lr and temperature must be positive and aff_cap >= 2")
        class_ids(self.hard_classes)
        # fill the model's published bounds so the saved config is fully resolved
        lo, hi = GRID_BOUNDS[self.model]
        if self.min_bound is None:
            object.__setattr__(self, "min_bound", lo)
        if self.max_bound is None:
            object.__setattr__(self, "max_bound", hi)

    @classmethod
    def _presets(cls) -> dict[str, dict[str, Any]]:
        return {
            "paper": {},
            "tiny": {
                "grid_shape": (96, 72, 16), "point_widths": (16, 32, 64), "init_size": 8, "compress": 8,
                "checkpoint_every": 100,
            },
        }

    @classmethod
    def build(cls, preset: str, model: str, **overrides: Any) -> TrainConfig:
        """The named preset for `model` with CLI overrides applied and the grid bounds resolved."""
        d = cls.preset(preset).to_dict()
        d.update(model=model, min_bound=None, max_bound=None)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d)

    @property
    def grid(self) -> PolarGrid:
        return PolarGrid(tuple(self.grid_shape), tuple(self.min_bound), tuple(self.max_bound))

    def shape_fields(self) -> dict[str, Any]:
        """What a checkpoint's weights depend on: loading into another shape is refused."""
        keys = ("model", "grid_shape", "min_bound", "max_bound", "point_widths", "init_size", "compress")
        return {k: _plain(getattr(self, k)) for k in keys}
