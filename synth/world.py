"""A procedurally built street world for the synthetic SemanticKITTI stand-in.

The world is a curved road with lanes, parking strips, sidewalks and terrain on the
ground plane z = 0, lined with buildings, fences, trees, poles and signs, parked and
moving vehicles, pedestrians and riders. Every object is a handful of primitives
(yaw-rotated boxes, vertical cylinders, ellipsoids) in its own frame; objects that move
follow the road at constant speed. The ray caster (`raycast.py`) intersects the
primitives and labels the ground by its position relative to the road.

Class sizes and frequencies are chosen so a default scan resembles a real one
(`bench/synth_realism.py` compares them with `shared/data/real/`): road, building,
vegetation and terrain dominate; the hard classes are rare and small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2skd.common.labels import RAW_BY_NAME

BOX, CYLINDER, ELLIPSOID = 0, 1, 2

# Road cross-section, metres from the centre line (left positive).
LANE_WIDTH = 3.5
ROAD_HALF = 4.2  # one lane each way plus a 0.7 m shoulder
PARKING_OUTER = 6.7
SIDEWALK_OUTER = 9.5
EGO_LANE = -LANE_WIDTH / 2  # right-hand traffic, ego drives towards +u
SENSOR_HEIGHT = 1.73  # KITTI's HDL-64E above the ground (Geiger et al., 2013)

# Remission base value per raw id (KITTI remission lies in 0..1); the ray caster
# scales it by the incidence angle and adds noise.
REMISSION = {
    "road": 0.3, "lane-marking": 0.7, "parking": 0.32, "sidewalk": 0.36, "other-ground": 0.34,
    "terrain": 0.42, "building": 0.36, "fence": 0.33, "vegetation": 0.42, "trunk": 0.34,
    "pole": 0.38, "traffic-sign": 0.9, "car": 0.2, "truck": 0.25, "other-vehicle": 0.25,
    "bicycle": 0.28, "motorcycle": 0.25, "person": 0.32, "bicyclist": 0.32, "motorcyclist": 0.28,
    "other-structure": 0.33, "other-object": 0.38,
}

# Road shape: y = AMP * sin(K * x), gentle enough that x approximates arc length.
AMP = 12.0
K = 2 * np.pi / 500.0


def centre(u: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line point (x, y) and heading at road parameter u."""
    u = np.asarray(u, dtype=np.float64)
    return u, AMP * np.sin(K * u), np.arctan(AMP * K * np.cos(K * u))


def road_to_world(u: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u along the road, d lateral, left positive) -> world x, y and the road heading."""
    x, y, h = centre(u)
    return x - np.asarray(d) * np.sin(h), y + np.asarray(d) * np.cos(h), h


@dataclass
class World:
    """Primitives in object frames plus each object's motion."""

    # per primitive
    kind: np.ndarray  # int8
    local: np.ndarray  # (P, 3) centre in the object frame
    half: np.ndarray  # (P, 3) half sizes (cylinder: radius, -, half height)
    yaw: np.ndarray  # (P,) yaw in the object frame
    raw: np.ndarray  # (P,) raw semantic id (static id; moving objects get +offset)
    remission: np.ndarray  # (P,)
    obj: np.ndarray  # (P,) object index
    # per object
    u0: np.ndarray  # road parameter at t = 0
    d: np.ndarray  # lateral offset
    speed: np.ndarray  # m/s along the road (signed: negative drives towards -u)
    instance: np.ndarray  # uint16 instance id (0 for stuff)
    heading_offset: np.ndarray  # object yaw relative to the road heading

    def primitives_at(self, t: float) -> dict[str, np.ndarray]:
        """World-frame primitives at time t (s): centre, half, yaw, labels, remission."""
        u = self.u0 + self.speed * t
        ox, oy, h = road_to_world(u, self.d)
        oyaw = h + self.heading_offset
        c, s = np.cos(oyaw[self.obj]), np.sin(oyaw[self.obj])
        lx, ly = self.local[:, 0], self.local[:, 1]
        centre_w = np.stack([ox[self.obj] + c * lx - s * ly, oy[self.obj] + s * lx + c * ly, self.local[:, 2]], 1)
        moving = self.speed[self.obj] != 0
        return {
            "kind": self.kind,
            "centre": centre_w,
            "half": self.half,
            "yaw": self.yaw + oyaw[self.obj],
            "raw": np.where(moving, _moving_id(self.raw), self.raw).astype(np.uint16),
            "instance": self.instance[self.obj],
            "remission": self.remission,
        }


