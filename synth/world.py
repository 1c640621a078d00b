"""A procedurally built street world for the synthetic SemanticKITTI stand-in.

The world is a curved road with lanes, parking strips, sidewalks and terrain on ground
with relief (`terrain.py`: grade, camber, kerbs, ditches, banks), lined with buildings,
fences, trees, poles and signs, parked and moving vehicles, pedestrians and riders.
Every object is a handful of primitives (yaw-rotated boxes, vertical cylinders,
ellipsoids) in its own frame, standing on the ground where its anchor is; objects that
move follow the road at constant speed. The ray caster (`raycast.py`) intersects the
primitives and the relief, and labels the ground by its position relative to the road.

Each sequence is one street type (`STREETS`: residential, city, country road, highway,
as KITTI's drives are), with the objects such a street has. Object densities are per
metre of road, whatever the length of the drive, and were set so that a 00-10 split
matches SemanticKITTI's published class content (`bench/synth_realism.py` compares them;
README, "The synthetic stand-in").
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from m2skd.common.labels import RAW_BY_NAME

from . import terrain
from .shapes import (
    BOX,
    CYLINDER,
    ELLIPSOID,
    REMISSION,
    bicycle_parts,
    box,
    building_parts,
    car_parts,
    cyl,
    ell,
    motorcycle_parts,
    other_vehicle_parts,
    person_parts,
    rider_parts,
    tree_parts,
    truck_parts,
)
from .terrain import Relief, Section

__all__ = ["BOX", "CYLINDER", "ELLIPSOID", "REMISSION", "World", "build_world"]

LANE_WIDTH = 3.5
EGO_LANE = -LANE_WIDTH / 2  # right-hand traffic, ego drives in the inner lane towards +u
SENSOR_HEIGHT = 1.73  # KITTI's HDL-64E above the ground (Geiger et al., 2013)
FOUNDATION = 3.0  # metres a building reaches below its anchor's ground (it stands on a slope whole)

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
    street: StreetType
    seed: int  # fixes the ground pattern (parking stretches, driveways) and the relief
    profile: terrain.Profile  # the ground's height over the stretch of road built

    def ground_height(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.profile.height(x, y)

    def primitives_at(self, t: float) -> dict[str, np.ndarray]:
        """World-frame primitives at time t (s): centre, half, yaw, labels, remission."""
        u = self.u0 + self.speed * t
        ox, oy, h = road_to_world(u, self.d)
        oyaw = h + self.heading_offset
        c, s = np.cos(oyaw[self.obj]), np.sin(oyaw[self.obj])
        lx, ly = self.local[:, 0], self.local[:, 1]
        oz = self.profile.height(ox, oy)  # every object stands on the ground at its anchor
        centre_w = np.stack([ox[self.obj] + c * lx - s * ly, oy[self.obj] + s * lx + c * ly,
                             oz[self.obj] + self.local[:, 2]], 1)
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

    def ground_raw_ids(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Raw label of the ground at world x, y: road, lane marking, parking, sidewalk,
        other ground, terrain, by the distance from the centre line."""
        st = self.street
        _, cy, h = centre(x)
        d = np.abs((y - cy) * np.cos(h))
        out = np.full(x.shape, RAW_BY_NAME["terrain"], np.uint16)
        out[d < st.sidewalk_outer] = RAW_BY_NAME["sidewalk"]
        park = (d >= st.road_half) & (d < st.parking_outer) & parking_mask(x, self.seed, st.parking)
        out[park] = RAW_BY_NAME["parking"]
        if st.grass_strips > 0:  # version 7: some strips are grass (the cars parked on them stay)
            lawn = parking_mask(x, self.seed, st.parking) & grass_strip(x, (y - cy) * np.cos(h), self.seed, st)
            out[park & lawn] = RAW_BY_NAME["terrain"]
            if st.verge_hedges:  # version 8: and a grass verge behind them, up to the hedge
                out[lawn & (d >= st.parking_outer) & (d < st.parking_outer + VERGE_GRASS)] = RAW_BY_NAME["terrain"]
        out[d < st.road_half] = RAW_BY_NAME["road"]
        lanes = np.zeros(x.shape, bool)
        for k in range(1, st.lanes + 1):
            lanes |= np.abs(d - k * LANE_WIDTH) < 0.08
        dashed = lanes | ((d < 0.08) & ((x % 9.0) < 3.0))
        out[dashed] = RAW_BY_NAME["lane-marking"]
        # gravel driveways and patches of other ground behind the sidewalk or verge
        patch = (d >= st.sidewalk_outer) & (d < st.sidewalk_outer + 4.0) & (
            (np.floor(x / 23.0) * 7 + self.seed) % 9 == 0)
        out[patch] = RAW_BY_NAME["other-ground"]
        return out


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

    def __init__(self, rng: np.random.Generator, t_mid: float, tall_cars: float = 0.0) -> None:
        self.rng = rng
        self.t_mid = t_mid
        self.tall_cars = tall_cars
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
        for kind, loc, half, yaw, name, *rem in parts:  # a part may carry its own remission (glass)
            self.prims.append((kind, loc, half, yaw, RAW_BY_NAME[name], rem[0] if rem else REMISSION[name], oid))

    def car(self) -> list[tuple]:
        """A car's parts; a tall one (SUV, van) at the builder's share (version 2: none, and
        no draw for it, so its stream stays as it was)."""
        if self.tall_cars:
            return car_parts(self.rng, tall=self.rng.random() < self.tall_cars)
        return car_parts(self.rng)

    def build(self, street: StreetType, seed: int, x_min: float, x_max: float) -> World:
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
            street=street, seed=seed,
            profile=terrain.Profile(x_min, x_max, street.section, street.relief, seed, centre,
                                    lambda x: parking_mask(x, seed, street.parking)),
        )


