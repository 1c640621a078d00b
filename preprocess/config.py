"""The fusion stage's config: window, hard classes, motion rule, voxel filter, shards."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from m2skd.common.config import Config, knob
from m2skd.common.labels import DEFAULT_HARD_CLASSES, class_ids


def parse_window(spec: str) -> tuple[int, int]:
    """'-K:+K', '-4:+0', '4' (past only) -> (past, future)."""
    s = spec.strip()
    try:
        if ":" in s:
            a, b = s.split(":", 1)
            past, future = -int(a), int(b)
        else:
            past, future = abs(int(s)), 0
    except ValueError:
        raise ValueError(f"bad window {spec!r}: use e.g. -4:+0 or -2:+2") from None
    if past < 0 or future < 0:
        raise ValueError(f"bad window {spec!r}: past must be <= 0 and future >= 0")
    return past, future


def parse_names(spec: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in spec.split(",") if c.strip())


@dataclass(frozen=True)
class FusionConfig(Config):
    """Multi-scan hard-instance fusion (docs/method.md, "Fusion")."""

    past: int = knob(4, "fuse scans t-1..t-past (the released code: 4)", cli=False, at_least=0, at_most=100)
    future: int = knob(0, "fuse scans t+1..t+future (offline, the future is on disk)", cli=False, at_least=0,
                       at_most=100)
    hard_classes: tuple[str, ...] = knob(DEFAULT_HARD_CLASSES, "train classes whose instances are fused",
                                         parse=parse_names)
    # below 1 mm the grid keys of a 100 m scene overflow int64 and the filter means nothing;
    # above 5 m every instance collapses to one point
    voxel: float = knob(0.05, "voxel filter on fused points (m), so a static object seen in many scans does "
                              "not dominate; 0 = off, else 0.001-5", at_least=0.0, at_most=5.0)
    drift_threshold: float = knob(0.5, "centroid drift (m) after pose alignment that marks an instance as moving",
                                  at_least=0.0, at_most=100.0)
    centroid_correction: bool = knob(True, "shift moving instances onto the target instance's centroid")
    # the released loader's alignment: no poses at all, every neighbour instance translated from
    # its own scan's frame onto the target instance's centroid (docs/method.md, "Fusion")
    align: str = knob("poses", "place neighbour instances with the KITTI poses (then the centroid rule for moving "
                      "ones), or as released: translate every instance, in its own scan's frame, onto the target "
                      "instance's centroid", choices=("poses", "centroid"))
    full_window: bool = knob(False, "fuse only scans whose whole window is in the sequence (released: scans t < 4 "
                             "stay unfused)")
    append_own: bool = knob(False, "append scan t's own hard-class instance points again after the fused ones "
                            "(released: every stored instance of t is appended a second time)")
    fuse_occluded_static: bool = knob(False, "also fuse static instances absent from scan t")
    shard_size: int = knob(50, "scans per HDF5 shard", at_least=1, at_most=10000)
    compress_points: bool = knob(False, "shuffle+lzf on the points too: 22% smaller shards, ~9x slower writes")
    compact: bool = knob(False, "store only the fused points; each scan's own points are read from its .bin and "
                                ".label when training (a far smaller cache; the dataset must stay where it was)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.past + self.future == 0:
            raise ValueError(f"fusion window must include a neighbour, got past={self.past} future={self.future}")
        if 0 < self.voxel < 0.001:
            raise ValueError(f"--voxel must be 0 (off) or at least 0.001 m, got {self.voxel}")
        if not self.hard_classes:
            raise ValueError("hard_classes is empty: name at least one class to fuse")
        class_ids(self.hard_classes)  # raises on unknown names
        if dup := sorted({c for c in self.hard_classes if self.hard_classes.count(c) > 1}):
            # a repeated class would count several times in the hard-class mIoU
            raise ValueError(f"--hard-classes: {', '.join(dup)} named more than once")

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
        # default: this project's fusion (pose-aligned, 5 cm filter; the released window);
        # released: the released loader's, exactly; symmetric: past and future, offline
        return {"default": {}, "released": RELEASED, "symmetric": {"past": 2, "future": 2}}


# The released loader's fusion (skyshoumeng/M2SKD, dataloader/pc_dataset.py): the 4 past
# scans, instances present in t only, each translated in its own frame onto t's instance
# centroid (no poses: `offest = -mean(tmp_point) + mean(instance_dict[...])`), no thinning,
# nothing fused while t < 4 (`if number_idx - self.multiscan >= 0`), and t's instances
# appended after its scan a second time (`raw_data = concatenate((raw_data, list_all))`).
RELEASED: dict[str, Any] = {"past": 4, "future": 0, "align": "centroid", "voxel": 0.0, "full_window": True,
                            "append_own": True}
# Knobs added after caches existed: at these values they are left out of a cache's config
# (and its hash), so a cache fused before them keeps its identity and is not rebuilt
LATER_DEFAULTS: dict[str, Any] = {"align": "poses", "full_window": False, "append_own": False}
