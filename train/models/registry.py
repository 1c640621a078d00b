"""The backbones by name, and what each one publishes: its grid and its network setting.

A new backbone is one module (a class that keeps the contract of `backbone.py`) and one
`register(...)` line below. The module is named, not imported: it is imported when the
network is built, so reading a config or listing the backbones never loads spconv
(5.5 s on this machine) or whatever a backbone needs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry

_PI = 3.141592653589793


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    module: str  # dotted path of the module defining `cls`
    cls: str
    grid_bounds: tuple[tuple[float, float, float], tuple[float, float, float]]  # (rho, phi, z) min, max
    published: dict[str, Any] = field(default_factory=dict)  # the published network's knobs (TrainConfig)


BACKBONES: Registry[BackboneEntry] = Registry("model")


def register(entry: BackboneEntry) -> BackboneEntry:
    return BACKBONES.add(entry.name, entry)


def backbone(name: str) -> BackboneEntry:
    return BACKBONES.entry(name)


def backbone_class(name: str) -> type:
    entry = backbone(name)
    return getattr(importlib.import_module(entry.module), entry.cls)


# Sources in docs/method.md, "Backbones". PolarSeg: polar volume rho 3-50 m, z -3..1.5 m;
# point MLP to 512, compressed to one channel per height bin (32), at most 256 random
# points per BEV cell, DropBlock p 0.5; rotation 0-360 deg and flips, no scaling or
# translation. Cylinder3D: cylinder rho 0-50 m, z -4..2 m; point MLP to 256, compressed to
# 16; the released M2SKD augmentation (TrainConfig's defaults).
register(BackboneEntry(
    "polarnet", "m2skd.train.models.polarnet", "PolarNet", ((3.0, -_PI, -3.0), (50.0, _PI, 1.5)),
    {"point_widths": (64, 128, 256, 512), "compress": 32, "max_points_per_cell": 256, "dropout": 0.5,
     "rotate_deg": 180.0, "scale": (1.0, 1.0), "translate": (0.0, 0.0, 0.0)}))
register(BackboneEntry(
    "cylinder3d", "m2skd.train.models.cylinder3d", "Cylinder3D", ((0.0, -_PI, -4.0), (50.0, _PI, 2.0)),
    {"point_widths": (64, 128, 256, 256), "compress": 16, "max_points_per_cell": 0}))
