"""Shared fixtures: tiny synthetic sequences in the SemanticKITTI layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import generate_sequence

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"

# Denser than the `tiny` preset so geometric checks see objects with enough points.
SMALL = SynthConfig.preset("tiny").override(beams=32, columns=900, scans=12, max_range=70.0, hard_density=25.0)


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


def shard_content(path: Path) -> dict:
    """Every dataset's bytes and every attribute of a shard, read through HDF5.

    Two fusions of the same input store the same content but not always the same file
    bytes: h5py's lzf leaves its hash table uninitialised (INIT_HTAB 0 in h5py's
    lzf/lzfP.h), so the compressed stream depends on leftover stack memory."""
    import h5py

    with h5py.File(path, "r") as f:
        data = {name: (f[name].dtype.str, f[name].shape, f[name][()].tobytes()) for name in f}
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return {"datasets": data, "attrs": attrs}


def real_path(name: str) -> Path:
    p = REAL / name
    if not p.is_file():
        pytest.skip(f"real data {p} not available")
    return p


@pytest.fixture(scope="session")
def fused_cache(synth_root, tmp_path_factory) -> Path:
    """`make fuse` output for sequences 00 (train) and 08 (val) of `synth_root`."""
    from m2skd.preprocess.config import FusionConfig
    from m2skd.preprocess.pipeline import run_fusion

    out = tmp_path_factory.mktemp("cache") / "fused"
    run_fusion(synth_root, ["00", "08"], out, FusionConfig(shard_size=5))
    return out


def tiny_train_config(model: str = "polarnet", **overrides):
    """The tiny preset, smaller still, for fast CPU tests (train on 00, validate on 08)."""
    from m2skd.train.config import TrainConfig

    base = dict(workers=0, train_sequences=("00",), val_sequences=("08",), grid_shape=(48, 36, 8),
                point_widths=(16, 32), init_size=4, compress=8, checkpoint_every=2)
    base.update(overrides)
    return TrainConfig.preset("tiny", model=model).override(**base)


# semantic-kitti-api `config/semantic-kitti.yaml`, learning_map_inv, written out by hand so
# the prediction tests do not read the table the code under test uses
RAW_OF_TRAIN = np.array([0, 10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 70, 71, 72, 80, 81])


def by_hand_class(x: np.ndarray) -> np.ndarray:
    """The train id `ByHandModel` predicts for a point at x: 1 + floor(|x|) mod 19."""
    return 1 + np.floor(np.abs(x)).astype(np.int64) % 19


def by_hand_model():
    """A network stand-in whose logits are set by hand: one-hot at `by_hand_class` of each
    point's x (the 7th input feature), so what eval and predict write can be checked
    against the raw scans without running a model twice."""
    import torch

    from m2skd.train.models import ModelOutput

    class ByHandModel(torch.nn.Module):
        def forward(self, batch) -> ModelOutput:
            cls = 1 + torch.floor(batch.feats[:, 6].abs()).long() % 19
            n = len(cls)
            return ModelOutput(torch.nn.functional.one_hot(cls, 20).float(), torch.zeros(0, dtype=torch.long),
                               torch.zeros(0, 1), torch.zeros(n, dtype=torch.long))

    return ByHandModel()


def raw_scan(root: Path, seq: str, frame: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(points (N, 4), raw semantic ids or None) read with numpy alone."""
    base = root / "sequences" / seq
    pts = np.fromfile(base / "velodyne" / f"{frame:06d}.bin", np.float32).reshape(-1, 4)
    lab = base / "labels" / f"{frame:06d}.label"
    return pts, (np.fromfile(lab, np.uint32) & 0xFFFF) if lab.is_file() else None
