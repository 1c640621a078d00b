"""Shared fixtures: tiny synthetic sequences in the SemanticKITTI layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2skd.common.config import SynthConfig
from m2skd.preprocess.synth import generate_sequence

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"

# Denser than the `tiny` preset so geometric checks see objects with enough points.
SMALL = SynthConfig.preset("tiny").override(beams=32, columns=900, scans=12, max_range=70.0)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """Sequences 00 and 08 (labelled) and 11 (test split, no labels)."""
    root = tmp_path_factory.mktemp("kitti")
    for name in ("00", "08", "11"):
        generate_sequence(root, name, SMALL)
    return root


def nn_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Brute-force nearest-neighbour distance from each row of a to the rows of b."""
    out = np.empty(len(a))
    for i in range(0, len(a), 512):
        d = ((a[i:i + 512, None, :3] - b[None, :, :3]) ** 2).sum(-1)
        out[i:i + 512] = np.sqrt(d.min(1))
    return out


def real_path(name: str) -> Path:
    p = REAL / name
    if not p.is_file():
        pytest.skip(f"real data {p} not available")
    return p
