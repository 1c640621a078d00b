"""SemanticKITTI's sequence split (docs/kitti.md) and the sequence specs the CLIs take."""

from __future__ import annotations

import re
from collections.abc import Iterable

TRAIN_SEQUENCES = ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10")
VAL_SEQUENCES = ("08",)
TEST_SEQUENCES = tuple(f"{i:02d}" for i in range(11, 22))  # no labels


def parse_sequences(spec: str | Iterable[str]) -> list[str]:
    """'00-10', '08', '00,02,08' (or a list of those) -> ['00', ..., '10']."""
    parts = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    out: list[str] = []
    for p in (p.strip() for p in parts):
        if not p:
            continue
        m = re.fullmatch(r"(\d{1,2})(?:-(\d{1,2}))?", p)
        if not m:
            raise ValueError(f"bad sequence spec {p!r}: use '00-10', '08' or '00,02,08'")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a:
            raise ValueError(f"bad sequence range {p!r}: end before start")
        out.extend(f"{i:02d}" for i in range(a, b + 1) if f"{i:02d}" not in out)
    if not out:
        raise ValueError(f"empty sequence spec {spec!r}")
    return out