# ---------------------------------------------------------------- street types


@dataclass(frozen=True)
class StreetType:
    """One kind of KITTI drive: cross-section and what stands along it (rates per metre of road)."""

    name: str
    lanes: int  # each way
    shoulder: float  # metres of road beyond the outer lane
    parking: float  # share of the road with a 2.5 m parking strip (and parked cars in it)
    sidewalk: float  # sidewalk width (0: none)
    building: float  # share of the frontage with buildings
    setback: tuple[float, float]  # buildings start this far behind the sidewalk (or verge)
    height: tuple[float, float]
    fence: float  # share of the frontage (without a building) with a fence or wall
    fence_setback: tuple[float, float]
    trees: float  # per metre and side
    bushes: float
    hedges: float
    forest: float  # share of the far field that is forest (dense crowns) rather than open terrain
    parked: float  # probability a parking slot holds a car
    traffic: float  # oncoming cars per metre
    guard_rail: bool  # highway: rails at the median and along the verge (fence)
    relief: Relief = terrain.FLAT
    convoy: float = 0.0  # version 3: cars per 100 m of each lane driven the ego's way
    beds: float = 0.0  # version 6: chance that a 4-14 m stretch of sidewalk has a shrub bed (kerb or behind it)
    grass_strips: float = 0.0  # version 7: share of a side's 40 m parking strips laid with grass, not asphalt
    verge_hedges: bool = False  # version 8: behind a grass strip, a grass verge and a tall hedge, not a sidewalk

    @property
    def section(self) -> Section:
        return Section(self.road_half, self.parking_outer, self.sidewalk_outer)

    @property
    def road_half(self) -> float:
        return self.lanes * LANE_WIDTH + self.shoulder

    @property
    def parking_outer(self) -> float:
        return self.road_half + (2.5 if self.parking > 0 else 0.0)

    @property
    def sidewalk_outer(self) -> float:
        return self.parking_outer + self.sidewalk


# Relief per street (terrain.py): hills (m) over a wavelength (m), camber, kerb, ditch depth
# and width, bank slope and cap. Town streets: gentle grades (~2 %), a 2 % camber, kerbs of
# 13-15 cm (typical kerb upstands); country roads and highways: steeper grades (~5 %),
# ditches beside the verge and banks of fields and cuttings.
RELIEF = {
    "residential": Relief(2.0, 450.0, 0.02, 0.13, 0.0, 1.0, 0.08, 1.5),
    "city": Relief(1.0, 400.0, 0.02, 0.15, 0.0, 1.0, 0.03, 0.6),
    "country": Relief(3.0, 550.0, 0.025, 0.0, 0.5, 2.0, 0.3, 3.0),
    "highway": Relief(3.5, 700.0, 0.025, 0.0, 0.6, 3.0, 0.25, 4.0),
}

