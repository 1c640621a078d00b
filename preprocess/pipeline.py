"""`make fuse`: check and plan every sequence (`plan`), keep the cache to one config
(`cache_policy`), fuse the unfinished shards (`sequence_fusion`, runs of them in parallel
processes: `pool`), write the manifest.

Each sequence is walked with a sliding window and written as shards of `shard_size`
consecutive scans (temp file + rename, then a sidecar with the manifest entry). A rerun
skips shards whose sidecar matches the config hash, whose input files are unchanged (size
and mtime of every scan, label, poses.txt and calib.txt the shard read) and whose checksum
verifies; everything else is rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from m2skd.common.atomic import remove_stale_temps
from m2skd.common.outputs import exclusive
from m2skd.common.shards import write_manifest

from .cache_policy import check_manifest_is_ours, check_mixing, check_shards_are_ours, replaced_sequences
from .config import FusionConfig
from .plan import FusionError, SequencePlan, cache_config, plan
from .pool import fuse_in_pool
from .sequence_fusion import fuse_sequence

# what m2skd-fuse writes into --out (shards, their sidecars, the manifest): only these
# files' temps are its own to clean up after a killed run
FUSE_FILES = ("seq*.h5", "seq*.h5.json", "manifest.json")

__all__ = ["FusionError", "SequencePlan", "plan", "run_fusion"]


def run_fusion(
    root: str | Path, names: list[str], out: str | Path, cfg: FusionConfig, workers: int = 1,
    force: bool = False, on_scan: Callable[[str, int, bool], None] | None = None,
    on_plan: Callable[[list[SequencePlan]], None] | None = None,
) -> dict:
    """Fuse the given sequences of ROOT into OUT; return the manifest.

    OUT is checked writable and locked against a second writer before anything else."""
    root, out = Path(root), Path(out)
    with exclusive(out, "m2skd-fuse"):
        damaged = check_manifest_is_ours(out)
        plans = plan(root, names, cfg)
        check_shards_are_ours(out, plans, force)
        config, chash = cache_config(cfg)
        dropped = check_mixing(out, names, chash, force)
        notes = [f"{out}: --force drops sequence(s) {dropped}, fused with another config, from the manifest"] \
            if dropped else []
        notes += [damaged] if damaged else []
        if replaced := replaced_sequences(out, names, chash):
            notes.append(f"{out}: sequence(s) {replaced} were fused with another config; their shards are "
                         "replaced by this config's")
        plans[0] = replace(plans[0], notes=(*plans[0].notes, *notes))
        if on_plan:
            on_plan(plans)
        remove_stale_temps(out, FUSE_FILES)  # a killed run's half-written shard
        try:
            if workers <= 1:
                for sp in plans:
                    fuse_sequence(root, sp, out, cfg, force, on_scan)
            else:
                fuse_in_pool(root, plans, out, cfg, workers, force, on_scan)
        finally:
            remove_stale_temps(out, FUSE_FILES)  # workers stopped by Ctrl-C or an error leave theirs
        return write_manifest(out, config, chash)
