"""What a run starting afresh may find in its --out, and what it does with it.

A run folder holds last.pt, best.pt, config.json, metrics.jsonl and train.log. A fresh
start (no last.pt, or `--force`) must not leave an earlier run's best.pt beside its own
last.pt (eval would deploy a model of another run), and must not write over files it did
not write: a user's own config.json or metrics.jsonl, or a best.pt of another run whose
last.pt is gone. What is ours and belongs to this very run (same kind, seed and settings:
a run killed before its first checkpoint) is started over without asking.
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import CheckpointError, load_checkpoint
from .spec import TrainError

RUN_FILES = ("best.pt", "config.json", "metrics.jsonl")


class FolderError(TrainError):
    """An --out whose files a fresh run would write over without being sure they are its own."""


def _ours_config(path: Path) -> dict | None:
    """config.json as m2skd-train writes it, or None (not JSON, or not ours)."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and {"kind", "seed", "config"} <= d.keys() else None


def _metrics_readable(path: Path) -> bool:
    try:
        rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return False
    return all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in rows)


def _same_run(kind: str, seed: int, config: dict, other: dict) -> bool:
    def plain(d: object) -> object:  # as JSON holds it (tuples are lists there)
        return json.loads(json.dumps(d))

    return other.get("kind") == kind and other.get("seed") == seed and plain(other.get("config")) == plain(config)


def claim_fresh(out: Path, kind: str, seed: int, config: dict, force: bool) -> list[Path]:
    """Make `out` ready for a run starting at step 0 (before its config.json is written):
    with `force`, delete the earlier run's best.pt and metrics.jsonl; without, refuse a
    file that is not this run's own (FolderError naming it). Returns what was removed."""
    out = Path(out)
    present = {name: out / name for name in RUN_FILES if (out / name).exists()}
    if force:
        removed = [p for name, p in present.items() if name != "config.json"]
        for p in removed:
            p.unlink()
        return removed
    remedy = "pass --force to start a new run there (it replaces them) or choose another --out"
    cfg_path = present.get("config.json")
    if cfg_path is not None:
        cfg = _ours_config(cfg_path)
        if cfg is None:
            raise FolderError(f"{cfg_path}: not a run config m2skd-train wrote; {remedy}")
        if not _same_run(kind, seed, config, cfg):
            raise FolderError(f"{cfg_path}: the config of another run (a {cfg.get('kind')} run, seed "
                              f"{cfg.get('seed')}) whose last.pt is gone; {remedy}")
    metrics = present.get("metrics.jsonl")
    if metrics is not None and not _metrics_readable(metrics):
        raise FolderError(f"{metrics}: not a step log m2skd-train wrote (one JSON object with a 'step' a line); "
                          f"{remedy}")
    best = present.get("best.pt")
    removed = []
    if best is not None:
        try:
            state = load_checkpoint(best)
        except CheckpointError as e:
            raise FolderError(f"{e}; a fresh run would replace it: {remedy}") from None
        if not _same_run(kind, seed, config, state):
            raise FolderError(f"{best}: the best model of another run (a {state.get('kind')} run, seed "
                              f"{state.get('seed')}) whose last.pt is gone; {remedy}")
        best.unlink()  # this run's own, killed before its first last.pt: its best is redone
        removed.append(best)
    return removed