STREETS = {
    "residential": StreetType("residential", 1, 0.7, 0.25, 3.5, 0.85, (2.0, 8.0), (6.0, 12.0), 0.35, (0.0, 0.6),
                              0.15, 0.2, 0.08, 0.35, 0.3, 0.015, False,
                              RELIEF["residential"]),
    "city": StreetType("city", 1, 0.5, 0.5, 5.0, 0.85, (0.0, 1.0), (9.0, 20.0), 0.4, (0.0, 0.3),
                       0.08, 0.05, 0.03, 0.0, 0.3, 0.025, False, RELIEF["city"]),
    "country": StreetType("country", 1, 0.6, 0.0, 0.0, 0.2, (8.0, 25.0), (4.0, 8.0), 0.3, (2.0, 6.0),
                          0.15, 0.3, 0.05, 0.65, 0.0, 0.01, False, RELIEF["country"]),
    "highway": StreetType("highway", 2, 1.5, 0.0, 0.0, 0.02, (20.0, 40.0), (5.0, 9.0), 0.4, (3.0, 6.0),
                          0.12, 0.2, 0.0, 0.5, 0.0, 0.03, True, RELIEF["highway"]),
}
# Version 3 (docs/synthetic.md, "Version 3"): the class mix retuned on world seeds 0-3 (never
# on the held-out seeds 1009, 2027, 3041): version 2 gave terrain 12-13 % (published 7.8),
# cars 2-3 % (4.3) and the hard classes 0.15 % on seed 7919 (0.51; 0.26-0.58 % on seeds
# 0-3); and traffic drives the ego's way.
STREETS_V3 = {name: replace(STREETS[name], **changes) for name, changes in {
    "residential": {"parking": 0.4, "sidewalk": 4.3, "fence": 0.28, "parked": 0.45, "convoy": 1.0},
    "city": {"parked": 0.55, "convoy": 1.5},
    "country": {"building": 0.45, "setback": (5.0, 15.0), "bushes": 0.4, "hedges": 0.15, "forest": 0.85,
                "convoy": 0.8},
    "highway": {"forest": 0.6, "convoy": 1.5},
}.items()}
# Version 6 (the default since 2026-12-05; docs/synthetic.md, "Version 6"): version 3 with
# low shrub beds along the sidewalk. The real scan 000750's vegetation under 1.3 m stands
# 4.7-9.6 m from the sensor, four fifths of it between the right sidewalk and the facades, a
# fifth of its points on tops seen from above; version 3's nearest stands 9 m off, all of it
# flanks (docs/realism/low_vegetation_v3.json). Country roads and highways have no sidewalk,
# and their bushes already stand near the verge.
STREETS_V6 = {name: replace(st, beds={"residential": 0.35, "city": 0.2}.get(name, 0.0))
              for name, st in STREETS_V3.items()}
# Version 7 (docs/synthetic.md, "Version 7"; judged by the yardstick and not adopted): version
# 6 with a quarter of the residential streets' parking strips laid with grass. The real scan
# 000750's near car stands at the road's edge with grass beside it and a hedge behind; the
# models find it once set into a synthetic street, and miss synthetic cars set into its
# street (bench/car_swap.py); no car of version 6's training drives has as much terrain
# within 6 m of it (none of 82). Parking (2.1-2.4 % on world seeds 0-3, published 1.5)
# gives the grass its points; nothing stands elsewhere than in version 6.
STREETS_V7 = {name: replace(st, grass_strips=0.25 if name == "residential" else 0.0) for name, st in STREETS_V6.items()}
# Version 8 (docs/synthetic.md, "Version 8"; judged by the yardstick and not adopted): on
# 12 % of the residential strips (a subset of
# version 7's grass blocks: 0.25 took world seed 0's terrain past its band), the strip is
# grass and so is the sidewalk's first VERGE_GRASS metres, then a hedge 1.4-2.4 m tall
# stands to the sidewalk's outer edge (the ground under it keeps the sidewalk's label:
# terrain there took seed 0 past the band too). The real scan 000750's near car stands at the
# road's edge, grass 3 m deep beside it, then a hedge 3 m deep and about 2.2 m tall along
# 14 m of it (its points at 4.4-7.4 m from the car's centre, across); deleting that
# vegetation lets every model find the car (bench/car_swap.py), and version 7's strip cars
# had the sidewalk there.
STREETS_V8 = {name: replace(st, verge_hedges=name == "residential", grass_strips=0.12 if name == "residential" else 0.0)
              for name, st in STREETS_V7.items()}
