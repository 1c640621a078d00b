"""What the world's objects look like to a LiDAR: each a handful of primitives (yaw-rotated
boxes, vertical cylinders, ellipsoids) in its own frame (x forward, y left, z up from the
ground at its anchor), and the materials' remission.

The shapes follow what a 64-beam sensor returns from the real thing rather than a CAD
model: a car is mostly side panels, bonnet and roof, its glass loses most returns and
the wheel arches leave gaps above dark tyres; a truck is a cab and a box on a chassis one
can see under; a building is a row of blocks of their own heights and set-backs with
ribbons of windows that return nothing; a person has legs, arms and a head.
"""

from __future__ import annotations

import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2

# Remission base value per raw id (KITTI remission lies in 0..1); the ray caster
# scales it by the incidence angle and adds noise.
REMISSION = {
    "road": 0.3, "lane-marking": 0.7, "parking": 0.32, "sidewalk": 0.36, "other-ground": 0.34,
    "terrain": 0.42, "building": 0.36, "fence": 0.33, "vegetation": 0.42, "trunk": 0.34,
    "pole": 0.38, "traffic-sign": 0.9, "car": 0.2, "truck": 0.25, "other-vehicle": 0.25,
    "bicycle": 0.28, "motorcycle": 0.25, "person": 0.32, "bicyclist": 0.32, "motorcyclist": 0.28,
    "other-structure": 0.33, "other-object": 0.38,
}

GLASS = 0.04  # vehicle glass: near zero, dark and specular
GLASS_LOSS = 0.75  # ...and three pulses in four pass into the cabin or glance off: no return from the glass
DARK_PAINT = 0.06
TYRE = 0.05
NO_RETURN = 0.0  # a building's windows: the pulse passes or glances off, nothing comes back


def box(x, y, z0, lx, ly, lz, name, yaw=0.0):
    """Box standing on height z0 with full sizes lx, ly, lz."""
    return (BOX, (x, y, z0 + lz / 2), (lx / 2, ly / 2, lz / 2), yaw, name)


def cyl(x, y, z0, r, h, name):
    return (CYLINDER, (x, y, z0 + h / 2), (r, r, h / 2), 0.0, name)


def ell(x, y, zc, rx, ry, rz, name):
    return (ELLIPSOID, (x, y, zc), (rx, ry, rz), 0.0, name)


def _wheels(name, axles, width, radius, inset=0.05):
    """Dark tyres at the axles (x positions): one box an axle, tyre to tyre (what shows
    between them under the body is as dark; one primitive, not two, for the ray caster)."""
    return [(*box(ax, 0, 0.0, 2 * radius, width - 2 * inset, 2 * radius, name), TYRE) for ax in axles]


def car_parts(rng, name="car", tall: bool = False):
    """Bumpers and sills low, the body above the wheel arches, a bonnet and boot lower than
    the cabin, the cabin's glass between pillars, a roof; `tall`: an SUV, van or MPV (roof
    1.55-1.9 m; real scan 000750's two cars top out at 1.43 and 1.79 m over the road, q95)."""
    length, width = rng.uniform(3.9, 4.8), rng.uniform(1.7, 1.9)
    paint = DARK_PAINT if rng.random() < 0.35 else REMISSION[name]  # a third of cars are dark
    belt = rng.uniform(0.9, 1.0)  # top of the doors and bonnet
    roof = rng.uniform(1.55, 1.9) if tall else belt + rng.uniform(0.4, 0.55)
    r = 0.32  # wheel radius
    front, rear = length / 2 - 0.85, -length / 2 + 0.8  # axles
    arch = 2 * r + 0.12  # wheel arch opening along x
    cabin_lo, cabin_hi = -length / 2 + 0.55, length / 2 - 1.25  # the glasshouse, behind the bonnet
    parts = [
        # above the arches: doors, wings, bonnet and boot
        (*box(0, 0, 2 * r + 0.05, length, width, belt - 2 * r - 0.05, name), paint),
        # below the belt between the arches (sills, doors), and the bumpers
        (*box((front + rear) / 2, 0, 0.28, front - rear - arch, width, 2 * r - 0.23, name), paint),
        (*box(front + arch / 2 + (length / 2 - front - arch / 2) / 2, 0, 0.3, length / 2 - front - arch / 2,
              width, 2 * r - 0.25, name), paint),
        (*box(rear - arch / 2 - (rear + length / 2 - arch / 2) / 2, 0, 0.3, rear + length / 2 - arch / 2,
              width, 2 * r - 0.25, name), paint),
        # the glasshouse, a little narrower than the body, and its roof
        (*box((cabin_lo + cabin_hi) / 2, 0, belt, cabin_hi - cabin_lo, width * 0.86, roof - belt - 0.06, name), GLASS),
        (*box((cabin_lo + cabin_hi) / 2 - 0.1, 0, roof - 0.06, cabin_hi - cabin_lo - 0.5, width * 0.8, 0.06, name),
         paint),
        # A and C pillars: opaque at the glasshouse's ends
        (*box(cabin_hi - 0.06, 0, belt, 0.12, width * 0.86, roof - belt - 0.06, name), paint),
        (*box(cabin_lo + 0.06, 0, belt, 0.12, width * 0.86, roof - belt - 0.06, name), paint),
    ]
    return parts + _wheels(name, (front, rear), width, r)


