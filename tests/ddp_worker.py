"""Run under torchrun by test_ddp.py: a few steps of a run, then each rank saves its weights.

    torchrun ... -m tests.ddp_worker CACHE OUT KIND [TEACHER_CKPT]   (from the repository root)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from m2skd.train.engine.trainer import RunSpec, train
from tests.conftest import tiny_train_config

cache, out, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
teacher = Path(sys.argv[4]) if len(sys.argv) > 4 else None
rank = int(os.environ["RANK"])


def dump(run) -> None:
    torch.save(run.model.state_dict(), out / f"rank{rank}.pt")


train(RunSpec(kind=kind, cfg=tiny_train_config("polarnet", batch_size=1), cache=cache, out=out, steps=3,
              seed=0, progress=False, device="cpu", teacher=teacher, on_finish=dump))
# a rank that exits with gloo's process group still up can abort in C++ at exit (seen in CI):
# train() leaves the group itself
(out / f"rank{rank}.group").write_text("open" if torch.distributed.is_initialized() else "closed")
