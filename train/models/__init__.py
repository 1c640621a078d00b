"""Backbones: the contract they keep (`backbone.py`), the table of them (`registry.py`),
and `build_model`. They depend on nothing in the data path: any object with the fields
of `VoxelInput` (the loader's `Batch` is one) will do."""

from __future__ import annotations

import torch

from .backbone import (
    FEATURE_LEVELS,
    Backbone,
    ModelOutput,
    VoxelInput,
    deterministic_forward,
    for_distillation,
    set_feature_level,
)
from .registry import BACKBONES, backbone_class

__all__ = ["BACKBONES", "FEATURE_LEVELS", "Backbone", "ModelOutput", "VoxelInput", "build_model",
           "deterministic_forward", "for_distillation", "set_feature_level"]


def build_model(cfg, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The network `cfg.backbone` names (a `ModelConfig`), on `device`."""
    device = torch.device(device)
    return backbone_class(cfg.backbone)(cfg, device).to(device)
