"""Numba ray caster of a spinning multi-beam LiDAR against the synthetic world.

Each column of the scan only tests the primitives whose azimuth interval, seen from the
sensor, covers it (a CSR bucket list built per scan), so a 64 x 2000 scan against a few
hundred objects costs a few tens of milliseconds.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

# HDL-64E vertical angles: upper block +2.0 .. -8.33 deg (32 lasers, ~1/3 deg apart),
# lower block -8.83 .. -24.33 deg (32 lasers, 1/2 deg apart) (Velodyne HDL-64E S2 manual;
# KITTI's sensor, Geiger et al., IJRR 2013).
HDL64_ELEVATIONS_DEG = np.concatenate([np.linspace(2.0, -8.33, 32), np.linspace(-8.83, -24.33, 32)])


def beam_lasers(beams: int) -> np.ndarray:
    """Which of the HDL-64E's 64 lasers a `beams`-beam sensor keeps (spread over the field of view)."""
    if beams <= 0 or beams > 64:
        raise ValueError(f"beams must be 1..64, got {beams}")
    return np.round(np.linspace(0, 63, beams)).astype(np.int64)


def beam_elevations(beams: int) -> np.ndarray:
    """Elevation (radians) of `beams` lasers spread over the HDL-64E's field of view."""
    return np.deg2rad(HDL64_ELEVATIONS_DEG[beam_lasers(beams)])


def column_azimuths(columns: int) -> np.ndarray:
    """Azimuth (radians, sensor frame) of each firing column, one revolution."""
    return -np.pi + 2 * np.pi * (np.arange(columns) + 0.5) / columns


@nb.njit(cache=True)
def build_column_buckets(cx, cy, radius, az_sensor, columns, max_range):
    """CSR lists of primitive indices per column: (starts (C+1,), indices (K,)).

    cx, cy: primitive centres relative to the sensor (world axes); radius: xy bounding
    radius; az_sensor: sensor yaw (world azimuth of its x axis).
    """
    n = cx.shape[0]
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    col_w = 2 * math.pi / columns
    counts = np.zeros(columns + 1, np.int64)
    for i in range(n):
        dist = math.sqrt(cx[i] * cx[i] + cy[i] * cy[i])
        if dist - radius[i] > max_range:
            lo[i] = 0
            hi[i] = -1
            continue
        if dist <= radius[i] * 1.02 + 0.05:
            lo[i] = 0
            hi[i] = columns - 1
        else:
            az = math.atan2(cy[i], cx[i]) - az_sensor
            half = math.asin(min(1.0, radius[i] * 1.02 / dist)) + col_w
            lo[i] = math.floor((az - half + math.pi) / col_w)
            hi[i] = math.floor((az + half + math.pi) / col_w)
            if hi[i] - lo[i] >= columns:
                lo[i] = 0
                hi[i] = columns - 1
        for c in range(lo[i], hi[i] + 1):
            counts[(c % columns) + 1] += 1
    starts = np.cumsum(counts)
    fill = starts[:-1].copy()
    idx = np.empty(starts[-1], np.int64)
    for i in range(n):
        for c in range(lo[i], hi[i] + 1):
            cc = c % columns
            idx[fill[cc]] = i
            fill[cc] += 1
    return starts, idx