VERGE_GRASS = 2.5  # metres of grass between the kerb and the hedge (version 8)
# A real street's cars: 3 in 10 are SUVs, vans and MPVs (roof 1.55-1.9 m, version 3).
TALL_CARS = 0.3


def streets(version: int = 2) -> dict[str, StreetType]:
    """The street types of a generator version."""
    if version >= 8:  # (one line would pass 120 columns)
        return STREETS_V8
    return STREETS_V7 if version >= 7 else STREETS_V6 if version >= 6 else STREETS_V3 if version >= 3 else STREETS


# KITTI odometry's drives, as their sequences are known: 01 a highway, 03, 04, 09, 10
# country roads with fields and forest, the rest residential, 07 the densest. (KITTI's
# residential sequences are also its longest, 00, 02, 05 and 08, so residential streets
# carry most of its points.)
KITTI_STREETS = {"00": "residential", "01": "highway", "02": "residential", "03": "country", "04": "country",
                 "05": "residential", "06": "residential", "07": "city", "08": "residential",
                 "09": "country", "10": "country"}


def street_of(sequence: str, seed: int, world: str = "auto", version: int = 2) -> StreetType:
    """The street a sequence drives: `world` if given, KITTI's for 00-10, else drawn by seed."""
    table = streets(version)
    if world != "auto":
        return table[world]
    if sequence in KITTI_STREETS:
        return table[KITTI_STREETS[sequence]]
    names = sorted(table)
    return table[names[int(np.random.default_rng([seed, int(sequence), 11]).integers(len(names)))]]


# Hard-class objects per km of road at hard_density 1, set so that they make about 0.5 %
# of a 00-10 split's points with SemanticKITTI's mix (trucks and other vehicles most,
# motorcyclists least; docs/kitti.md, "Class content").
HARD_PER_KM = {"bicycle_rack": 1.5, "motorcycle": 1.3, "truck": 2.0, "other-vehicle": 0.7, "person": 2.0,
               "bicyclist": 0.45, "motorcyclist": 0.06}
# Version 3: 1.5-1.7x, as version 2's relief hid a third of them (0.66 % -> 0.43 %, seeds 0-3)
HARD_PER_KM_V3 = {"bicycle_rack": 2.4, "motorcycle": 2.0, "truck": 3.1, "other-vehicle": 1.1, "person": 3.1,
                  "bicyclist": 0.7, "motorcyclist": 0.1}


# ---------------------------------------------------------------- the world


