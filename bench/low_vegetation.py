"""The real scan's low vegetation beside the synthetic world's, and beside its cars: the
shape of what the sim-to-real models call car (docs/synthetic.md, "A yardstick trained
four times longer").

    python bench/low_vegetation.py [--world-version 6] [--scans 4] [--json FILE]

Trained long enough to tell their own world's near vegetation from its cars, the yardstick's
models still call a quarter of the real scan's near vegetation car. This measures, with
no model, how that vegetation's surface looks to the sensor, beside the synthetic world's
near vegetation and near cars (the same definition as bench/real_car_probe.py: 3-10 m
from the sensor, under 1.3 m over the ground's height at the sensor), on the real
labelled scan 000750 and on `--scans` scans of drive 08 (world seed 0, full size):
- the local surface's orientation: the normal of the points within 0.3 m of a point (the
  smallest principal axis, 6 points at least), horizontal when |n_z| > 0.8 (a top seen
  from above: a bonnet, a roof, a hedge's top), vertical when |n_z| < 0.3 (a side);
- the scatter about that surface (the smallest axis's sd, median, mm);
- the height a 0.5 m column of it spans (median over columns of 3+ points, m);
- its height over the ground at the sensor (q10 / q50 / q90, m), and its distance from
  the sensor (q10 / q50 / q90, m): where it stands.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from m2skd.common.atomic import atomic_path
from m2skd.common.labels import CLASS_NAMES, raw_to_train
from m2skd.synth.cli import world_version_option
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import SequenceSim
from m2skd.synth.world import SENSOR_HEIGHT

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
VEGETATION, CAR = CLASS_NAMES.index("vegetation"), CLASS_NAMES.index("car")


def near(xyz: np.ndarray, labels: np.ndarray, cls: int) -> np.ndarray:
    """Points of `cls` 3-10 m from the sensor and under 1.3 m over the ground's height at
    the sensor (KITTI's HDL-64E stands SENSOR_HEIGHT over it): for vegetation, the hedges
    and bushes at car height where the false cars were (bench/real_car_probe.py uses it)."""
    r = np.linalg.norm(xyz[:, :2], axis=1)
    return (labels == cls) & (r > 3) & (r < 10) & (xyz[:, 2] + SENSOR_HEIGHT < 1.3)


def normals(xyz: np.ndarray, at: np.ndarray, radius: float = 0.3, least: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """For each point of `at`: the unit normal of the points of `xyz` within `radius` (the
    principal axis of least spread) and the sd along it; rows with fewer than `least`
    neighbours are dropped. Brute force over the points near `at`'s bounding box."""
    lo, hi = at.min(0) - radius, at.max(0) + radius
    cand = xyz[np.all((xyz >= lo) & (xyz <= hi), axis=1)]
    ns, sds = [], []
    for p in at:
        nb = cand[np.abs(cand - p).max(1) < radius]
        nb = nb[np.linalg.norm(nb - p, axis=1) < radius]
        if len(nb) < least:
            continue
        q = nb - nb.mean(0)
        w, v = np.linalg.eigh(q.T @ q / len(q))
        ns.append(v[:, 0])
        sds.append(np.sqrt(max(w[0], 0.0)))
    return np.array(ns).reshape(-1, 3), np.array(sds)


def column_extent(pts: np.ndarray, size: float = 0.5, least: int = 3) -> np.ndarray:
    """The height (max z - min z) of each `size` x `size` column holding `least`+ points."""
    cols = np.floor(pts[:, :2] / size).astype(np.int64)
    _, inv, counts = np.unique(cols, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    zmax = np.full(len(counts), -np.inf)
    zmin = np.full(len(counts), np.inf)
    np.maximum.at(zmax, inv, pts[:, 2])
    np.minimum.at(zmin, inv, pts[:, 2])
    return (zmax - zmin)[counts >= least]


def shape(xyz: np.ndarray, mask: np.ndarray, sample: int = 800) -> dict:
    """The four measures above for the points under `mask` (normals on an even sample of
    at most `sample` of them)."""
    pts = xyz[mask]
    if len(pts) == 0:
        return {"points": 0}
    n, sd = normals(xyz, pts[:: max(1, len(pts) // sample)])
    nz = np.abs(n[:, 2])
    return {"points": len(pts), "horizontal": float((nz > 0.8).mean()) if len(nz) else float("nan"),
            "vertical": float((nz < 0.3).mean()) if len(nz) else float("nan"),
            "scatter_mm": float(1000 * np.median(sd)) if len(sd) else float("nan"),
            "column_extent_m": float(np.median(column_extent(pts))),
            "height_q10_q50_q90_m": [float(x) for x in np.percentile(pts[:, 2] + SENSOR_HEIGHT, [10, 50, 90])],
            "range_q10_q50_q90_m": [float(x) for x in np.percentile(np.linalg.norm(pts[:, :2], axis=1),
                                                                        [10, 50, 90])]}


@click.command(help=__doc__)
@world_version_option()
@click.option("--scans", type=click.IntRange(1), default=4, show_default=True,
              help="synthetic scans of drive 08 (world seed 0), spread over the drive")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="write the result JSON here")
def main(world_version: int, scans: int, json_path: Path | None) -> None:
    xyz = np.load(REAL / "semantickitti_points_000750.npy").astype(np.float64)
    labels = np.load(REAL / "semantickitti_labels_000750.npy").astype(np.int64).ravel()
    rows = {"real 000750: near vegetation": shape(xyz, near(xyz, labels, VEGETATION)),
            "real 000750: every car point (21 m and beyond)": shape(xyz, labels == CAR)}
    synth = SynthConfig.preset("full").override(seed=0, world_version=world_version)
    sim = SequenceSim(synth, "08")
    for f in np.linspace(0, synth.scans - 1, scans).astype(int):
        p, sem, _ = sim.scan(int(f))
        p, lab = p[:, :3].astype(np.float64), raw_to_train(sem).astype(np.int64)
        rows[f"version {world_version}, drive 08 frame {f}: near vegetation"] = shape(p, near(p, lab, VEGETATION))
        rows[f"version {world_version}, drive 08 frame {f}: near car"] = shape(p, near(p, lab, CAR))
    t = Table(title=f"low vegetation: the real scan 000750 beside synthetic version {world_version}")
    for col in ("", "points", "horizontal %", "vertical %", "scatter (mm)", "column height (m)",
                "height q10 / q50 / q90 (m)", "distance q10 / q50 / q90 (m)"):
        t.add_column(col, justify="right")
    for name, r in rows.items():
        if not r["points"]:
            t.add_row(name, "0", *[""] * 6)
            continue
        t.add_row(name, str(r["points"]), f"{100 * r['horizontal']:.0f}", f"{100 * r['vertical']:.0f}",
                  f"{r['scatter_mm']:.0f}", f"{r['column_extent_m']:.2f}",
                  " / ".join(f"{x:.2f}" for x in r["height_q10_q50_q90_m"]),
                  " / ".join(f"{x:.1f}" for x in r["range_q10_q50_q90_m"]))
    Console().print(t)
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            tmp.write_text(json.dumps({"world_version": world_version, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