def truck_parts(rng, name="truck"):
    """A cab with a windscreen band, a cargo box on a chassis (the road seen beneath), wheels."""
    length = rng.uniform(6.5, 9.0)
    cab_x = length / 2 - 1.0
    box_len = length - 2.4
    box_lo = rng.uniform(1.0, 1.2)
    cab_h = rng.uniform(2.6, 3.0)
    return [
        box(cab_x, 0, 0.45, 2.0, 2.4, cab_h - 1.2, name),  # cab body
        (*box(cab_x + 0.2, 0, cab_h - 0.75, 1.6, 2.3, 0.6, name), GLASS),  # windscreen and side windows
        box(cab_x - 0.2, 0, cab_h - 0.15, 1.6, 2.4, 0.15, name),  # cab roof
        box(-0.6, 0, box_lo, box_len, 2.5, rng.uniform(2.4, 3.0), name),  # cargo box
        box(-0.6, 0, 0.6, box_len, 0.9, box_lo - 0.6, name),  # chassis rails
        *_wheels(name, (cab_x, -length / 2 + 1.4, -length / 2 + 2.6), 2.4, 0.5),
    ]


def other_vehicle_parts(rng, name="other-vehicle"):
    """Buses, trailers, caravans: a long tall body with a band of windows, wheels."""
    length, height = rng.uniform(8.0, 12.0), rng.uniform(2.6, 3.1)
    return [
        box(0, 0, 0.35, length, 2.5, 1.0, name),
        (*box(0, 0, 1.35, length - 0.3, 2.45, height - 1.75, name), GLASS),
        box(0, 0, 0.95 + height - 1.35, length, 2.5, 0.4, name),
        box(length / 2 - 0.1, 0, 1.35, 0.2, 2.5, height - 1.75, name),  # front and rear ends are opaque
        box(-length / 2 + 0.1, 0, 1.35, 0.2, 2.5, height - 1.75, name),
        *_wheels(name, (length / 2 - 2.0, -length / 2 + 2.5), 2.5, 0.5),
    ]


def bicycle_parts(rng, name="bicycle"):
    """Two wheels, the frame between them, saddle and handlebar."""
    return [
        box(0.52, 0, 0.0, 0.68, 0.05, 0.68, name),  # front wheel
        box(-0.52, 0, 0.0, 0.68, 0.05, 0.68, name),  # rear wheel
        box(0, 0, 0.45, 0.9, 0.06, 0.35, name),  # frame
        box(-0.25, 0, 0.8, 0.25, 0.12, 0.08, name),  # saddle
        box(0.45, 0, 0.9, 0.08, 0.55, 0.08, name),  # handlebar
    ]


def motorcycle_parts(rng, name="motorcycle"):
    return [
        (*box(0.7, 0, 0.0, 0.62, 0.14, 0.62, name), TYRE),
        (*box(-0.7, 0, 0.0, 0.62, 0.18, 0.62, name), TYRE),
        box(0, 0, 0.3, 1.3, 0.42, 0.55, name),  # engine and tank
        box(-0.35, 0, 0.85, 0.7, 0.3, 0.12, name),  # seat
        box(0.55, 0, 0.95, 0.15, 0.7, 0.1, name),  # handlebar
    ]