@nb.njit(cache=True, inline="always")
def _hit_primitive(kind, ox, oy, oz, dx, dy, dz, cx, cy, cz, hx, hy, hz, cyaw, syaw):
    """Distance along the ray to the primitive (inf if missed) and the local normal."""
    # into the primitive frame: translate, then rotate by -yaw about z
    px, py, pz = ox - cx, oy - cy, oz - cz
    lox = cyaw * px + syaw * py
    loy = -syaw * px + cyaw * py
    ldx = cyaw * dx + syaw * dy
    ldy = -syaw * dx + cyaw * dy
    inf = np.inf
    if kind == 0:  # box: slab test
        tmin, tmax = -inf, inf
        axis = -1
        for a in range(3):
            o = lox if a == 0 else (loy if a == 1 else pz)
            d = ldx if a == 0 else (ldy if a == 1 else dz)
            h = hx if a == 0 else (hy if a == 1 else hz)
            if abs(d) < 1e-12:
                if o < -h or o > h:
                    return inf, 0.0, 0.0, 0.0
            else:
                t1 = (-h - o) / d
                t2 = (h - o) / d
                if t1 > t2:
                    t1, t2 = t2, t1
                if t1 > tmin:
                    tmin = t1
                    axis = a
                if t2 < tmax:
                    tmax = t2
        if tmax < tmin or tmax <= 0.0 or tmin <= 0.0:
            return inf, 0.0, 0.0, 0.0
        dd = ldx if axis == 0 else (ldy if axis == 1 else dz)
        sgn = -1.0 if dd > 0 else 1.0
        if axis == 0:
            return tmin, sgn, 0.0, 0.0
        if axis == 1:
            return tmin, 0.0, sgn, 0.0
        return tmin, 0.0, 0.0, sgn
    if kind == 1:  # vertical cylinder with caps
        best = inf
        nx = ny = nz = 0.0
        a = ldx * ldx + ldy * ldy
        if a > 1e-12:
            b = lox * ldx + loy * ldy
            c = lox * lox + loy * loy - hx * hx
            disc = b * b - a * c
            if disc >= 0.0:
                t = (-b - math.sqrt(disc)) / a
                if t > 0.0:
                    z = pz + t * dz
                    if -hz <= z <= hz:
                        best = t
                        nx, ny = (lox + t * ldx) / hx, (loy + t * ldy) / hx
        if abs(dz) > 1e-12:
            for cap in (hz, -hz):
                t = (cap - pz) / dz
                if 0.0 < t < best:
                    x = lox + t * ldx
                    y = loy + t * ldy
                    if x * x + y * y <= hx * hx:
                        best = t
                        nx, ny, nz = 0.0, 0.0, 1.0 if cap > 0 else -1.0
        return best, nx, ny, nz
    # ellipsoid: unit sphere after scaling
    sx, sy, sz = lox / hx, loy / hy, pz / hz
    ex, ey, ez = ldx / hx, ldy / hy, dz / hz
    a = ex * ex + ey * ey + ez * ez
    b = sx * ex + sy * ey + sz * ez
    c = sx * sx + sy * sy + sz * sz - 1.0
    disc = b * b - a * c
    if disc < 0.0:
        return inf, 0.0, 0.0, 0.0
    t = (-b - math.sqrt(disc)) / a
    if t <= 0.0:
        return inf, 0.0, 0.0, 0.0
    return t, (sx + t * ex) / hx, (sy + t * ey) / hy, (sz + t * ez) / hz


# ---------------------------------------------------------------- the ground (terrain.py's relief)
# Kept here with the kernels that call them: numba's cache of a function is not rebuilt
# when a function it calls changes in another file.

GROUND_STEP = 0.25  # metres between a terrain.Profile's samples along x
GROUND_WINDOW = 10.0  # metres along x over which a Profile row knows the highest ground
# The ray caster's smallest step along a ray, growing with range: where the ground is near
# a ray may still clip a crest shorter than this between two samples (measured against a
# brute-force walk: tests/test_relief.py)
MIN_STEP, STEP_GROWTH = 0.1, 0.02


@nb.njit(cache=True, inline="always")
def _cross(a, bank, road_half, kerb_at, sidewalk_outer, p):
    """Height across the road at |d| = a relative to the crown; the kerb at `kerb_at`."""
    camber, kerb, ditch_depth, ditch_width, bank_cap = p[0], p[1], p[2], p[3], p[4]
    if a < road_half:
        return -camber * a
    edge = -camber * road_half
    if a < kerb_at:
        return edge
    if a < sidewalk_outer:
        return edge + kerb
    e = a - sidewalk_outer
    z = edge + kerb
    if e < ditch_width:
        return z - ditch_depth * math.sin(math.pi * e / ditch_width)
    rise = bank * (e - ditch_width)
    if rise > bank_cap:
        rise = bank_cap
    elif rise < -bank_cap:
        rise = -bank_cap
    return z + rise


@nb.njit(cache=True)
def ground_heights(x, y, x0, table, section, params, out):
    for i in range(x.shape[0]):
        out[i] = ground_height(x[i], y[i], x0, table, section, params)


@nb.njit(cache=True, inline="always")
def ground_height(x, y, x0, table, section, params):
    """Ground height at world (x, y) from a `Profile`'s arrays (x outside the table: its end)."""
    f = (x - x0) / GROUND_STEP
    n = table.shape[0]
    if f < 0.0:
        f = 0.0
    elif f > n - 1.001:
        f = n - 1.001
    i = int(f)
    w = f - i
    crown = table[i, 0] + w * (table[i + 1, 0] - table[i, 0])
    cy = table[i, 1] + w * (table[i + 1, 1] - table[i, 1])
    ch = table[i, 2] + w * (table[i + 1, 2] - table[i, 2])
    d = (y - cy) * ch
    if d >= 0.0:
        bank = table[i, 3] + w * (table[i + 1, 3] - table[i, 3])
    else:
        bank = table[i, 4] + w * (table[i + 1, 4] - table[i, 4])
    kerb_at = section[1] if table[i if w < 0.5 else i + 1, 5] > 0.5 else section[0]
    return crown + _cross(abs(d), bank, section[0], kerb_at, section[2], params)


