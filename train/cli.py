"""`m2skd-train`: teacher, baseline and student training and evaluation (issues 4 and 5)."""

from __future__ import annotations

import sys


def main() -> None:
    print("m2skd-train: not implemented yet (see the training-stage issue)", file=sys.stderr)
    sys.exit(2)