def person_parts(rng, name="person", walking: float | None = None):
    """Legs (apart when walking), a torso, arms at its sides, a head."""
    h = rng.uniform(1.55, 1.9)
    leg, torso = 0.47 * h, 0.3 * h
    stride = rng.uniform(0.0, 0.3) if walking is None else walking
    return [
        cyl(stride / 2, 0.1, 0.0, 0.07, leg, name),
        cyl(-stride / 2, -0.1, 0.0, 0.07, leg, name),
        cyl(0, 0, leg, rng.uniform(0.15, 0.2), torso, name),
        cyl(-stride / 4, 0.24, leg + 0.05, 0.045, torso * 0.9, name),
        cyl(stride / 4, -0.24, leg + 0.05, 0.045, torso * 0.9, name),
        ell(0, 0, leg + torso + 0.13, 0.1, 0.1, 0.12, name),
    ]


def rider_parts(rng, vehicle, name):
    """The vehicle, relabelled as its rider's class (SemanticKITTI labels the rider with
    the bicycle or motorcycle as one bicyclist or motorcyclist), and a seated rider: thighs,
    a leaning torso, arms to the bars, a head."""
    parts = [(k, loc, half, yaw, name, *rem) for k, loc, half, yaw, _, *rem in vehicle(rng)]
    seat = 0.88
    return [*parts,
            box(-0.05, 0, seat - 0.05, 0.45, 0.3, 0.15, name),  # thighs
            box(-0.3, 0.12, 0.3, 0.12, 0.1, seat - 0.3, name),  # lower legs
            box(-0.3, -0.12, 0.3, 0.12, 0.1, seat - 0.3, name),
            cyl(-0.15, 0, seat + 0.1, 0.17, 0.55, name),  # torso
            box(0.2, 0.2, seat + 0.4, 0.5, 0.08, 0.08, name),  # arms
            box(0.2, -0.2, seat + 0.4, 0.5, 0.08, 0.08, name),
            ell(-0.05, 0, seat + 0.8, 0.11, 0.11, 0.13, name)]


def building_parts(rng, length: float, depth: float, heights: tuple[float, float], foundation: float):
    """A block along the street (x) with its facade towards -y: segments of their own
    height and set-back (recesses of up to half a metre), and on each segment's facade a
    ribbon of windows a storey above the ground floor, proud of the wall by a centimetre,
    that return nothing."""
    parts = []
    x = -length / 2
    while x < length / 2 - 1.0:
        seg = min(rng.uniform(6.0, 14.0), length / 2 - x)
        h = rng.uniform(*heights)
        back = rng.uniform(0.0, 0.5) if rng.random() < 0.5 else 0.0
        cx = x + seg / 2
        parts.append(box(cx, back / 2, -foundation, seg, depth - back, h + foundation, "building"))
        face = -depth / 2 + back  # the facade's y
        storey = rng.uniform(2.8, 3.3)
        z = storey + rng.uniform(0.9, 1.3)  # from the first floor up: the ground floor's doors and walls return
        while z + 1.4 < h - 0.5:
            parts.append((*box(cx, face - 0.01, z, seg - 1.0, 0.02, 1.4, "building"), NO_RETURN))
            z += storey
        x += seg
    return parts


def tree_parts(rng, trunk_height: float, crown: float, name_trunk="trunk", name_crown="vegetation"):
    """A trunk up into the crown (the trunk shows beneath it), the crown an ellipsoid."""
    return [cyl(0, 0, 0, rng.uniform(0.12, 0.3), trunk_height + crown * 0.5, name_trunk),
            ell(0, 0, trunk_height + crown * 0.8, crown, crown, crown * rng.uniform(0.7, 1.0), name_crown)]


def kind_radius(kind: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Each primitive's bounding radius in the ground plane."""
    return np.where(kind == BOX, np.hypot(half[:, 0], half[:, 1]),
                    np.where(kind == CYLINDER, half[:, 0], half[:, :2].max(1)))