@nb.njit(cache=True)
def ground_hit(ox, oy, oz, dx, dy, dz, t_max, x0, table, section, params, max_slope, z_max):
    """Distance along the ray (unit direction) to the ground, or inf if it is not met
    before `t_max`; the ground's height is `ground_height`.

    Steps along the ray as far as the steepest slope and a kerb's height allow without
    passing the ground (at least MIN_STEP + STEP_GROWTH * t), longer where the ray is above
    the highest ground within GROUND_WINDOW; once the ray is under the ground, regula falsi
    on the bracket (which also finds a kerb's face)."""
    if dz >= 0.0 and oz > z_max:  # climbing above the highest ground there is
        return np.inf
    dxy = math.sqrt(dx * dx + dy * dy)
    t = 0.0
    gap = oz - ground_height(ox, oy, x0, table, section, params)
    if gap <= 0.0:
        return 0.0
    kerb = params[1]
    while t < t_max:
        # the gap can close at most at (slope * dxy - dz) a metre of ray, and by a kerb's
        # height at once: a step that leaves more than that cannot pass the ground
        closing = max_slope * dxy - dz
        if closing <= 0.0 and gap > kerb:  # the ray climbs at least as fast as any ground
            return np.inf
        dt = MIN_STEP + STEP_GROWTH * t
        if closing > 0.0:
            safe = (gap - kerb) / closing
            if safe > dt:
                dt = safe
        # above the highest ground within GROUND_WINDOW: stride while the ray stays above it
        f = (ox + t * dx - x0) / GROUND_STEP
        row = min(max(int(f), 0), table.shape[0] - 1)
        above = oz + t * dz - table[row, 6]
        if above > 0.0:
            stride = GROUND_WINDOW / dxy if dxy > 1e-9 else np.inf
            if dz < 0.0 and above / -dz < stride:
                stride = above / -dz
            if stride > dt:
                dt = stride
        t_next = min(t + dt, t_max)
        gap_next = oz + t_next * dz - ground_height(ox + t_next * dx, oy + t_next * dy, x0, table, section, params)
        if gap_next <= 0.0:
            # the crossing lies in [t, t_next]: regula falsi with the Illinois rule (the
            # gap is nearly linear on smooth ground: one or two steps; a kerb's step is
            # still bracketed and found)
            lo, hi, g_lo, g_hi = t, t_next, gap, gap_next
            side = 0
            for _ in range(30):
                if hi - lo < 0.002:
                    break
                mid = (lo * -g_hi + hi * g_lo) / (g_lo - g_hi)
                g = oz + mid * dz - ground_height(ox + mid * dx, oy + mid * dy, x0, table, section, params)
                if abs(g) < 0.001:
                    return mid
                if g > 0.0:
                    lo, g_lo = mid, g
                    if side == 1:
                        g_hi *= 0.5
                    side = 1
                else:
                    hi, g_hi = mid, g
                    if side == -1:
                        g_lo *= 0.5
                    side = -1
            return hi
        if t_next >= t_max or (dz >= 0.0 and oz + t_next * dz > z_max):
            break
        t, gap = t_next, gap_next
    return np.inf


@nb.njit(cache=True, inline="always")
def ground_normal(x, y, x0, table, section, params):
    """The ground's normal at (x, y) by central differences over 4 cm (at a kerb: mostly
    horizontal, facing the road)."""
    e = 0.02
    gx = (ground_height(x + e, y, x0, table, section, params) - ground_height(x - e, y, x0, table, section, params))
    gy = (ground_height(x, y + e, x0, table, section, params) - ground_height(x, y - e, x0, table, section, params))
    nx, ny, nz = -gx / (2 * e), -gy / (2 * e), 1.0
    n = math.sqrt(nx * nx + ny * ny + nz * nz)
    return nx / n, ny / n, nz / n


# The ego vehicle's roof around the sensor (sensor frame, metres): rays that hit it give
# no return, which is the blind ring of missing ground points around a real KITTI scan.
EGO_ROOF = np.array([-1.0, 0.8, -0.75, 0.75, -0.3])  # x min, x max, y min, y max, roof z


@nb.njit(cache=True, inline="always")
def _blocked_by_ego(sdx, sdy, sdz, roof):
    """Whether a ray from the sensor (sensor-frame direction) first meets the roof plane inside the roof."""
    if sdz >= -1e-9:
        return False
    t = roof[4] / sdz
    x, y = t * sdx, t * sdy
    return roof[0] <= x <= roof[1] and roof[2] <= y <= roof[3]