_MOVING = {
    "car": "moving-car", "bicyclist": "moving-bicyclist", "person": "moving-person",
    "motorcyclist": "moving-motorcyclist", "truck": "moving-truck", "other-vehicle": "moving-other-vehicle",
}
_MOVING_LUT = np.arange(1 << 16, dtype=np.uint16)
for _static, _moving in _MOVING.items():
    _MOVING_LUT[RAW_BY_NAME[_static]] = RAW_BY_NAME[_moving]


def _moving_id(raw: np.ndarray) -> np.ndarray:
    return _MOVING_LUT[raw]


class _Builder:
    """Collects objects as lists, then packs them into a World."""

    def __init__(self, rng: np.random.Generator, t_mid: float) -> None:
        self.rng = rng
        self.t_mid = t_mid
        self.prims: list[tuple] = []
        self.objs: list[tuple] = []
        self.next_instance = 1

    def add(self, u: float, d: float, parts: list[tuple], speed: float = 0.0,
            heading: float = 0.0, thing: bool = False) -> None:
        """parts: (kind, (lx, ly, lz), (hx, hy, hz), yaw, class name)."""
        inst = 0
        if thing:
            inst = self.next_instance
            self.next_instance += 1
        oid = len(self.objs)
        # moving objects are placed where they should be halfway through the drive
        self.objs.append((u - speed * self.t_mid, d, speed, inst, heading))
        for kind, loc, half, yaw, name in parts:
            self.prims.append((kind, loc, half, yaw, RAW_BY_NAME[name], REMISSION[name], oid))

    def build(self) -> World:
        p = self.prims
        o = self.objs
        return World(
            kind=np.array([q[0] for q in p], np.int8),
            local=np.array([q[1] for q in p], np.float64).reshape(-1, 3),
            half=np.array([q[2] for q in p], np.float64).reshape(-1, 3),
            yaw=np.array([q[3] for q in p], np.float64),
            raw=np.array([q[4] for q in p], np.uint16),
            remission=np.array([q[5] for q in p], np.float64),
            obj=np.array([q[6] for q in p], np.int64),
            u0=np.array([q[0] for q in o], np.float64),
            d=np.array([q[1] for q in o], np.float64),
            speed=np.array([q[2] for q in o], np.float64),
            instance=np.array([q[3] for q in o], np.uint16),
            heading_offset=np.array([q[4] for q in o], np.float64),
        )


# ---------------------------------------------------------------- object templates


def _box(x, y, z0, lx, ly, lz, name, yaw=0.0):
    """Box standing on height z0 with full sizes lx, ly, lz."""
    return (BOX, (x, y, z0 + lz / 2), (lx / 2, ly / 2, lz / 2), yaw, name)


def _cyl(x, y, z0, r, h, name):
    return (CYLINDER, (x, y, z0 + h / 2), (r, r, h / 2), 0.0, name)


def _ell(x, y, zc, rx, ry, rz, name):
    return (ELLIPSOID, (x, y, zc), (rx, ry, rz), 0.0, name)


def car_parts(rng, name="car"):
    length, width = rng.uniform(3.9, 4.8), rng.uniform(1.7, 1.9)
    return [
        _box(0, 0, 0.25, length, width, rng.uniform(0.75, 0.9), name),
        _box(-0.2, 0, 1.05, length * rng.uniform(0.45, 0.6), width * 0.9, rng.uniform(0.4, 0.55), name),
    ]


def truck_parts(rng, name="truck"):
    length = rng.uniform(6.5, 9.0)
    return [
        _box(length / 2 - 1.0, 0, 0.3, 2.0, 2.4, 2.6, name),
        _box(-0.6, 0, 0.5, length - 2.4, 2.5, rng.uniform(2.6, 3.4), name),
    ]


def other_vehicle_parts(rng, name="other-vehicle"):
    # buses, trailers, caravans: long tall boxes
    return [_box(0, 0, 0.35, rng.uniform(8.0, 12.0), 2.5, rng.uniform(2.6, 3.1), name)]


def bicycle_parts(rng, name="bicycle"):
    return [
        _box(0, 0, 0.05, 1.7, 0.08, 0.65, name),
        _box(0.45, 0, 0.7, 0.12, 0.55, 0.3, name),  # handlebar
    ]


def motorcycle_parts(rng, name="motorcycle"):
    return [_box(0, 0, 0.1, 2.0, 0.45, 0.75, name), _box(0.3, 0, 0.85, 0.7, 0.7, 0.35, name)]


def person_parts(rng, name="person"):
    h = rng.uniform(1.55, 1.9)
    body = h - 0.25
    return [_cyl(0, 0, 0.0, rng.uniform(0.18, 0.24), body, name), _ell(0, 0, body + 0.12, 0.11, 0.11, 0.13, name)]


def rider_parts(rng, vehicle, name):
    parts = [(k, loc, half, yaw, name) for k, loc, half, yaw, _ in vehicle(rng)]
    return [*parts, _cyl(-0.1, 0, 0.85, 0.2, 0.75, name), _ell(-0.05, 0, 1.75, 0.12, 0.12, 0.14, name)]


