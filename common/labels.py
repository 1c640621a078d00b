"""The SemanticKITTI label table, defined once for the whole project.

Source: `semantic-kitti.yaml` of the SemanticKITTI API (Behley et al., ICCV 2019):
raw ids, names, BGR colours, `learning_map` (raw -> 19 train classes + 0 ignore) and its
inverse. Moving objects carry the 25x raw ids (252..259) and map to the same train class
as their static counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = 0
NUM_CLASSES = 20  # 19 train classes + ignore (train id 0)


@dataclass(frozen=True)
class RawLabel:
    raw_id: int
    name: str
    train_id: int
    bgr: tuple[int, int, int]


# raw id, name, train id, BGR colour (semantic-kitti.yaml `color_map`)
RAW_LABELS: tuple[RawLabel, ...] = tuple(
    RawLabel(*row)
    for row in (
        (0, "unlabeled", 0, (0, 0, 0)),
        (1, "outlier", 0, (0, 0, 255)),
        (10, "car", 1, (245, 150, 100)),
        (11, "bicycle", 2, (245, 230, 100)),
        (13, "bus", 5, (250, 80, 100)),
        (15, "motorcycle", 3, (150, 60, 30)),
        (16, "on-rails", 5, (255, 0, 0)),
        (18, "truck", 4, (180, 30, 80)),
        (20, "other-vehicle", 5, (255, 0, 0)),
        (30, "person", 6, (30, 30, 255)),
        (31, "bicyclist", 7, (200, 40, 255)),
        (32, "motorcyclist", 8, (90, 30, 150)),
        (40, "road", 9, (255, 0, 255)),
        (44, "parking", 10, (255, 150, 255)),
        (48, "sidewalk", 11, (75, 0, 75)),
        (49, "other-ground", 12, (75, 0, 175)),
        (50, "building", 13, (0, 200, 255)),
        (51, "fence", 14, (50, 120, 255)),
        (52, "other-structure", 0, (0, 150, 255)),
        (60, "lane-marking", 9, (170, 255, 150)),
        (70, "vegetation", 15, (0, 175, 0)),
        (71, "trunk", 16, (0, 60, 135)),
        (72, "terrain", 17, (80, 240, 150)),
        (80, "pole", 18, (150, 240, 255)),
        (81, "traffic-sign", 19, (0, 0, 255)),
        (99, "other-object", 0, (255, 255, 50)),
        (252, "moving-car", 1, (245, 150, 100)),
        (253, "moving-bicyclist", 7, (200, 40, 255)),
        (254, "moving-person", 6, (30, 30, 255)),
        (255, "moving-motorcyclist", 8, (90, 30, 150)),
        (256, "moving-on-rails", 5, (255, 0, 0)),
        (257, "moving-bus", 5, (250, 80, 100)),
        (258, "moving-truck", 4, (180, 30, 80)),
        (259, "moving-other-vehicle", 5, (255, 0, 0)),
    )
)

RAW_BY_NAME: dict[str, int] = {r.name: r.raw_id for r in RAW_LABELS}

# Train class names, index == train id (0 is the ignore class).
CLASS_NAMES: tuple[str, ...] = (
    "unlabeled",
    "car",
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
    "road",
    "parking",
    "sidewalk",
    "other-ground",
    "building",
    "fence",
    "vegetation",
    "trunk",
    "terrain",
    "pole",
    "traffic-sign",
)

# semantic-kitti.yaml `learning_map_inv`: the raw id the test server expects per train id.
LEARNING_MAP_INV: tuple[int, ...] = (
    0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81,
)

# The one definition of the default hard classes: the released M2SKD code fuses
# SemanticKITTI's "thing" classes except car (docs/method.md, "Hard classes"). Fusion's
# config takes it as its default; training reads a cache's own list from its manifest.
DEFAULT_HARD_CLASSES: tuple[str, ...] = (
    "bicycle",
    "motorcycle",
    "truck",
    "other-vehicle",
    "person",
    "bicyclist",
    "motorcyclist",
)

# Share of all labelled points per train class over SemanticKITTI (semantic-kitti.yaml
# `content`, moving ids folded in; docs/kitti.md): the yardstick of the synthetic world.
PUBLISHED_CONTENT: dict[str, float] = {
    "road": 0.199, "sidewalk": 0.144, "building": 0.133, "vegetation": 0.267, "terrain": 0.078, "fence": 0.072,
    "parking": 0.015, "car": 0.043, "other-ground": 0.004, "trunk": 0.006, "pole": 0.003,
    "truck": 0.0022, "other-vehicle": 0.0018, "motorcycle": 0.0004, "person": 0.0003, "bicycle": 0.0002,
    "bicyclist": 0.0001, "motorcyclist": 0.00005,
}

MOVING_RAW_MIN = 252  # raw ids >= this are moving objects


class UnknownLabelError(ValueError):
    """A raw label id that SemanticKITTI does not define."""


_UNKNOWN = 255  # marks raw ids the table does not define


def _build_lut() -> np.ndarray:
    lut = np.full(1 << 16, _UNKNOWN, dtype=np.uint8)
    for r in RAW_LABELS:
        lut[r.raw_id] = r.train_id
    return lut


_RAW_TO_TRAIN_LUT = _build_lut()


def _low16(raw: np.ndarray) -> np.ndarray:
    # a .label's semantic part; no int64 copy (fusion decodes every scan of a sequence)
    if raw.dtype in (np.uint8, np.uint16):
        return raw
    return (raw if raw.dtype.kind == "u" else raw.astype(np.int64)) & 0xFFFF


def raw_to_train(raw: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Map raw semantic ids (low 16 bits of a .label) to train ids 0..19 (uint8).

    Raises UnknownLabelError naming `source` if an id is not in the label table.
    """
    raw = np.asarray(raw)
    if raw.dtype.kind not in "iu":
        raise TypeError(f"{source}: raw label ids must be integers, got {raw.dtype}")
    sem = _low16(raw)
    out = _RAW_TO_TRAIN_LUT[sem]
    bad = out == _UNKNOWN
    if bad.any():
        ids = np.unique(sem[bad])[:10].tolist()
        raise UnknownLabelError(
            f"{source}: unknown SemanticKITTI raw label id(s) {ids} "
            f"({int(bad.sum())} point(s)); valid ids are {sorted(r.raw_id for r in RAW_LABELS)}"
        )
    return out


