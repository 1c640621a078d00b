"""What a finished cache holds, for the CLI's summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m2skd.common.labels import CLASS_NAMES
from m2skd.common.shards import ShardReader


def fused_stats(manifest: dict, out: str | Path) -> dict:
    """Mean fused points per scan, overall and per hard class (for the CLI summary)."""
    per_class: dict[str, float] = {}
    fused = scans = 0
    for e in manifest["shards"]:
        r = ShardReader(Path(out) / e["file"])
        for i in range(len(r)):
            s = r.scan(i)
            lab = s.labels[s.n_original:]
            fused += len(lab)
            for c, n in zip(*np.unique(lab, return_counts=True), strict=False):
                per_class[CLASS_NAMES[c]] = per_class.get(CLASS_NAMES[c], 0) + int(n)
        scans += len(r)
        r.close()
    return {"scans": scans, "fused_per_scan": fused / max(scans, 1),
            "per_class_per_scan": {k: v / max(scans, 1) for k, v in sorted(per_class.items())}}
