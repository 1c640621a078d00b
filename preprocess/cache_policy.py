"""What an output folder may hold: one fusion config per cache, and no manifest that
m2skd-fuse did not write."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from m2skd.common.shards import MANIFEST, is_manifest

from .plan import FusionError


def check_mixing(out: Path, names: list[str], chash: str, force: bool) -> list[str]:
    """Sequences of OUT fused with another config than this run's, outside this run.

    A cache holds one config (the teacher must not train on a mix): they are refused
    unless `force`, which drops them from the manifest (their files stay)."""
    other = sorted({e.get("sequence") for e in sidecars(out)
                    if e.get("config_hash") != chash and e.get("sequence") not in names})
    if other and not force:
        raise FusionError(f"{out}: holds sequence(s) {other} fused with another config; a cache holds one config. "
                          "Fuse them again with this one (add them to --sequences), use another --out, or pass "
                          "--force to drop them from the manifest.")
    return other


def replaced_sequences(out: Path, names: list[str], chash: str) -> list[str]:
    """This run's sequences that OUT holds fused with another config (their shards are redone)."""
    return sorted({e.get("sequence") for e in sidecars(out)
                   if e.get("config_hash") != chash and e.get("sequence") in names})


def check_manifest_is_ours(out: Path) -> None:
    """A manifest.json that m2skd-fuse did not write (another tool's, a user's file) is never overwritten."""
    path = out / MANIFEST
    if not path.exists():
        return
    try:
        ours = is_manifest(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ours = False
    if not ours:
        raise FusionError(f"{path}: not a manifest m2skd-fuse wrote; it is left as it is: choose another --out")


def sidecars(out: Path) -> list[dict]:
    entries = []
    for side in out.glob("*.h5.json"):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            entries.append(json.loads(side.read_text()))
    return entries
