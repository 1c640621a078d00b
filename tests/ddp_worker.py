"""Run under torchrun by test_ddp.py: a few baseline steps, then each rank saves its weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from m2skd.train.trainer import RunSpec, train
from tests.conftest import tiny_train_config

cache, out = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])


def dump(model: torch.nn.Module) -> None:
    torch.save(model.state_dict(), out / f"rank{rank}.pt")


train(RunSpec(kind="baseline", cfg=tiny_train_config("polarnet", batch_size=1), cache=cache, out=out, steps=3,
              seed=0, progress=False, device="cpu", on_finish=dump))
