"""Synthetic sequences in the exact SemanticKITTI layout (docs/synthetic.md).

`generate_sequence` drives an ego vehicle along the road of a `world.World`,
ray-casts a 64-beam spinning LiDAR at 10 Hz and writes, per scan, the velodyne `.bin`
(sensor frame, x forward, y left, z up) and the `.label` (raw ids, 25x ids for moving
objects, instance ids stable over the sequence), plus `poses.txt` (camera-0 convention),
`calib.txt` (the real KITTI Tr of sequences 00-02) and `times.txt`.

Everything is a function of (seed, sequence, frame), so a rerun reproduces the same
bytes and an interrupted run resumes by skipping the scans already on disk.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2skd.common import kitti_io
from m2skd.common.atomic import atomic_path
from m2skd.common.geometry import camera_poses
from m2skd.common.labels import RAW_BY_NAME
from m2skd.common.splits import TEST_SEQUENCES

from . import raycast
from . import world as synth_world
from .config import WORLD_VERSIONS, SynthConfig, kitti_calib_matrices
from .shapes import GLASS, GLASS_LOSS, NO_RETURN, REMISSION, kind_radius

# SemanticKITTI's test split has no labels; the generator mirrors that by default.
# The ego vehicle (a VW Passat wagon, KITTI's recording car): about 2.7 m wheelbase, 1.55 m track.
HALF_WHEELBASE, HALF_TRACK = 1.35, 0.78


@dataclass
class SequenceSim:
    """One synthetic drive: the world, the ego trajectory and the sensor model."""

    cfg: SynthConfig
    name: str

    def __post_init__(self) -> None:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, int(self.name)])
        self.world_seed = int(rng.integers(1 << 30))
        self.speed = float(rng.uniform(cfg.speed_min, cfg.speed_max))
        duration = cfg.scans * cfg.period
        margin = cfg.max_range + 20.0
        self.street = synth_world.street_of(self.name, cfg.seed, cfg.world, cfg.world_version)
        self.world = synth_world.build_world(
            rng, -margin, self.speed * duration + margin, duration / 2, self.world_seed,
            street=self.street, hard_density=cfg.hard_density, version=cfg.world_version, ego_speed=self.speed,
        )
        # version 3: the body sways on its springs (two sines a rotation axis, periods and
        # phases per drive); its own stream, so version 2's draws are untouched
        sway = np.random.default_rng([cfg.seed, int(self.name), 13])
        v3 = cfg.world_version >= 3
        self.sway_periods = sway.uniform(1.5, 6.0, (2, 2)) if v3 else None
        self.sway_phases = sway.uniform(0, 2 * np.pi, (2, 2)) if v3 else None
        # version 5 (only): the sensor pitched forward for the whole drive (drawn after the
        # sway's draws, so version 3's are untouched); version 6 builds on 3, not on 5
        self.mount_pitch = float(np.radians(sway.uniform(0.0, MOUNT_PITCH))) if cfg.world_version == 5 else 0.0
        self.laser = raycast.beam_lasers(cfg.beams)
        self.elev = raycast.beam_elevations(cfg.beams)
        self.azim = raycast.column_azimuths(cfg.columns)
        # every ray's unit direction in the sensor frame, once: per scan only the kept
        # rays' rows are gathered (the trigonometry cost ~10 % of a scan)
        el, az = self.elev[:, None], self.azim[None, :]
        self.dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.broadcast_to(np.sin(el), (
            cfg.beams, cfg.columns))], -1)
        # the head turns once per period; the forward column fires at the scan's time.
        # KITTI's published scans are ego-motion compensated (its devkit: "this effect has
        # been eliminated from this postprocessed data"), so by default every column fires
        # from the scan's pose; `rolling_shutter` keeps the raw sensor's skew.
        self.column_dt = (self.azim / (2 * np.pi)) * cfg.period * cfg.rolling_shutter
        self.world_poses = np.stack([self._world_pose(i) for i in range(cfg.scans)])
        # LiDAR poses relative to the first scan, as poses.txt implies
        self.lidar_poses = np.linalg.inv(self.world_poses[0]) @ self.world_poses

    def _world_pose(self, frame: int) -> np.ndarray:
        """The sensor's pose: the ego vehicle on the road surface, pitched by the grade and
        rolled by the camber under its wheels, the sensor SENSOR_HEIGHT up its own z."""
        u = self.speed * frame * self.cfg.period
        x, y, h = synth_world.road_to_world(u, synth_world.EGO_LANE)
        ground = self.world.ground_height
        at, fwd, left = np.array([x, y]), np.array([np.cos(h), np.sin(h)]), np.array([-np.sin(h), np.cos(h)])

        def rise(v: np.ndarray, half: float) -> float:  # slope along v between two wheels
            return float(ground(*(at + half * v)) - ground(*(at - half * v))) / (2 * half)
        ex = np.array([*fwd, rise(fwd, HALF_WHEELBASE)])  # pitch: over the wheelbase
        ey = np.array([*left, rise(left, HALF_TRACK)])  # roll: over the track
        ex /= np.linalg.norm(ex)
        ez = np.cross(ex, ey)
        ez /= np.linalg.norm(ez)
        m = np.eye(4)
        m[:3, :3] = np.stack([ex, np.cross(ez, ex), ez], 1)
        m[:3, 3] = np.array([x, y, float(ground(x, y))]) + synth_world.SENSOR_HEIGHT * ez
        if self.sway_periods is not None:
            m[:3, :3] = m[:3, :3] @ self._sway(frame * self.cfg.period)
        return m

    def _sway(self, t: float) -> np.ndarray:
        """The body's pitch and roll on its springs at time t, about the sensor: a real scan
        (000750) shows the road ahead tilted 2.8 % and 3.5 % to the side in the sensor's
        frame, where the wheels-on-the-surface pose alone kept it at 0.0-0.1 % ahead."""
        waves = 0.6 * np.sin(2 * np.pi * t / self.sway_periods[:, 0] + self.sway_phases[:, 0]) + 0.4 * np.sin(
            2 * np.pi * t / self.sway_periods[:, 1] + self.sway_phases[:, 1])
        pitch, roll = np.radians([SWAY_PITCH, SWAY_ROLL]) * waves
        pitch = pitch + self.mount_pitch
        cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
        about_y = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        about_x = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        return about_y @ about_x

    def scan(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(points float32 (N, 4) in the sensor frame, raw semantic uint32, instance uint32)."""
        cfg = self.cfg
        pose = self.world_poses[frame]
        prims = self.world.primitives_at(frame * cfg.period)
        origin = pose[:3, 3].copy()
        # rolling shutter: column c fires at dt_c around the scan's time while the car moves
        origins = origin + np.outer(self.column_dt, pose[:3, 0] * self.speed)
        rel = prims["centre"][:, :2] - origin[:2]
        half = prims["half"]
        radius = kind_radius(prims["kind"], half)
        gap = np.hypot(rel[:, 0], rel[:, 1]) - radius
        idx = np.flatnonzero(gap < cfg.max_range)
        idx = idx[np.argsort(gap[idx], kind="stable")]  # nearest first: a ray's first hit skips the rest
        yaw_sensor = float(np.arctan2(pose[1, 0], pose[0, 0]))
        starts, bucket = raycast.build_column_buckets(
            rel[idx, 0].copy(), rel[idx, 1].copy(), radius[idx].copy(), yaw_sensor, cfg.columns, cfg.max_range
        )
        ground = self.world.profile
        rng_m, hit, cosi = raycast.cast_scan(
            origins, pose[:3, :3].copy(), self.elev, self.azim, prims["kind"][idx], prims["centre"][idx],
            half[idx], prims["yaw"][idx], radius[idx], starts, bucket, cfg.max_range, raycast.EGO_ROOF,
            ground.x0, ground.table, ground.section, ground.params, ground.max_slope, ground.z_max,
        )
        noise = np.random.default_rng([cfg.seed, int(self.name), frame, 7])
        shape = rng_m.shape
        base = np.where(hit >= 0, prims["remission"][idx][np.maximum(hit, 0)], _ROAD_REMISSION)
        keep = (hit != -2) & (noise.random(shape) >= _drop_probability(cfg, rng_m, base, cosi))
        r = rng_m + noise.normal(0.0, 1.0, shape) * (cfg.range_noise + RANGE_NOISE_PER_M * rng_m)
        keep &= r > 0.5
        b_i, c_i = np.nonzero(keep)
        r = r[b_i, c_i]
        dirs = self.dirs[b_i, c_i]

        who = hit[b_i, c_i]
        on_obj = who >= 0
        prim_of = idx[np.where(on_obj, who, 0)]
        sem = np.zeros(len(r), np.uint32)
        inst = np.zeros(len(r), np.uint32)
        rem_base = np.zeros(len(r))
        sem[on_obj] = prims["raw"][prim_of[on_obj]]
        inst[on_obj] = prims["instance"][prim_of[on_obj]]
        rem_base[on_obj] = prims["remission"][prim_of[on_obj]]
        # the ground's label where the ray met it (without the range noise: a kerb's face
        # stays sidewalk, the road in front of it road)
        g = ~on_obj
        true = rng_m[b_i[g], c_i[g]]
        world_xy = (dirs[g] * true[:, None]) @ pose[:2, :3].T + origins[c_i[g], :2]
        sem[g] = self.world.ground_raw_ids(world_xy[:, 0], world_xy[:, 1])
        if cfg.world_version >= 3:  # grass: the ray stops at the blades, short of the soil
            r[g] -= grass_shift(world_xy, sem[g], cosi[b_i[g], c_i[g]], self.world_seed)
        xyz = dirs * r[:, None]
        rem_base[g] = _ground_remission(sem[g])
        # per-laser gain (each HDL-64E laser has its own intensity response), incidence, range
        remission = (1.5 * rem_base * LASER_GAIN[self.laser[b_i]] * (0.3 + 0.7 * cosi[b_i, c_i])
                     * np.exp(-r / 60.0) + noise.normal(0.0, 0.03, len(r)))
        pts = np.concatenate([xyz, np.clip(remission, 0.0, 0.99)[:, None]], 1).astype(np.float32)
        return pts, sem, inst