# ---------------------------------------------------------------- the world


def build_world(rng: np.random.Generator, u_min: float, u_max: float, t_mid: float = 0.0,
                seed: int = 0, core: tuple[float, float] | None = None, hard_density: float = 1.0) -> World:
    """Populate the road between u_min and u_max (metres along the road).

    Moving objects are spread over that stretch at time t_mid (mid-drive), so they meet
    the ego vehicle during the sequence. `seed` fixes the parking-strip pattern, which
    `ground_raw_ids` must see with the same value. The hard classes and moving traffic
    are placed within `core` (default: the whole stretch), the part the sensor passes, so
    every sequence sees them. `hard_density` multiplies how many hard-class objects stand
    along the road (1.0: SemanticKITTI-like rarity; see SynthConfig.hard_density).
    """
    b = _Builder(rng, t_mid)
    span = u_max - u_min

    c_min, c_max = core if core is not None else (u_min, u_max)
    c_span = c_max - c_min
    h_span = c_span * hard_density

    def uniform_u(n):
        return np.sort(rng.uniform(u_min, u_max, int(n)))

    def uniform_core(n):
        return np.sort(rng.uniform(c_min, c_max, int(n)))

    for side in (-1.0, 1.0):
        # Building blocks and fences behind the sidewalk.
        u = u_min
        while u < u_max:
            length = rng.uniform(10, 35)
            if rng.random() < 0.55:
                depth, height = rng.uniform(8, 16), rng.uniform(5, 16)
                off = rng.uniform(13.0, 26.0)
                b.add(u + length / 2, side * (off + depth / 2), [_box(0, 0, 0, length, depth, height, "building")])
            elif rng.random() < 0.6:
                b.add(u + length / 2, side * rng.uniform(9.8, 11.0),
                      [_box(0, 0, 0, length, 0.12, rng.uniform(1.0, 2.2), "fence")])
            u += length + rng.uniform(1, 12)
        # Trees on the sidewalk edge and in the terrain behind it.
        for uu in uniform_u(span / 5):
            dd = side * rng.choice([rng.uniform(8.2, 9.3), rng.uniform(11.5, 30)])
            th, r = rng.uniform(1.8, 3.5), rng.uniform(1.8, 3.6)
            b.add(uu, dd, [_cyl(0, 0, 0, rng.uniform(0.12, 0.3), th + r * 0.5, "trunk"),
                           _ell(0, 0, th + r * 0.8, r, r, r * rng.uniform(0.7, 1.0), "vegetation")])
        # Bushes, and hedges along the sidewalk.
        for uu in uniform_u(span / 3):
            dd = side * rng.uniform(10.5, 35)
            b.add(uu, dd, [_ell(0, 0, 0.3, rng.uniform(1.0, 4.0), rng.uniform(1.0, 2.5), rng.uniform(0.8, 1.8),
                                "vegetation")])
        for uu in uniform_u(span / 10):
            b.add(uu, side * rng.uniform(9.8, 10.6), [_ell(0, 0, 0.5, rng.uniform(2.5, 7.0), rng.uniform(0.5, 0.9),
                                                            rng.uniform(0.7, 1.3), "vegetation")])
        # Poles and traffic signs at the kerb.
        for uu in uniform_u(span / 28):
            h = rng.uniform(4, 8)
            b.add(uu, side * rng.uniform(6.9, 7.3), [_cyl(0, 0, 0, rng.uniform(0.07, 0.14), h, "pole")])
        for uu in uniform_u(span / 60):
            b.add(uu, side * rng.uniform(6.9, 7.3), [_cyl(0, 0, 0, 0.05, 2.6, "pole"),
                                                      _box(0, 0, 2.1, 0.05, 0.65, 0.65, "traffic-sign")],
                  heading=np.pi / 2)
        # Parked cars in the parking strips.
        for uu in np.arange(u_min, u_max, 6.2):
            if rng.random() < 0.15 and parking_mask(uu, seed):
                b.add(uu + rng.normal(0, 0.4), side * rng.uniform(5.3, 5.7), car_parts(rng),
                      heading=rng.normal(0, 0.03), thing=True)
        # Street furniture labelled other-structure / other-object (ignored in training).
        for uu in uniform_u(span / 40):
            name = "other-structure" if rng.random() < 0.5 else "other-object"
            b.add(uu, side * rng.uniform(7.0, 9.0), [_box(0, 0, 0, rng.uniform(0.4, 2), rng.uniform(0.4, 1.0),
                                                             rng.uniform(0.5, 1.5), name)])

    # The hard classes: rare and small, as in SemanticKITTI.
    for uu in uniform_core(max(2, h_span / 120)):  # bicycle racks
        side = rng.choice([-1.0, 1.0])
        for k in range(rng.integers(1, 4)):
            b.add(uu + 0.7 * k, side * rng.uniform(7.6, 9.0), bicycle_parts(rng),
                  heading=np.pi / 2 + rng.normal(0, 0.1), thing=True)
    for uu in uniform_core(max(2, h_span / 200)):
        b.add(uu, rng.choice([-1.0, 1.0]) * rng.uniform(5.2, 5.8), motorcycle_parts(rng),
              heading=rng.normal(0, 0.1), thing=True)
    # big parked vehicles stand in yards behind the sidewalk, partly hidden, so they
    # don't fill whole scans (real SemanticKITTI: truck ~0.2% of points)
    for uu in uniform_core(max(1, h_span / 500)):
        b.add(uu, rng.choice([-1.0, 1.0]) * rng.uniform(12, 20), truck_parts(rng),
              heading=rng.uniform(-0.5, 0.5), thing=True)
    for uu in uniform_core(max(1, h_span / 600)):
        b.add(uu, rng.choice([-1.0, 1.0]) * rng.uniform(12, 20), other_vehicle_parts(rng),
              heading=rng.uniform(-0.5, 0.5), thing=True)
    for uu in uniform_core(max(3, h_span / 60)):  # pedestrians, standing or walking
        side = rng.choice([-1.0, 1.0])
        speed = rng.choice([0.0, rng.uniform(0.8, 1.6) * rng.choice([-1, 1])])
        b.add(uu, side * rng.uniform(7.0, 9.3), person_parts(rng), speed=speed,
              heading=0.0 if speed >= 0 else np.pi, thing=True)

    # Moving traffic; its u0 is spread so it meets the ego vehicle during the sequence.
    for uu in uniform_core(c_span / 50):  # oncoming cars
        b.add(uu, LANE_WIDTH / 2 + rng.normal(0, 0.15), car_parts(rng), speed=-rng.uniform(8, 14),
              heading=np.pi, thing=True)
    # big oncoming vehicles in about half the sequences (they fill a scan as they pass)
    for uu in uniform_core(rng.random() < 0.35):
        b.add(uu, LANE_WIDTH / 2, truck_parts(rng), speed=-rng.uniform(10, 14), heading=np.pi, thing=True)
    for uu in uniform_core(rng.random() < 0.35):
        b.add(uu, LANE_WIDTH / 2, other_vehicle_parts(rng), speed=-rng.uniform(10, 14), heading=np.pi,
              thing=True)
    for uu in uniform_core(max(2, h_span / 150)):
        side = rng.choice([-1.0, 1.0])
        b.add(uu, side * 3.7, rider_parts(rng, bicycle_parts, "bicyclist"), speed=side * -rng.uniform(3, 6),
              heading=0.0 if side < 0 else np.pi, thing=True)
    for uu in uniform_core(max(2, h_span / 400)):
        side = rng.choice([-1.0, 1.0])
        b.add(uu, side * 3.5, rider_parts(rng, motorcycle_parts, "motorcyclist"), speed=side * -rng.uniform(7, 12),
              heading=0.0 if side < 0 else np.pi, thing=True)
    return b.build()


