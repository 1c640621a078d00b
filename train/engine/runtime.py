"""Device choice and (optional) torch.distributed setup, shared by training and evaluation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes CUDA when present (LOCAL_RANK's GPU under torchrun), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: m2skd runs on cpu or cuda; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


# whether init_distributed created the process group: a group its caller set up is the
# caller's to close
_joined = False


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU."""
    global _joined
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _joined = True
    return Dist(dist.get_rank(), dist.get_world_size())


def close_distributed(finished: bool) -> None:
    """Leave the process group that `init_distributed` joined (none other).

    A rank that exits with gloo's threads still up can die in C++ ("terminate called without
    an active exception", SIGABRT: seen in CI under torchrun), so a finished run waits for
    every rank at a barrier and then tears the group down; a failed one only tears it down
    (a barrier would wait forever on a rank that died)."""
    global _joined
    if not (_joined and dist.is_initialized()):
        return
    _joined = False
    if finished:
        dist.barrier()
    dist.destroy_process_group()