def build_world(rng: np.random.Generator, u_min: float, u_max: float, t_mid: float = 0.0,
                seed: int = 0, street: StreetType | None = None, hard_density: float = 1.0, version: int = 2,
                ego_speed: float = 0.0) -> World:
    """Populate the road between u_min and u_max (metres along the road).

    Everything stands at a rate per metre of road, so a short drive is no more crowded
    than a long one. Moving objects are spread over the stretch at time t_mid (mid-drive),
    so they meet the ego vehicle during the sequence. `seed` fixes the ground pattern.
    `hard_density` multiplies the hard-class objects (1.0: SemanticKITTI-like rarity).
    `version` is the generator's (`SynthConfig.world_version`); from 3 on, cars drive the
    ego's way too, in convoy around it at `ego_speed`.
    """
    street = street or streets(version)["residential"]
    b = _Builder(rng, t_mid, tall_cars=TALL_CARS if version >= 3 else 0.0)
    for side in (-1.0, 1.0):
        _frontage(b, rng, street, side, u_min, u_max)
        _greenery(b, rng, street, side, u_min, u_max)
        _street_furniture(b, rng, street, side, u_min, u_max)
        _parked_cars(b, rng, street, side, u_min, u_max, seed)
    _hard_classes(b, rng, street, u_min, u_max, hard_density, HARD_PER_KM_V3 if version >= 3 else HARD_PER_KM)
    _traffic(b, rng, street, u_min, u_max, hard_density)
    if version >= 3:
        _convoy(b, rng, street, u_min, u_max, ego_speed)
    if version >= 6:  # their own stream, after every draw of version 3's: its objects stay as they were
        beds = np.random.default_rng([seed, 6])
        for side in (-1.0, 1.0):
            _shrub_beds(b, beds, street, side, u_min, u_max)
    if version >= 8:  # its own stream too: version 7's objects stay, the hedges come after them
        hedges = np.random.default_rng([seed, 8])
        for side in (-1.0, 1.0):
            _verge_hedges(b, hedges, street, side, u_min, u_max, seed)
    # the ground is known beyond the objects' stretch, as far as the sensor sees
    return b.build(street, seed, u_min - 150.0, u_max + 150.0)


def _poisson_u(rng: np.random.Generator, u_min: float, u_max: float, per_m: float) -> np.ndarray:
    return np.sort(rng.uniform(u_min, u_max, rng.poisson(max(per_m, 0.0) * (u_max - u_min))))


def _frontage(b: _Builder, rng, st: StreetType, side: float, u_min: float, u_max: float) -> None:
    """Building blocks, or fences and walls, behind the sidewalk (or verge)."""
    u = u_min
    while u < u_max:
        length = rng.uniform(10, 35)
        if rng.random() < st.building:
            depth = rng.uniform(8, 16)
            off = st.sidewalk_outer + rng.uniform(*st.setback)
            # its facade (the parts' -y) towards the road; founded below the ground: on a bank
            # the downhill side shows its base, never a gap
            b.add(u + length / 2, side * (off + depth / 2), building_parts(rng, length, depth, st.height, FOUNDATION),
                  heading=0.0 if side > 0 else np.pi)
            if st.setback[0] > 1.0 and rng.random() < st.fence:  # a front-garden fence or wall
                b.add(u + length / 2, side * (st.sidewalk_outer + rng.uniform(0.1, 0.5)),
                      [box(0, 0, 0, length, 0.15, rng.uniform(0.8, 1.8), "fence")])
        elif rng.random() < st.fence:
            b.add(u + length / 2, side * (st.sidewalk_outer + rng.uniform(*st.fence_setback)),
                  [box(0, 0, 0, length, 0.12, rng.uniform(1.0, 2.2), "fence")])
        u += length + rng.uniform(0.5, 6)
    if st.guard_rail:  # the verge rail, and (one side only) the median rail
        for uu in np.arange(u_min, u_max, 40.0):
            b.add(uu + 20.0, side * (st.road_half + 0.5), [box(0, 0, 0.4, 40.0, 0.1, 0.45, "fence")])
        if side > 0:
            for uu in np.arange(u_min, u_max, 40.0):
                b.add(uu + 20.0, 0.0, [box(0, 0, 0.3, 40.0, 0.3, 0.8, "fence")])