# Version 3's body sway, at most (degrees): pitch and roll.
SWAY_PITCH, SWAY_ROLL = 1.5, 1.0
# Version 5 (a candidate): the sensor pitched forward by a drive's own angle, uniform in
# 0..MOUNT_PITCH degrees, under the sway. Both real scans at hand see their ground rise
# ahead and fall behind (+1.7 deg for 000750, +0.8 for the KITTI object frame 004139;
# bench/real_car_probe.py), where version 3's sway is symmetric about level; levelling
# 000750 lifted version 3's models' recall of its car from 14-53 % to 53-55 %
# (docs/synthetic.md, "Why the real car is still missed").
MOUNT_PITCH = 2.0
# Version 3's grass: tufts on a GRASS_CELL lattice, taller in GRASS_PATCH-metre patches, at
# most GRASS_TALL; the real scan's terrain scatters 17 mm (q90 46 mm) about its local plane,
# twice its road's 8 mm, where version 2's was smoother than its road (4-5 mm against 6-7;
# bench/real_geometry.py).
GRASS_CELL, GRASS_PATCH, GRASS_TALL, GRASS_MAX_SHIFT = 0.15, 6.0, 0.20, 0.5


def value_noise(x: np.ndarray, y: np.ndarray, cell: float, seed: int) -> np.ndarray:
    """Smooth noise in [0, 1): a hashed value per lattice corner, blended with smoothstep."""
    gx, gy = x / cell, y / cell
    ix, iy = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)

    def corner(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        h = (i * 73856093) ^ (j * 19349663) ^ (seed * 83492791)
        h = (h ^ (h >> 13)) * 1274126177
        return ((h ^ (h >> 16)) & 0xFFFF) / 65536.0
    top = corner(ix, iy) * (1 - fx) + corner(ix + 1, iy) * fx
    bottom = corner(ix, iy + 1) * (1 - fx) + corner(ix + 1, iy + 1) * fx
    return top * (1 - fy) + bottom * fy


def grass_height(xy: np.ndarray, seed: int) -> np.ndarray:
    """Grass height (m) over the terrain at world (x, y)."""
    patch = value_noise(xy[:, 0], xy[:, 1], GRASS_PATCH, seed + 1)
    return GRASS_TALL * patch**2 * value_noise(xy[:, 0], xy[:, 1], GRASS_CELL, seed)


def grass_shift(xy: np.ndarray, raw: np.ndarray, cosi: np.ndarray, seed: int) -> np.ndarray:
    """How much shorter a ground return on terrain comes back for its grass: a blade h tall
    meets a ray at incidence cosine cosi h / cosi before the soil (capped at grazing)."""
    h = np.where(raw == RAW_BY_NAME["terrain"], grass_height(xy, seed), 0.0)
    return np.minimum(h / np.maximum(cosi, 1e-3), GRASS_MAX_SHIFT)


# Range noise grows with range: 2 cm (SynthConfig.range_noise) plus 1 mm a metre.
RANGE_NOISE_PER_M = 0.001
_ROAD_REMISSION = REMISSION["road"]  # ground returns: drop decided as for asphalt
# Per-laser intensity gain: the HDL-64E's 64 lasers each answer a surface a little
# differently (each has its own calibration); fixed, as a sensor is.
LASER_GAIN = np.random.default_rng(64).uniform(0.8, 1.2, 64)


def _drop_probability(cfg: SynthConfig, rng_m: np.ndarray, base: np.ndarray, cosi: np.ndarray) -> np.ndarray:
    """Chance a return is lost (above 1: certainly): a floor, more at range, on dark
    surfaces (glass, black paint) and at grazing incidence, most on vehicle glass, always
    on a building's windows."""
    dark = np.clip((0.12 - base) / 0.12, 0.0, 1.0)
    grazing = np.clip((0.15 - cosi) / 0.15, 0.0, 1.0)
    p = cfg.dropout + 0.25 * (rng_m / cfg.max_range) ** 2 + 0.7 * dark + 0.6 * grazing + (base <= NO_RETURN)
    return np.where(base == GLASS, np.maximum(p, GLASS_LOSS), p)


def _remission_lut() -> np.ndarray:
    from ..common.labels import RAW_LABELS

    lut = np.zeros(1 << 16)
    for r in RAW_LABELS:
        lut[r.raw_id] = REMISSION.get(r.name, 0.0)
    return lut


_REMISSION_LUT = _remission_lut()  # built once, not per scan


def _ground_remission(raw: np.ndarray) -> np.ndarray:
    return _REMISSION_LUT[raw]


class ForeignSequenceError(ValueError):
    """A sequence folder with files that m2skd-synth did not write (real data, most likely)."""


class OlderWorldError(ValueError):
    """A sequence begun by an older version of the generator: finishing it with this one
    would mix two worlds (and poses that no longer match its scans)."""


# The generator's version, written into synth.json. Bump it whenever the output for a
# given config changes (world, shapes, sensor, poses): 1, flat ground and boxes (up to
# commit 2146d08); 2, relief and shapes; 3, grass, traffic both ways, tall cars, body
# sway, the class mix retuned; 4, foliage depth (commit 15d1d89, withdrawn: no later world
# takes its number); 5 (a candidate), the sensor pitched forward; 6 (the default since
# 2026-12-05), version 3 with shrub beds along the sidewalk; 7 and 8 (candidates), grass
# strips, and behind them a grass verge and a hedge (SynthConfig.world_version picks 2, 3,
# 5, 6, 7 or 8). A sequence of another version is never resumed nor touched:
# rewriting its poses.txt alone gave scans of the old world the poses of the new one, and
# a fusion that silently misplaced every neighbour (found in the training-mode
# experiment's cache, 2026-12-01).
WORLD_VERSION = WORLD_VERSIONS[-1]  # the newest


def older_world(prior: dict | None, stamp: dict) -> int | None:
    """The version of the generator that wrote `prior` (a folder's synth.json), when it is
    another one than `stamp`'s with otherwise the same settings; None when it is not."""
    if prior is None or prior.get("version") == stamp["version"]:
        return None
    rest = {k: v for k, v in prior.items() if k != "version"}
    return prior.get("version") if rest == {k: v for k, v in stamp.items() if k != "version"} else None


def kept_older_world(seq: kitti_io.Sequence, prior: dict | None, cfg: SynthConfig, labels: bool) -> int | None:
    """The older generator version of `seq` (its synth.json: `prior`, from
    `check_own_folder`) when it is a whole sequence with these settings (to be kept as it
    is); None when it is not of an older version; raises OlderWorldError for a partial one
    (finishing it would mix two worlds)."""
    old = older_world(prior, world_stamp(cfg, labels))
    if old is None or is_complete(seq, cfg.scans, labels):
        return old
    raise OlderWorldError(f"{seq.path}: begun by version {old} of the generator, this is version {cfg.world_version}: "
                          "finishing it would mix two worlds; pass --regenerate to start it again, or write to "
                          "another folder")


def with_labels(name: str, labels: bool | None) -> bool:
    """labels=None: labelled except the test split (11-21), as SemanticKITTI."""
    return name not in TEST_SEQUENCES if labels is None else labels


def is_complete(seq: kitti_io.Sequence, scans: int, labels: bool) -> bool:
    """Every scan (and label) and the poses of a `scans`-scan sequence are on disk."""
    return (seq.path / "poses.txt").is_file() and all(
        seq.scan_path(f).is_file() and (not labels or seq.label_path(f).is_file()) for f in range(scans))


def check_own_folder(folder: Path) -> dict | None:
    """The generator's marker of `folder`, None for a new or empty folder; refuses a folder
    with other files and no marker of ours: the generator replaces scans, labels, poses and
    calibration, and must never do that to a real sequence (no flag changes that)."""
    stamp_path = folder / "synth.json"
    if stamp_path.is_file():
        try:
            stamp = json.loads(stamp_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            stamp = None
        if isinstance(stamp, dict) and stamp.get("generator") == "m2skd-synth":
            return stamp
        raise ForeignSequenceError(f"{folder}: its synth.json is not m2skd-synth's; refusing to write into a "
                                   "sequence the generator did not make: choose another output folder")
    if folder.is_dir() and any(folder.iterdir()):
        raise ForeignSequenceError(f"{folder}: holds files that m2skd-synth did not write (no synth.json: real "
                                   "data?); refusing to write into it: choose another output folder")
    return None


def generate_sequence(
    root: str | Path,
    name: str,
    cfg: SynthConfig,
    labels: bool | None = None,
    on_scan: Callable[[int], None] | None = None,
    regenerate: bool = False,
) -> kitti_io.Sequence:
    """Write one synthetic sequence under ROOT/sequences/NAME; resumes a partial run.

    labels=None writes labels except for the test split (11-21), as SemanticKITTI does.
    A whole sequence written by another version of the generator than `cfg.world_version` with
    the same settings is left as it is, every file untouched (experiments go on reading
    the world they began on); a partial one is refused. `regenerate` replaces either.
    """
    seq = kitti_io.Sequence(Path(root), name)
    labels = with_labels(name, labels)
    stamp = world_stamp(cfg, labels)
    stamp_path = seq.path / "synth.json"
    prior = check_own_folder(seq.path)
    if not regenerate and kept_older_world(seq, prior, cfg, labels) is not None:
        return seq
    resumable = prior == stamp
    if not resumable:
        for sub in ("velodyne", "labels"):
            d = seq.path / sub
            if d.is_dir():
                for f in d.iterdir():
                    f.unlink()
    seq.path.mkdir(parents=True, exist_ok=True)
    _write_if_changed(stamp_path, lambda p: p.write_text(json.dumps(stamp, indent=1)))

    sim = SequenceSim(cfg, name)
    calib = kitti_calib_matrices()
    # rewritten only when their bytes change: a resumed run keeps their mtimes, so the
    # fused cache (whose shards hash their inputs' mtimes) is not rebuilt for nothing
    _write_if_changed(seq.path / "calib.txt", lambda p: kitti_io.write_calib(p, calib))
    _write_if_changed(seq.path / "poses.txt",
                      lambda p: kitti_io.write_poses(p, camera_poses(sim.lidar_poses, calib["Tr"])))
    _write_if_changed(seq.path / "times.txt", lambda p: kitti_io.write_times(p, np.arange(cfg.scans) * cfg.period))
    for frame in range(cfg.scans):
        done = seq.scan_path(frame).is_file() and (not labels or seq.label_path(frame).is_file())
        if not done:
            pts, sem, inst = sim.scan(frame)
            if labels:
                # label before scan: a scan on disk means its label is there too
                kitti_io.write_label(seq.label_path(frame), sem, inst)
            kitti_io.write_scan(seq.scan_path(frame), pts)
        if on_scan is not None:
            on_scan(frame)
    return seq


def world_stamp(cfg: SynthConfig, labels: bool) -> dict:
    """What synth.json records of a sequence: generator, its version, labels, settings."""
    # the version is the stamp's own field (as before it was selectable), so a version-2
    # world's synth.json, and the run records that quote it, read as they always did
    config = {k: v for k, v in cfg.to_dict().items() if k != "world_version"}
    return {"generator": "m2skd-synth", "version": cfg.world_version, "labels": labels, "config": config}


def _write_if_changed(path: Path, write: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as d:
        new = Path(d) / path.name
        write(new)
        data = new.read_bytes()
    if not (path.is_file() and path.read_bytes() == data):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
