"""Checkpoints: written to a temp file and renamed, checked on load against the run that
wants them (kind of network, shapes, label set)."""

from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from m2skd.common.atomic import atomic_path, write_text
from m2skd.common.config import differences, worded
from m2skd.common.labels import CLASS_NAMES
from m2skd.common.outputs import check_free_space

from ..config import TrainConfig
from ..models import build_model

# 2: nested TrainConfig, the cache's hard classes saved beside it
FORMAT = "m2skd-checkpoint-2"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or belongs to another kind of run."""


def content_digest(state: dict) -> str:
    """sha256 of everything a checkpoint holds but its own digest: every tensor's dtype,
    shape and bytes and every other value, walked in key order. Saved in the checkpoint
    and checked on load, so a flipped byte or a weight set by hand (finite, so the
    non-finite check misses it) is refused; a file copied whole keeps its digest, and a
    run that distils from a checkpoint records that digest to know its teacher by content."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                if k == "digest":
                    continue
                h.update(repr(k).encode())
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, list | tuple):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    walk(state)
    return h.hexdigest()


@dataclass(frozen=True)
class Provenance:
    """What a run was made from, saved with every checkpoint: a resume checks it is the same."""

    teacher: str | None = None  # the --teacher path, as given
    teacher_view: str | None = None  # "fused" (M2SKD) or "single" (a single-scan teacher)
    teacher_digest: str | None = None  # the teacher checkpoint's content digest
    init_digest: str | None = None  # the --init checkpoint's (None: a random init)
    cache_identity: dict | None = None  # the cache's fusion config, hard classes and content digest


@dataclass(frozen=True)
class Progress:
    """Where validation and early stopping stand."""

    best: dict = field(default_factory=dict)  # {"step", "val_miou", "val_hard_miou"} of best.pt
    bad_validations: int = 0  # validations since the best one
    stopped: bool = False  # stopped early (--patience)


# The keys of a checkpoint (FORMAT), in one place: `save_checkpoint` writes them, the
# readers below and `load_checkpoint` read them. Checkpoints of older versions lack some
# of the provenance keys; they read as unknown (None), never as a mismatch.
def save_checkpoint(path: str | Path, *, kind: str, step: int, total_steps: int, cfg: TrainConfig,
                    hard_classes: tuple[str, ...], model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    seed: int, distiller: torch.nn.Module | None = None, provenance: Provenance = Provenance(),
                    progress: Progress = Progress()) -> None:
    state = {
        "format": FORMAT, "kind": kind, "step": step, "total_steps": total_steps, "seed": seed,
        "config": cfg.to_dict(), "classes": list(CLASS_NAMES), "hard_classes": list(hard_classes),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "torch_rng": torch.get_rng_state(),
        "distiller": distiller.state_dict() if distiller is not None else None,
        **asdict(provenance), **asdict(progress),
    }
    state["digest"] = content_digest(state)
    path = Path(path)
    check_checkpoint_space(path, model)
    with atomic_path(path, "the previous checkpoint is intact; free some space and --resume") as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as e:  # torch reports a short write as RuntimeError without errno
            if "file write failed" in str(e):
                raise OSError(errno.ENOSPC, str(e)) from None  # atomic_path words it as a full disk
            raise


def check_checkpoint_space(path: str | Path, model: torch.nn.Module) -> None:
    """Refuse (OutputError) when the disk under `path` cannot hold a checkpoint of `model`:
    the weights, Adam's two moments and the distiller, ~3x the weights. Checked before a
    run's first step and before every save."""
    path = Path(path)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    check_free_space(path.parent, 3 * size, f"checkpoint {path.name}")


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types on a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: not an m2skd checkpoint (format {fmt!r}, expected {FORMAT!r})")
    model = state.get("model")
    if isinstance(model, dict):
        bad = sum(int((~torch.isfinite(t)).sum()) for t in model.values()
                  if isinstance(t, torch.Tensor) and t.is_floating_point())
        if bad:
            raise CheckpointError(f"{path}: {bad:,} weights are not finite (NaN or inf): not a usable model")
    # checkpoints saved before the digest existed have none: loaded as they were
    if "digest" in state and content_digest(state) != state["digest"]:
        raise CheckpointError(f"{path}: its content no longer matches the digest saved with it (weights, optimiser "
                              "state or settings changed after it was written): not loaded; use an intact copy or "
                              "train again")
    if state["classes"] != list(CLASS_NAMES):
        raise CheckpointError(f"{path}: trained on another label set ({len(state['classes'])} classes: "
                              f"{state['classes'][:4]}...), this code uses the SemanticKITTI 19 + unlabelled")
    return state


def checkpoint_config(state: dict, path: str | Path) -> TrainConfig:
    try:
        return TrainConfig.from_dict(state["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: its saved config is not valid here ({e})") from None


def check_compatible(state: dict, cfg: TrainConfig, path: str | Path, role: str) -> None:
    """Refuse weights whose network shape differs from `cfg` (other backbone, preset or grid)."""
    diff = differences(checkpoint_config(state, path).model.shape_dict(), cfg.model.shape_dict())
    if diff:
        raise CheckpointError(f"{path}: the {role} checkpoint is a different network "
                              f"({worded(diff, 'checkpoint', 'run')}); use the same --model and --preset it was "
                              "trained with")


def write_config(out: str | Path, payload: dict) -> None:
    write_text(Path(out) / "config.json", json.dumps(payload, indent=1))


def load_model(ckpt: str | Path, device: torch.device) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """The checkpoint's network in eval mode, its config, and the checkpoint (its
    `hard_classes` are the ones the run trained with)."""
    state = load_checkpoint(ckpt)
    cfg = checkpoint_config(state, ckpt)
    model = build_model(cfg.model, device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, state


def keep_weights(src: str | Path, dst: str | Path) -> Path:
    """A copy of checkpoint `src` without its optimiser state (a third of its size), for
    a teacher kept beside an experiment's records: it teaches, evaluates and serves as
    `--init` as `src` does, but cannot be resumed. Its digest is its own (the content
    differs), so a student records the copy it actually distilled from."""
    state = load_checkpoint(src)
    state["optimizer"] = None
    state["digest"] = content_digest(state)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst, f"{dst} is unchanged") as tmp:
        torch.save(state, tmp)
    return dst


def digest_of(state: dict) -> str:
    """A loaded checkpoint's content digest (computed for one saved before digests were)."""
    return state.get("digest") or content_digest(state)


def provenance_of(state: dict) -> Provenance:
    return Provenance(**{f.name: state.get(f.name) for f in fields(Provenance)})


def progress_of(state: dict) -> Progress:
    return Progress(state.get("best") or {}, int(state.get("bad_validations") or 0), bool(state.get("stopped")))
