"""Is it the real car or the real street? Cars swapped between the real scan 000750 and
synthetic scans, read by the models `bench/sim_to_real.py` trained (docs/synthetic.md,
"Which is missed: the car or its street").

    python bench/car_swap.py --runs data_cache/sim2real-v6/run,data_cache/sim2real-v6/run_s1 \
        --world-version 6 [--frames 12] [--json FILE]

The yardstick's models find about 95 % of a synthetic car's points and a quarter or less
of the real car's. Two explanations: the real car's own points (its shape as the sensor
sampled it) are unlike any synthetic car, or its surroundings are (the real street makes
the models doubt a car that would pass in a synthetic one). A swap tells them apart:
- the real scan's near car (211 points, 20-24 m ahead, seen from behind and its right
  side) is cut out and a synthetic car put in its place, and the other way round: the
  real car put into a synthetic scan in place of one of its cars;
- a car is moved only by a turn about the sensor's vertical axis (to the other car's
  bearing; the sensor's rings stay the rings it was sampled on) and a lift that sets it
  on the ground under the other car (the median height of the ground points within 2-5 m
  of it); only synthetic cars at about the real car's range (18-25 m, 80+ points) are
  swapped;
- each car is moved alone, or with every point within `--radii` metres of it (its street
  comes along, and the receiving scene loses what stood there);
- controls: each car where it was recorded (the real car in the real scan, the synthetic
  car in its own scan), and each synthetic car moved into another synthetic scan's slot
  the same way (what moving alone costs);
- then what in the real street does it: the real scan with one class deleted within
  `--cut-radii` metres of its car (terrain, vegetation, both, sidewalk, building, fence).
Read per model: the share of the moved car's points called car. No remission (the real
scan has none; the yardstick trains without it). Without a model, the same street measured
around the training drives' cars (00-05 of world seed 0, 10-30 m away, 50+ points): the
terrain within 6 m and the vegetation within 10 m of each, beside the real car's.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import torch
from real_car_probe import REAL, _predict, runs_option  # this folder's bench
from rich.console import Console
from rich.table import Table

from m2skd.common.atomic import atomic_path
from m2skd.common.labels import CLASS_NAMES, raw_to_train
from m2skd.synth.cli import world_version_option
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import SequenceSim
from m2skd.train.engine.checkpoint import load_model

CAR, TERRAIN, VEGETATION = (CLASS_NAMES.index(n) for n in ("car", "terrain", "vegetation"))
GROUND = [CLASS_NAMES.index(n) for n in ("road", "parking", "sidewalk", "other-ground", "terrain")]
RANGE = (18.0, 25.0)  # the real near car's points lie 20.6-24.3 m away


class Slot:
    """A scene with one car in it: where to put another car (with or without its
    surroundings), and what it was."""

    def __init__(self, name: str, xyz: np.ndarray, labels: np.ndarray, car: np.ndarray) -> None:
        self.name, self.xyz, self.labels, self.car = name, xyz, labels, car
        self.centre = xyz[car, :2].mean(0)
        self.bearing = float(np.arctan2(self.centre[1], self.centre[0]))
        self.dist = np.linalg.norm(xyz[:, :2] - self.centre, axis=1)  # from the car's centre, in plan
        ground = np.isin(labels, GROUND) & ~car & (self.dist > 2.0) & (self.dist < 5.0)
        if ground.sum() < 10:
            raise ValueError(f"{name}: fewer than 10 ground points 2-5 m from the car")
        self.ground = float(np.median(xyz[ground, 2]))

    @property
    def points(self) -> int:
        return int(self.car.sum())

    def piece(self, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The car and, for `radius` > 0, every point within `radius` of its centre in plan:
        (xyz, labels, is this car)."""
        m = self.car | (self.dist < radius)
        return self.xyz[m], self.labels[m], self.car[m]

    def swapped(self, other: Slot, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This scene with its car (and its points within `radius`) replaced by `other`'s,
        turned to this car's bearing and set on this car's ground: (xyz, labels, moved car)."""
        xyz, labels, car = other.piece(radius)
        t = self.bearing - other.bearing
        c, s = np.cos(t), np.sin(t)
        xyz = xyz @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        xyz[:, 2] += self.ground - other.ground
        keep = ~(self.car | (self.dist < radius))
        moved = np.zeros(int(keep.sum()) + len(xyz), bool)
        moved[int(keep.sum()):] = car
        return np.concatenate([self.xyz[keep], xyz]), np.concatenate([self.labels[keep], labels]), moved


def real_slot() -> Slot:
    xyz = np.load(REAL / "semantickitti_points_000750.npy").astype(np.float64)
    labels = np.load(REAL / "semantickitti_labels_000750.npy").astype(np.int64).ravel()
    car = (labels == CAR) & (xyz[:, 0] > 18) & (xyz[:, 0] < 27) & (xyz[:, 1] > 1) & (xyz[:, 1] < 7)
    return Slot("real 000750", xyz, labels, car)


def synthetic_slots(world_version: int, frames: int) -> list[Slot]:
    """Cars of drive 08 (world seed 0, not trained on) at the real car's range, one a
    frame at most (the one with the most points), over `frames` frames of the drive."""
    cfg = SynthConfig.preset("full").override(seed=0, world_version=world_version)
    sim = SequenceSim(cfg, "08")
    slots = []
    for f in np.linspace(0, cfg.scans - 1, frames).astype(int):
        pts, sem, inst = sim.scan(int(f))
        xyz, labels = pts[:, :3].astype(np.float64), raw_to_train(sem).astype(np.int64)
        best = None
        for i in np.unique(inst[labels == CAR]):
            m = (inst == i) & (labels == CAR)
            r = float(np.linalg.norm(xyz[m, :2].mean(0)))
            if RANGE[0] <= r <= RANGE[1] and m.sum() >= 80 and (best is None or m.sum() > best.sum()):
                best = m
        if best is not None:
            slots.append(Slot(f"08/{f:06d}", xyz, labels, best))
    return slots


def _around(labels: np.ndarray, dist: np.ndarray) -> tuple[int, int]:
    return int(((labels == TERRAIN) & (dist < 6)).sum()), int(((labels == VEGETATION) & (dist < 10)).sum())


def surroundings(world_version: int, real: Slot, frames: int = 6) -> dict:
    """Terrain points within 6 m and vegetation points within 10 m (in plan) of each car of
    the training drives 00-05 (world seed 0, `frames` frames a drive, 10-30 m away, 50+
    points), and the real car's: is the real car's street one the models ever saw a car in?"""
    cfg = SynthConfig.preset("full").override(seed=0, world_version=world_version)
    counts = []
    for name in ("00", "01", "02", "03", "04", "05"):
        sim = SequenceSim(cfg, name)
        for f in np.linspace(0, cfg.scans - 1, frames).astype(int):
            pts, sem, inst = sim.scan(int(f))
            xyz, labels = pts[:, :3].astype(np.float64), raw_to_train(sem).astype(np.int64)
            for i in np.unique(inst[labels == CAR]):
                m = (inst == i) & (labels == CAR)
                c = xyz[m, :2].mean(0)
                if m.sum() >= 50 and 10 <= np.linalg.norm(c) <= 30:
                    counts.append(_around(labels, np.linalg.norm(xyz[:, :2] - c, axis=1)))
    a = np.array(counts, float).reshape(-1, 2)
    mine = _around(real.labels, real.dist)
    return {"cars": len(a), "real_car": {"terrain_within_6_m": mine[0], "vegetation_within_10_m": mine[1]},
            **{key: {"q50": float(np.median(a[:, j])) if len(a) else 0.0,
                     "q90": float(np.percentile(a[:, j], 90)) if len(a) else 0.0,
                     "max": float(a[:, j].max()) if len(a) else 0.0,
                     "share_at_least_the_real_car": float((a[:, j] >= mine[j]).mean()) if len(a) else 0.0}
               for j, key in enumerate(("terrain_within_6_m", "vegetation_within_10_m"))},
            # the real car's street has both: grass beside it and greenery past it
            "share_with_both_as_much_as_the_real_car":
                float(((a[:, 0] >= mine[0]) & (a[:, 1] >= mine[1])).mean()) if len(a) else 0.0}


def found(model, cfg, slot: Slot, other: Slot, radius: float) -> float:
    """The share of `other`'s car's points called car once moved into `slot`."""
    xyz, labels, moved = slot.swapped(other, radius)
    return float((_predict(model, cfg, xyz, labels)[moved] == CAR).mean())


def probe(ckpt: Path, real: Slot, synth: list[Slot], radii: tuple[float, ...], cut_radii: tuple[float, ...]) -> dict:
    model, cfg, _ = load_model(ckpt, torch.device("cpu"))
    n = len(synth)
    out = {"real_car_in_real_scan": found(model, cfg, real, real, 0.0),
           "synthetic_car_in_own_scan": [found(model, cfg, s, s, 0.0) for s in synth],
           "real_car_with_classes_cut": cut(model, cfg, real, cut_radii)}
    for r in radii:
        out[f"within_{r:g}_m"] = {
            "synthetic_car_in_real_scan": [found(model, cfg, real, s, r) for s in synth],
            "real_car_in_synthetic_scan": [found(model, cfg, s, real, r) for s in synth],
            # control: slot k takes the car of slot k+1 (what the move alone costs)
            "synthetic_car_in_other_synthetic_scan": [found(model, cfg, synth[k], synth[(k + 1) % n], r)
                                                      for k in range(n)],
        }
    return out


# What in the real street hides its car: the real scan with one ground or background
# class deleted near the car (the holes left are like a scan's shadows), read the same way.
CUT = {"terrain": ("terrain",), "vegetation": ("vegetation",), "terrain and vegetation": ("terrain", "vegetation"),
       "sidewalk": ("sidewalk",), "building": ("building",), "fence": ("fence",)}


def cut(model, cfg, real: Slot, radii: tuple[float, ...]) -> dict:
    """The share of the real car's points called car with each of CUT's classes deleted
    within each radius of the car (in plan)."""
    out = {}
    for name, classes in CUT.items():
        for r in radii:
            keep = ~(np.isin(real.labels, [CLASS_NAMES.index(c) for c in classes]) & (real.dist < r) & ~real.car)
            pred = _predict(model, cfg, real.xyz[keep], real.labels[keep])
            out[f"{name} within {r:g} m"] = float((pred[real.car[keep]] == CAR).mean())
    return out


SWAPS = (("synthetic cars moved to other synthetic scans (control)", "synthetic_car_in_other_synthetic_scan"),
         ("synthetic cars moved into the real scan", "synthetic_car_in_real_scan"),
         ("the real car moved into synthetic scans", "real_car_in_synthetic_scan"))


def _radii(_ctx, _param, value: str) -> tuple[float, ...]:
    try:
        radii = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated distances in metres, such as 0,3,6") from None
    if not radii or min(radii) < 0:
        raise click.BadParameter(f"{value!r}: give one or more distances of 0 m or more")
    return radii


@click.command(help=__doc__)
@runs_option
@world_version_option("the version the models were trained on (the synthetic scans' world)")
@click.option("--frames", type=click.IntRange(2), default=12, show_default=True,
              help="frames of drive 08 (world seed 0) to look for a car at the real car's range")
@click.option("--radii", default="0,3,6,10", show_default=True, callback=_radii,
              help="move each car with every point within this distance of it (m, in plan; 0: the car alone)")
@click.option("--cut-radii", default="6,10,20", show_default=True, callback=_radii,
              help="delete each class of CUT within these distances of the real car (m, in plan)")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the result JSON here")
def main(runs: list[Path], world_version: int, frames: int, radii: tuple[float, ...], cut_radii: tuple[float, ...],
         json_path: Path | None) -> None:
    torch.set_num_threads(1)
    real = real_slot()
    synth = synthetic_slots(world_version, frames)
    if len(synth) < 2:
        raise click.ClickException(f"only {len(synth)} synthetic car(s) at {RANGE[0]:.0f}-{RANGE[1]:.0f} m in "
                                   f"{frames} frames of drive 08: ask for more --frames")
    res = {str(p): probe(p / "last.pt", real, synth, radii, cut_radii) for p in runs}
    t = Table(title=f"share of a car's points called car, % (the real car: {real.points} points; "
                    f"{len(synth)} synthetic cars: {', '.join(s.name for s in synth)})")
    t.add_column("car, scene")
    for p in runs:
        t.add_column(p.name, justify="right")
    t.add_column("mean", justify="right")

    def row(label: str, get) -> None:
        vals = [float(np.mean(get(res[str(p)]))) for p in runs]
        t.add_row(label, *(f"{100 * v:.0f}" for v in vals), f"{100 * np.mean(vals):.1f}")

    row("the real car in the real scan (as recorded)", lambda r: r["real_car_in_real_scan"])
    row("synthetic cars in their own scans (as recorded)", lambda r: r["synthetic_car_in_own_scan"])
    for rad in radii:
        for label, key in SWAPS:
            row(f"{label}, with what lies within {rad:g} m", lambda r, k=key, rd=rad: r[f"within_{rd:g}_m"][k])
    for name in CUT:
        for rad in cut_radii:
            row(f"the real car, {name} deleted within {rad:g} m of it",
                lambda r, k=f"{name} within {rad:g} m": r["real_car_with_classes_cut"][k])
    Console().print(t)
    around = surroundings(world_version, real)
    Console().print(f"around the cars of the training drives 00-05 ({around['cars']} cars at 10-30 m): terrain within "
                    + "; vegetation within ".join(
                        f"{k.split('_')[2]} m q50 {v['q50']:.0f}, q90 {v['q90']:.0f}, max {v['max']:.0f} points "
                        f"(the real car: {around['real_car'][k]}; {100 * v['share_at_least_the_real_car']:.0f} % "
                        "of cars as many or more)"
                        for k, v in around.items() if k.endswith("_m"))
                    + f"; both: {100 * around['share_with_both_as_much_as_the_real_car']:.0f} % of cars")
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps({
                "world_version": world_version, "radii_m": list(radii), "cut_radii_m": list(cut_radii),
                "real_car": {"points": real.points, "bearing_deg": np.degrees(real.bearing), "ground_z": real.ground},
                "synthetic_cars": [{"scan": s.name, "points": s.points, "bearing_deg": np.degrees(s.bearing),
                                    "range_m": float(np.linalg.norm(s.centre)), "ground_z": s.ground} for s in synth],
                "training_cars_surroundings": around, "runs": res}, indent=1))


if __name__ == "__main__":
    main()