def train_to_raw(train: np.ndarray) -> np.ndarray:
    """Inverse learning map: train ids -> the raw ids the SemanticKITTI server expects."""
    train = np.asarray(train)
    if train.size and (train.min() < 0 or train.max() >= NUM_CLASSES):
        raise ValueError(f"train ids must lie in 0..{NUM_CLASSES - 1}, got {train.min()}..{train.max()}")
    return np.asarray(LEARNING_MAP_INV, dtype=np.uint32)[train]


def is_moving(raw: np.ndarray) -> np.ndarray:
    """True where a raw id marks a moving object (the 25x ids)."""
    return _low16(np.asarray(raw)) >= MOVING_RAW_MIN


def class_ids(names: tuple[str, ...] | list[str]) -> tuple[int, ...]:
    """Train ids of the given class names (error on unknown names)."""
    out = []
    for n in names:
        if n not in CLASS_NAMES or n == "unlabeled":
            raise ValueError(f"unknown train class {n!r}; choose from {CLASS_NAMES[1:]}")
        out.append(CLASS_NAMES.index(n))
    return tuple(out)


HARD_CLASS_IDS: tuple[int, ...] = class_ids(DEFAULT_HARD_CLASSES)


def train_colors_rgb() -> np.ndarray:
    """(20, 3) uint8 RGB colour per train id, from the raw id of `learning_map_inv`."""
    by_raw = {r.raw_id: r.bgr for r in RAW_LABELS}
    return np.array([by_raw[r][::-1] for r in LEARNING_MAP_INV], dtype=np.uint8)