def _greenery(b: _Builder, rng, st: StreetType, side: float, u_min: float, u_max: float) -> None:
    """Trees at the kerb and behind it, bushes, hedges, and forest belts in the far field."""
    near = st.sidewalk_outer
    for uu in _poisson_u(rng, u_min, u_max, st.trees):
        dd = side * (rng.uniform(near - 1.2, near - 0.3) if st.sidewalk and rng.random() < 0.4
                     else near + rng.uniform(2.0, 25.0))
        b.add(uu, dd, tree_parts(rng, rng.uniform(1.8, 3.5), rng.uniform(1.8, 3.6)))
    for uu in _poisson_u(rng, u_min, u_max, st.bushes):
        ry = rng.uniform(1.0, 2.5)  # the bush's half depth: it stands clear of the road
        b.add(uu, side * (near + ry + rng.uniform(0.5, 25.0)),
              [ell(0, 0, 0.3, rng.uniform(1.0, 4.0), ry, rng.uniform(0.8, 1.8), "vegetation")])
    for uu in _poisson_u(rng, u_min, u_max, st.hedges):
        b.add(uu, side * (near + rng.uniform(0.3, 1.1)),
              [ell(0, 0, 0.5, rng.uniform(2.5, 7.0), rng.uniform(0.5, 0.9), rng.uniform(0.7, 1.3), "vegetation")])
    # forest belts: 40 m blocks of dense crowns a few metres behind the verge
    for u0 in np.arange(u_min, u_max, 40.0):
        if rng.random() < st.forest:
            start = near + rng.uniform(3.0, 10.0)
            for uu in rng.uniform(u0, u0 + 40.0, 10):
                r = rng.uniform(2.0, 4.0)
                b.add(uu, side * (start + r + rng.uniform(0.0, 15.0)),
                      [cyl(0, 0, 0, 0.15, 1.8, "trunk"), ell(0, 0, 1.2 + r, r, r, r * 1.1, "vegetation")])


def _shrub_beds(b: _Builder, rng, st: StreetType, side: float, u_min: float, u_max: float) -> None:
    """Version 6: beds of low shrubs, cut to 0.5-1.2 m, in stretches along the sidewalk:
    three in five on a planted strip at the kerb (from 0.2 m past it, 1-1.8 m deep), the
    rest in the front gardens just behind the sidewalk. A bed is a row of flattened,
    overlapping lumps, each its own object so that it stands on the ground under it (a bed
    follows the grade), and its top is seen from above by a sensor SENSOR_HEIGHT up."""
    if st.beds <= 0 or st.sidewalk <= 0:
        return
    u = u_min
    while u < u_max:
        length = rng.uniform(4.0, 14.0)
        if rng.random() < st.beds:
            half_depth = rng.uniform(0.5, 0.9)
            inner = st.parking_outer + 0.2 if rng.random() < 0.6 else st.sidewalk_outer + rng.uniform(0.0, 1.0)
            top = rng.uniform(0.5, 1.2)
            _lump_row(b, rng, side, u, u + length, inner, half_depth, top, lambda: rng.uniform(0.3, 0.55), (0.6, 1.0))
        u += length + rng.uniform(1.0, 6.0)


def _verge_hedges(b: _Builder, rng, st: StreetType, side: float, u_min: float, u_max: float, seed: int) -> None:
    """Version 8: on each block whose parking strip is grass (`grass_strip`), a hedge from
    VERGE_GRASS past the kerb to the sidewalk's outer edge, 1.4-2.4 m tall, the whole block
    long: a row of overlapping lumps, each its own object so that the hedge follows the
    grade, as a shrub bed does. The ground before it is grass, under it sidewalk (`ground_raw_ids`)."""
    if not st.verge_hedges:
        return
    inner = st.parking_outer + VERGE_GRASS
    half_depth = max(st.sidewalk_outer - inner, 0.6) / 2
    for u0 in np.arange(np.floor(u_min / 40.0) * 40.0, u_max, 40.0):
        if not (parking_mask(u0, seed, st.parking) and grass_strip(u0, side, seed, st)):
            continue
        top = rng.uniform(1.4, 2.4)
        _lump_row(b, rng, side, u0, u0 + 40.0, inner, half_depth, top, lambda t=top: t / 2 * rng.uniform(0.9, 1.0),
                  (0.7, 1.1))


def _lump_row(b: _Builder, rng, side: float, u_start: float, u_end: float, inner: float, half_depth: float,
              top: float, draw_rz, rx: tuple[float, float]) -> None:
    """A row of flattened, overlapping vegetation lumps (a shrub bed, a hedge), each its own
    object so that the row follows the grade; draws in the order the beds of version 6 did."""
    for uu in np.arange(u_start, u_end, rng.uniform(0.8, 1.2)):
        rz = draw_rz()
        b.add(uu + rng.normal(0, 0.15), side * (inner + half_depth + rng.normal(0, 0.1)),
              [ell(0, 0, top + rng.normal(0, 0.08) - rz, rng.uniform(*rx),
                   half_depth * rng.uniform(0.85, 1.05), rz, "vegetation")])


