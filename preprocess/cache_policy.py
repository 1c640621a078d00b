"""What an output folder may hold: one fusion config per cache, and no manifest or shard
that m2skd-fuse did not write."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import h5py

from m2skd.common.shards import MANIFEST, is_manifest, shard_name, sidecar

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


SIDECAR_KEYS = {"file", "sequence", "frames", "scans", "config_hash", "input_hash", "sha256"}


def check_manifest_is_ours(out: Path) -> str | None:
    """A manifest.json that m2skd-fuse did not write (another tool's, a user's file) is never
    overwritten. One that is damaged (truncated, not JSON) in a folder whose shards carry
    m2skd-fuse's sidecars is ours: it is rewritten from them at the end (returned: a note
    saying so); before, `make fuse`, which the trainer sends the user to, refused it too."""
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        ours = is_manifest(json.loads(path.read_text()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ours = False
    if ours:
        return None
    if any(SIDECAR_KEYS <= e.keys() for e in sidecars(out) if isinstance(e, dict)):
        return f"{path}: damaged (not a readable manifest), in a cache of m2skd-fuse's shards: rewritten from them"
    raise FusionError(f"{path}: not a manifest m2skd-fuse wrote; it is left as it is: choose another --out")


def sidecars(out: Path) -> list[dict]:
    entries = []
    for side in out.glob("*.h5.json"):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            entries.append(json.loads(side.read_text()))
    return entries


def _our_shard(h5: Path) -> bool:
    """A shard m2skd-fuse wrote: its sidecar is ours, or (killed between the shard and its
    sidecar) the HDF5 file carries our attributes."""
    side = sidecar(h5)
    if side.is_file():
        try:
            entry = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(entry, dict) and SIDECAR_KEYS <= entry.keys()
    try:
        with h5py.File(h5, "r") as f:
            return "config_hash" in f.attrs and "sequence" in f.attrs
    except (OSError, ValueError):
        return False


def check_shards_are_ours(out: Path, plans: list, force: bool) -> None:
    """A file at a shard's name (or its sidecar's) that m2skd-fuse did not write is never
    overwritten: without a manifest a user's `seq00_000000-000007.h5` was replaced; `force`
    replaces it."""
    if force:
        return
    for sp in plans:
        for first, last in sp.shards:
            h5 = out / shard_name(sp.name, first, last)
            if (h5.exists() or sidecar(h5).exists()) and not _our_shard(h5):
                raise FusionError(f"{h5 if h5.exists() else sidecar(h5)}: a file m2skd-fuse did not write sits at the "
                                  "name of a shard it would write; it is left as it is: move it, choose another "
                                  "--out, or pass --force to replace it")
