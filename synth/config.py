"""The synthetic generator's config, and the real KITTI calibration it writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from m2skd.common.config import Config, knob

# Version 4 was the foliage-depth candidate (commit 15d1d89), measured and withdrawn: its
# records carry world_version 4, so no later world takes that number and it cannot be
# selected here (a folder it wrote is never mistaken for another world's).
WITHDRAWN_VERSION = 4
WORLD_VERSIONS = (2, 3, 5, 6, 7, 8)  # what this code writes; the last is the newest


@dataclass(frozen=True)
class SynthConfig(Config):
    """The synthetic LiDAR sequence generator (docs/synthetic.md)."""

    scans: int = knob(200, "scans per sequence", at_least=1, at_most=100_000)
    beams: int = knob(64, "vertical lasers, 1-64 (HDL-64E: 64)", at_least=1, at_most=64)
    # a scan's rays are cast at once, ~200 bytes each (measured: 64 x 16000 took 160 MiB
    # more than 64 x 2000); 20000 columns bounds a scan near 250 MiB
    columns: int = knob(2000, "firings per revolution (~0.18 deg azimuth steps, as KITTI's 10 Hz sweeps); at most "
                              "20000 (memory: ~200 bytes a ray, beams x columns rays a scan)", at_least=1,
                        at_most=20_000)
    max_range: float = knob(120.0, "sensor range (m)", above=0.0, at_most=1000.0)
    range_noise: float = knob(0.02, "range noise, 1 sigma (m)", at_least=0.0, at_most=10.0)
    dropout: float = knob(0.01, "probability a return is lost, plus a range-dependent term", at_least=0.0, below=1.0)
    speed_min: float = knob(6.0, "slowest ego speed (m/s)", above=0.0, at_most=100.0)
    speed_max: float = knob(10.0, "fastest ego speed (m/s)", above=0.0, at_most=100.0)
    period: float = knob(0.1, "seconds between scans (10 Hz)", above=0.0, at_most=10.0)
    seed: int = knob(0, "world seed: same seed, same bytes", at_least=0, at_most=2**32 - 1)
    # A 120-scan synthetic drive passes only 1-3 instances of each hard class at 1.0, so a
    # one-sequence train split would teach (and a one-sequence val split would score) a
    # handful of objects; the demo raises it so hard-class IoU measures more than luck.
    hard_density: float = knob(1.0, "hard-class objects per metre of road, relative to a SemanticKITTI-like rarity",
                               at_least=0.0, at_most=1000.0)
    rolling_shutter: bool = knob(False, "leave the sweep's ego-motion skew in the scans (up to ~1 m at 10 m/s), "
                                        "as a raw sensor gives them; KITTI's published scans are compensated")
    # Selectable so that a recorded world stays reproducible from the current code: the fair
    # test (docs/evidence.md) was made on version 2 (`make experiment` pins it), and a new
    # version is a new world, never switched under a running experiment (docs/synthetic.md).
    # The default is 6 since 2026-12-05: on 8 paired training seeds it met the rule fixed
    # before its last 4 seeds were scored (docs/synthetic.md, "Version 6"); 3 was the default
    # from 2026-12-04, judged better than 2 on the class mix and the real scan's road and car.
    world_version: int = knob(6, "generator version: 2 the relief world (the fair test's); 3 adds grass on the "
                                 "terrain, traffic in the ego's direction, tall cars, body sway and the class mix "
                                 "retuned (docs/synthetic.md, \"Version 3\"); 5, version 3 with the sensor pitched "
                                 "forward by 0-2 degrees a drive, judged by the sim-to-real yardstick and not adopted "
                                 "(\"Version 5\"); 6 (the default), version 3 with low shrub beds along the sidewalk "
                                 "(\"Version 6\"); 7, version 6 with a quarter of the residential parking strips "
                                 "laid with grass, judged by the yardstick and not adopted (\"Version 7\"); "
                                 "8, version 6 with grass strips, a grass verge and a tall hedge behind them, not "
                                 "adopted either (\"Version 8\"); 4 was "
                                 "the withdrawn foliage-depth world",
                              at_least=2, at_most=8)
    world: str = knob("auto", "street type of every sequence; auto: KITTI's for 00-10 (01 a highway, 03, 04, 09, 10 "
                              "country roads, ...), drawn by seed for others",
                      choices=("auto", "residential", "city", "country", "highway"))

    def __post_init__(self) -> None:
        # checked before anything is written, so a bad option never leaves a partial sequence
        super().__post_init__()
        if self.world_version == WITHDRAWN_VERSION:
            raise ValueError(f"--world-version {WITHDRAWN_VERSION} was the foliage-depth candidate, withdrawn; its "
                             "records (docs/sim2real/foliage_v4_*.json) are reproduced at commit 15d1d89, and no "
                             "later world takes its number (docs/synthetic.md)")
        if self.speed_min > self.speed_max:
            raise ValueError(f"--speed-min {self.speed_min} is above --speed-max {self.speed_max}")

    @classmethod
    def _presets(cls) -> dict[str, dict[str, Any]]:
        return {
            "full": {},
            # What `make demo` trains on: half the beams, a quarter of the columns.
            "demo": {"beams": 32, "columns": 1024, "scans": 120, "max_range": 80.0, "hard_density": 6.0},
            # Small scans for tests: same field of view, fewer beams and columns.
            "tiny": {"beams": 16, "columns": 360, "scans": 20, "max_range": 60.0},
        }


# Real KITTI calibration of odometry sequences 00-02 (their calib.txt): P0..P3 are the
# rectified camera projections, Tr maps velodyne -> camera 0. The synthetic sequences
# reuse it so the pose convention is exercised with the real axis swap and offset.
KITTI_CALIB_00_02: dict[str, tuple[float, ...]] = {
    "P0": (7.188560000000e02, 0.0, 6.071928000000e02, 0.0, 0.0, 7.188560000000e02, 1.852157000000e02, 0.0,
           0.0, 0.0, 1.0, 0.0),
    "P1": (7.188560000000e02, 0.0, 6.071928000000e02, -3.861448000000e02, 0.0, 7.188560000000e02,
           1.852157000000e02, 0.0, 0.0, 0.0, 1.0, 0.0),
    "P2": (7.188560000000e02, 0.0, 6.071928000000e02, 4.538225000000e01, 0.0, 7.188560000000e02,
           1.852157000000e02, -1.130887000000e-01, 0.0, 0.0, 1.0, 3.779761000000e-03),
    "P3": (7.188560000000e02, 0.0, 6.071928000000e02, -3.372877000000e02, 0.0, 7.188560000000e02,
           1.852157000000e02, 2.369057000000e00, 0.0, 0.0, 1.0, 4.915215000000e-03),
    "Tr": (4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02,
           -7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02,
           9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01),
}


def kitti_calib_matrices() -> dict[str, np.ndarray]:
    """KITTI_CALIB_00_02 as (4, 4) matrices, as `kitti_io.read_calib` returns them."""
    out = {}
    for k, v in KITTI_CALIB_00_02.items():
        m = np.eye(4)
        m[:3, :] = np.array(v).reshape(3, 4)
        out[k] = m
    return out