# ---------------------------------------------------------------- ground labels


def parking_mask(u: np.ndarray, seed: int) -> np.ndarray:
    """Parking strips come in 40 m stretches, on or off, a fixed pattern per world."""
    block = np.floor(np.asarray(u) / 40.0).astype(np.int64)
    return ((block * 2654435761 + seed * 97) % 7) < 4


def ground_raw_ids(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Raw label of the ground at world x, y: road, lane marking, parking, sidewalk, terrain."""
    _, cy, h = centre(x)
    d = np.abs((y - cy) * np.cos(h))
    out = np.full(x.shape, RAW_BY_NAME["terrain"], np.uint16)
    out[d < SIDEWALK_OUTER] = RAW_BY_NAME["sidewalk"]
    park = (d >= ROAD_HALF) & (d < PARKING_OUTER) & parking_mask(x, seed)
    out[park] = RAW_BY_NAME["parking"]
    out[d < ROAD_HALF] = RAW_BY_NAME["road"]
    dashed = (np.abs(d - LANE_WIDTH) < 0.08) | ((d < 0.08) & ((x % 9.0) < 3.0))
    out[dashed] = RAW_BY_NAME["lane-marking"]
    # Gravel driveways and patches of other ground behind the sidewalk.
    patch = (d >= SIDEWALK_OUTER) & (d < 14.0) & ((np.floor(x / 23.0) * 7 + seed) % 5 == 0)
    out[patch] = RAW_BY_NAME["other-ground"]
    return out