@nb.njit(cache=True)
def _elevation_bounds(origins, rot, centre, half, radius):
    """Per primitive, the sensor-frame elevations between which a beam can meet it: its
    z extent seen over its nearest and farthest ground distance, widened by the sensor's
    tilt and by how far the origin moves over the sweep ((-pi/2, pi/2) when it is close);
    and the nearest a ray can meet it (no nearer than its ground distance)."""
    n = centre.shape[0]
    lo = np.empty(n)
    hi = np.empty(n)
    nearest = np.empty(n)
    tilt = math.acos(min(1.0, abs(rot[2, 2]))) + 0.005
    move = 0.0
    for c in range(origins.shape[0]):
        d = math.sqrt((origins[c, 0] - origins[0, 0]) ** 2 + (origins[c, 1] - origins[0, 1]) ** 2
                      + (origins[c, 2] - origins[0, 2]) ** 2)
        move = max(move, d)
    for p in range(n):
        r = radius[p]
        dx, dy = centre[p, 0] - origins[0, 0], centre[p, 1] - origins[0, 1]
        dist = math.sqrt(dx * dx + dy * dy)
        near, far = dist - r - move, dist + r + move
        nearest[p] = near
        zlo = centre[p, 2] - half[p, 2] - origins[0, 2] - move
        zhi = centre[p, 2] + half[p, 2] - origins[0, 2] + move
        if near < 1.0:
            lo[p], hi[p] = -math.pi / 2, math.pi / 2
            continue
        lo[p] = math.atan2(zlo, near if zlo < 0.0 else far) - tilt
        hi[p] = math.atan2(zhi, near if zhi > 0.0 else far) + tilt
    return lo, hi, nearest


@nb.njit(parallel=True, cache=True)
def cast_scan(origins, rot, elev, azim, kind, centre, half, yaw, radius, starts, bucket, max_range, roof,
              x0, table, section, params, max_slope, z_max):
    """Cast every (beam, column) ray; return range, hit primitive (-1 ground, -2 none), |cos incidence|.

    origins (C, 3): the sensor's position when it fires column c (it moves during the
    sweep: KITTI's scans are not motion-compensated); rot (3, 3) sensor -> world; elev (B,),
    azim (C,) in the sensor frame; rays blocked by the ego roof (`roof`) give no return;
    radius: each primitive's bounding radius in the ground plane (`shapes.kind_radius`).
    The ground is the relief of a `terrain.Profile` (x0 ... z_max: its arrays and bounds),
    searched only up to the nearest object the ray meets.
    """
    nb_, nc = elev.shape[0], azim.shape[0]
    lo_el, hi_el, nearest = _elevation_bounds(origins, rot, centre, half, radius)
    rng = np.zeros((nb_, nc), np.float64)
    hit = np.full((nb_, nc), -2, np.int64)
    cosi = np.zeros((nb_, nc), np.float64)
    cyaw = np.cos(yaw)
    syaw = np.sin(yaw)
    for c in nb.prange(nc):
        ca, sa = math.cos(azim[c]), math.sin(azim[c])
        origin = origins[c]
        for b in range(nb_):
            ce, se = math.cos(elev[b]), math.sin(elev[b])
            sdx, sdy, sdz = ce * ca, ce * sa, se
            if _blocked_by_ego(sdx, sdy, sdz, roof):
                continue
            dx = rot[0, 0] * sdx + rot[0, 1] * sdy + rot[0, 2] * sdz
            dy = rot[1, 0] * sdx + rot[1, 1] * sdy + rot[1, 2] * sdz
            dz = rot[2, 0] * sdx + rot[2, 1] * sdy + rot[2, 2] * sdz
            best = max_range
            who = -2
            bnx = bny = bnz = 0.0
            for k in range(starts[c], starts[c + 1]):
                p = bucket[k]
                if elev[b] < lo_el[p] or elev[b] > hi_el[p]:  # the beam passes above or below it
                    continue
                if nearest[p] > best:  # farther than what the ray already met (buckets run nearest first)
                    continue
                t, nx, ny, nz = _hit_primitive(kind[p], origin[0], origin[1], origin[2], dx, dy, dz,
                                               centre[p, 0], centre[p, 1], centre[p, 2],
                                               half[p, 0], half[p, 1], half[p, 2], cyaw[p], syaw[p])
                if t < best:
                    best, who = t, p
                    # local normal back to world axes (rotate by +yaw)
                    bnx = cyaw[p] * nx - syaw[p] * ny
                    bny = syaw[p] * nx + cyaw[p] * ny
                    bnz = nz
            t = ground_hit(origin[0], origin[1], origin[2], dx, dy, dz, best, x0, table, section, params,
                           max_slope, z_max)
            if t < best:
                best, who = t, -1
                bnx, bny, bnz = ground_normal(origin[0] + t * dx, origin[1] + t * dy, x0, table, section, params)
            if who != -2:
                norm = math.sqrt(bnx * bnx + bny * bny + bnz * bnz) + 1e-12
                rng[b, c] = best
                hit[b, c] = who
                cosi[b, c] = abs(bnx * dx + bny * dy + bnz * dz) / norm
    return rng, hit, cosi