def _street_furniture(b: _Builder, rng, st: StreetType, side: float, u_min: float, u_max: float) -> None:
    kerb = st.parking_outer + 0.3
    for uu in _poisson_u(rng, u_min, u_max, 1 / 28):
        b.add(uu, side * (kerb + rng.uniform(0, 0.4)), [cyl(0, 0, 0, rng.uniform(0.07, 0.14), rng.uniform(4, 8),
                                                              "pole")])
    for uu in _poisson_u(rng, u_min, u_max, 1 / 60):
        b.add(uu, side * (kerb + rng.uniform(0, 0.4)), [cyl(0, 0, 0, 0.05, 2.6, "pole"),
                                                         box(0, 0, 2.1, 0.05, 0.65, 0.65, "traffic-sign")],
              heading=np.pi / 2)
    # street furniture labelled other-structure / other-object (ignored in training)
    for uu in _poisson_u(rng, u_min, u_max, 1 / 40):
        name = "other-structure" if rng.random() < 0.5 else "other-object"
        b.add(uu, side * (kerb + rng.uniform(0.2, 2.0)),
              [box(0, 0, 0, rng.uniform(0.4, 2), rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.5), name)])


def _parked_cars(b: _Builder, rng, st: StreetType, side: float, u_min: float, u_max: float, seed: int) -> None:
    """Rows of parked cars in the parking strips (streets that have them)."""
    if st.parking <= 0:
        return
    for uu in np.arange(u_min, u_max, 6.2):
        if rng.random() < st.parked and parking_mask(uu, seed, st.parking):
            b.add(uu + rng.normal(0, 0.4), side * (st.road_half + rng.uniform(1.1, 1.5)), b.car(),
                  heading=rng.normal(0, 0.03), thing=True)


def _hard_classes(b: _Builder, rng, st: StreetType, u_min: float, u_max: float, density: float,
                  per_km: dict[str, float]) -> None:
    """The hard classes, rare and small, at a rate per metre of road."""
    rate = {k: density * v / 1000.0 for k, v in per_km.items()}
    side_walk = st.sidewalk_outer - max(st.sidewalk, 1.5) / 2  # where people stand: sidewalk or verge
    for uu in _poisson_u(rng, u_min, u_max, rate["bicycle_rack"]):
        side = rng.choice([-1.0, 1.0])
        for k in range(rng.integers(1, 4)):
            b.add(uu + 0.7 * k, side * (st.sidewalk_outer + rng.uniform(-0.8, 1.0)), bicycle_parts(rng),
                  heading=np.pi / 2 + rng.normal(0, 0.1), thing=True)
    for uu in _poisson_u(rng, u_min, u_max, rate["motorcycle"]):
        b.add(uu, rng.choice([-1.0, 1.0]) * (st.road_half + rng.uniform(0.5, 1.5)), motorcycle_parts(rng),
              heading=rng.normal(0, 0.1), thing=True)
    # big parked vehicles stand in yards and lay-bys behind the kerb, partly hidden
    for kind, parts in (("truck", truck_parts), ("other-vehicle", other_vehicle_parts)):
        for uu in _poisson_u(rng, u_min, u_max, rate[kind]):
            b.add(uu, rng.choice([-1.0, 1.0]) * (st.sidewalk_outer + rng.uniform(2.0, 10.0)), parts(rng),
                  heading=rng.uniform(-0.5, 0.5), thing=True)
    for uu in _poisson_u(rng, u_min, u_max, rate["person"]):  # standing or walking
        side = rng.choice([-1.0, 1.0])
        speed = rng.choice([0.0, rng.uniform(0.8, 1.6) * rng.choice([-1, 1])])
        b.add(uu, side * (side_walk + rng.uniform(-0.5, 0.5)), person_parts(rng, walking=0.5 if speed else 0.0),
              speed=speed,
              heading=0.0 if speed >= 0 else np.pi, thing=True)
    for kind, parts, lo, hi in (("bicyclist", bicycle_parts, 3, 6), ("motorcyclist", motorcycle_parts, 7, 12)):
        for uu in _poisson_u(rng, u_min, u_max, rate[kind]):
            side = rng.choice([-1.0, 1.0])
            b.add(uu, side * (st.road_half - 0.5), rider_parts(rng, parts, kind), speed=side * -rng.uniform(lo, hi),
                  heading=0.0 if side < 0 else np.pi, thing=True)


