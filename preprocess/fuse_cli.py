"""`m2skd-fuse`: multi-scan hard-instance fusion into HDF5 shards."""

from __future__ import annotations

import sys


def main() -> None:
    print("m2skd-fuse: not implemented yet", file=sys.stderr)
    sys.exit(2)
