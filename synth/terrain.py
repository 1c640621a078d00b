"""The ground's relief: the road's grade and camber, kerbs, ditches and banks.

The ground height is a function of road coordinates (u along the road, d across it, left
positive; `world.road_to_world`), as a surveyor would draw a road:

    z(u, d) = grade(u) + cross(|d|, side, u)

- `grade(u)`: two long sinusoids per street (hills a few metres high over hundreds of
  metres; at most ~5 % on a country road, ~2 % in town);
- `cross`: on the road a camber falling `camber` per metre from the crown to the edge
  (2-2.5 %, what road design guides give for drainage); parking at the road edge's height;
  a kerb of `kerb` metres up to the sidewalk (0 where there is none); behind the sidewalk
  or the road edge a ditch of `ditch_depth` over `ditch_width` (country roads, highways),
  then a bank that rises or falls with a slope drawn per 50 m block and side (gardens,
  fields, cuttings and embankments), flattening out at `bank_cap` metres.

The ray caster (`raycast.py`, which holds every numba kernel of the ground so that its
compiled cache is never stale against them) evaluates it through `Profile`: the
quantities that depend on u only (grade, the centre line, the bank slopes, the parking
strip) tabulated along x (the road's u is x; `world.centre`) at `STEP` metres, everything
across the road analytic in d, so a height costs two table reads and a few comparisons.
The kerb is a true step: the ray caster brackets its face, and a return from it is
sidewalk (as SemanticKITTI labels kerbs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .raycast import GROUND_STEP as STEP
from .raycast import GROUND_WINDOW as WINDOW
from .raycast import ground_heights

BLOCK = 50.0  # metres of road over which a bank keeps its slope


@dataclass(frozen=True)
class Relief:
    """How a street's ground rises and falls (metres; slopes as rise over run)."""

    hills: float  # amplitude of the grade's main sinusoid
    wavelength: float  # its wavelength along the road
    camber: float  # fall per metre from the crown to the road edge
    kerb: float  # kerb height (the sidewalk's step up; 0: no kerb)
    ditch_depth: float
    ditch_width: float
    bank_slope: float  # banks' slopes are drawn in [-bank_slope, bank_slope]
    bank_cap: float  # a bank rises or falls at most this much

    @property
    def max_slope(self) -> float:
        """Steepest grade of `grade` (the main sinusoid plus a quarter-height one at 0.37 its wavelength)."""
        return 2 * math.pi * self.hills / self.wavelength * (1 + 0.25 / 0.37)


FLAT = Relief(0.0, 1000.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def phases(seed: int) -> tuple[float, float]:
    """The grade's two phases: a function of the world's seed."""
    r = np.random.default_rng([seed, 23])
    return float(r.uniform(0, 2 * np.pi)), float(r.uniform(0, 2 * np.pi))


def grade(u: np.ndarray, relief: Relief, seed: int) -> np.ndarray:
    """Height of the road's crown at road parameter u."""
    p1, p2 = phases(seed)
    k = 2 * np.pi / relief.wavelength
    u = np.asarray(u, np.float64)
    return relief.hills * (np.sin(k * u + p1) + 0.25 * np.sin(k / 0.37 * u + p2))


def bank_slopes(u: np.ndarray, relief: Relief, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bank slope at u on the left and on the right side: drawn per `BLOCK` and side,
    linear between block centres (no step in the slope along the road)."""
    u = np.asarray(u, np.float64)
    pos = u / BLOCK - 0.5
    lo = np.floor(pos).astype(np.int64)
    w = pos - lo
    out = []
    for side in (1, 2):
        a, b = _block_slope(lo, side, seed), _block_slope(lo + 1, side, seed)
        out.append(relief.bank_slope * (a + (b - a) * w))
    return out[0], out[1]


def _block_slope(block: np.ndarray, side: int, seed: int) -> np.ndarray:
    """A uniform number in [-1, 1] per (block, side, seed): a hash, so any stretch of road
    gets the same banks whichever scans ask."""
    h = (block * 2654435761 + side * 40503 + seed * 97 + 12345) % 1_000_003
    h = (h * 69069 + 1) % 1_000_003
    return h / 500_001.5 - 1.0


@dataclass(frozen=True)
class Section:
    """A street's cross-section: where each ground kind ends, from the centre line out."""

    road_half: float
    parking_outer: float
    sidewalk_outer: float


def _params(relief: Relief) -> np.ndarray:
    return np.array([relief.camber, relief.kerb, relief.ditch_depth, relief.ditch_width, relief.bank_cap])


class Profile:
    """The ground of one stretch of road, ready for the ray caster: tables along x
    (crown height, centre line y, the cosine of its heading, left and right bank slopes,
    parking strip or not, the highest ground within `WINDOW` metres) from `x0` every
    `STEP` metres, and the cross-section's numbers."""

    def __init__(self, x_min: float, x_max: float, sec: Section, relief: Relief, seed: int,
                 centre: Callable, parking: Callable) -> None:
        """`centre(x)` -> (x, y, heading) of the centre line; `parking(x)`: whether the
        parking strip is there (its kerb then stands at the strip's outer edge, else at
        the road's)."""
        self.x0 = float(x_min) - STEP
        x = self.x0 + STEP * np.arange(int(np.ceil((x_max - self.x0) / STEP)) + 3)
        _, cy, h = centre(x)
        left, right = bank_slopes(x, relief, seed)
        crown = grade(x, relief, seed)
        # the highest the ground gets within WINDOW metres (along x) of each row: the ray
        # caster strides over stretches its ray passes above
        w = round(WINDOW / STEP)
        padded = np.pad(crown, w, mode="edge")
        reach = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1).max(1)
        top = reach + relief.kerb + relief.bank_cap + 0.01
        self.table = np.stack([crown, cy, np.cos(h), left, right, np.asarray(parking(x), np.float64), top], 1)
        self.section = np.array([sec.road_half, sec.parking_outer, sec.sidewalk_outer])
        self.params = _params(relief)
        # the steepest the ground gets but at the kerb (a ditch's sides are the steepest
        # part), and its highest point: the ray caster's bounds
        ditch = math.pi * relief.ditch_depth / relief.ditch_width
        self.max_slope = relief.max_slope + max(relief.bank_slope, ditch) + 2 * relief.camber
        self.z_max = float(self.table[:, 0].max()) + relief.kerb + relief.bank_cap + 0.01

    def height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        out = np.empty(x.shape)
        ground_heights(x.ravel(), y.ravel(), self.x0, self.table, self.section, self.params, out.reshape(-1))
        return out
