"""The views of a scan, one word each, defined once.

`single`  the scan's own points: what the student, a baseline and a deployed model read;
`fused`   its own points, then the hard-class instances fused in from its neighbours:
          what the teacher reads;
`pair`    (the loader only) both, of the same augmented scan: what distillation reads.
"""

from __future__ import annotations

VIEWS = ("single", "fused")
LOADER_VIEWS = (*VIEWS, "pair")


def check_view(view: str, allowed: tuple[str, ...] = VIEWS) -> str:
    """`view`, or ValueError naming the allowed ones."""
    if view not in allowed:
        raise ValueError(f"view must be one of {allowed}, got {view!r}")
    return view