def _traffic(b: _Builder, rng, st: StreetType, u_min: float, u_max: float, density: float) -> None:
    """Oncoming cars, and now and then an oncoming truck or bus (a hard class too)."""
    for uu in _poisson_u(rng, u_min, u_max, st.traffic):
        b.add(uu, LANE_WIDTH / 2 + rng.normal(0, 0.15), b.car(), speed=-rng.uniform(8, 14),
              heading=np.pi, thing=True)
    for kind, parts in (("truck", truck_parts), ("other-vehicle", other_vehicle_parts)):
        # passing close, one fills scans: a tenth of the parked rate
        for uu in _poisson_u(rng, u_min, u_max, density * HARD_PER_KM[kind] / 10000.0):
            b.add(uu, LANE_WIDTH / 2, parts(rng), speed=-rng.uniform(10, 14), heading=np.pi, thing=True)


def _convoy(b: _Builder, rng, st: StreetType, u_min: float, u_max: float, ego_speed: float) -> None:
    """Version 3: cars driving the ego's way. In its lane they keep a gap ahead of and
    behind it (one lane speed within 5 % of the ego's, so the gap changes by at most
    CONVOY_SLACK over the drive); on roads of two lanes each way the outer lane passes it.
    The real scan 000750 has its nearest car 21 m ahead in its lane, seen from behind;
    version 2's only moving cars came the other way."""
    mean_gap = 100.0 / st.convoy if st.convoy > 0 else 0.0
    if not mean_gap:
        return
    ego_at = ego_speed * b.t_mid  # where the ego is at mid-drive (it starts at u = 0)
    lane_speed = ego_speed * rng.uniform(0.95, 1.05)
    for direction in (1.0, -1.0):  # ahead of the ego, then behind it
        u = ego_at + direction * (CONVOY_GAP + CONVOY_SLACK)
        while u_min < (u := u + direction * rng.exponential(mean_gap)) < u_max:
            b.add(u, EGO_LANE + rng.normal(0, 0.15), b.car(), speed=lane_speed, thing=True)
            u += direction * CONVOY_GAP
    if st.lanes >= 2:
        fast = ego_speed * rng.uniform(1.1, 1.3)
        for uu in np.arange(u_min, u_max, CONVOY_GAP)[::-1]:
            if rng.random() < CONVOY_GAP / mean_gap:
                b.add(uu, EGO_LANE - LANE_WIDTH + rng.normal(0, 0.15), b.car(), speed=fast, thing=True)


# Convoy cars keep at least CONVOY_GAP metres (a car's length and a second at town speed)
# between them; CONVOY_SLACK covers the lane's drift from the ego (5 % of 10 m/s over the
# half of a 200-scan drive).
CONVOY_GAP, CONVOY_SLACK = 10.0, 5.0


# ---------------------------------------------------------------- ground labels


def parking_mask(u: np.ndarray, seed: int, share: float = 4 / 7) -> np.ndarray:
    """Parking strips come in 40 m stretches, on or off, a fixed pattern per world."""
    block = np.floor(np.asarray(u) / 40.0).astype(np.int64)
    return ((block * 2654435761 + seed * 97) % 1000) < 1000 * share


def grass_strip(u: np.ndarray, across: np.ndarray, seed: int, st: StreetType) -> np.ndarray:
    """Version 7: whether the parking strip at road parameter u on the side of `across` (the
    lateral offset, > 0 left) is laid with grass: `st.grass_strips` of the 40 m blocks of a
    side, a fixed pattern per world like the strips themselves (`parking_mask`)."""
    block = np.floor(np.asarray(u, np.float64) / 40.0).astype(np.int64)
    h = (block * 2246822519 + (np.asarray(across) > 0) * 3266489917 + seed * 668265263) % 1_000_003
    return (h * 69069 + 7) % 1_000_003 < 1_000_003 * st.grass_strips
