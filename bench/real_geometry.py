"""What a model trained on the synthetic world meets in a real scan: the geometry behind
its road and car errors, the real SemanticKITTI scan 000750 beside each generator version.

    python bench/real_geometry.py [--sequence 08] [--scans 12] [--seed 0] [--json FILE]

Measured the same way on every scan (sensor frame):
- roughness of road and terrain: the RMS residual of a plane fitted to each 0.75 m
  neighbourhood (radius in x-y, 5-20 m from the sensor, neighbourhoods spanning 0.4 m
  of range so that they cross rings), median and q90 over neighbourhoods;
- the road plane's slopes ahead and sideways (road points 4-12 m away), in %;
- scatter of vegetation and cars about their local surface: the RMS distance from the
  best plane (smallest principal axis) of each 0.5 m ball (4-25 m away), median over
  sampled balls: leaves scatter a ray's return where a car's body does not;
- cars: instances of 50+ points (synthetic: their instance ids; real: connected 1 m
  cells of car points), how many stand 15-30 m away and how many points those hold, and
  their top over the road plane (q95 of z above it).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from m2skd.common.labels import CLASS_NAMES, raw_to_train
from m2skd.synth.config import WORLD_VERSIONS, SynthConfig
from m2skd.synth.sequence import SequenceSim

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
ROAD, TERRAIN, CAR, VEGETATION = (CLASS_NAMES.index(n) for n in ("road", "terrain", "car", "vegetation"))


def roughness(xyz: np.ndarray, samples: int = 300, seed: int = 0) -> tuple[float, float]:
    """Median and q90 (mm) of the local plane fit's RMS residual over sampled neighbourhoods."""
    r = np.linalg.norm(xyz[:, :2], axis=1)
    pts = xyz[(r > 5) & (r < 20)]
    if len(pts) < 50:
        return float("nan"), float("nan")
    out = []
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(pts), min(samples, len(pts)), replace=False):
        nb = pts[np.hypot(*(pts[:, :2] - pts[i, :2]).T) < 0.75]
        rr = np.linalg.norm(nb[:, :2], axis=1)
        if len(nb) < 8 or np.ptp(rr) < 0.4:
            continue
        a = np.c_[nb[:, :2] - nb[:, :2].mean(0), np.ones(len(nb))]
        res = nb[:, 2] - a @ np.linalg.lstsq(a, nb[:, 2], rcond=None)[0]
        out.append(np.sqrt(np.mean(res**2)))
    return (1000 * float(np.median(out)), 1000 * float(np.percentile(out, 90))) if out else (np.nan, np.nan)


def surface_scatter(xyz: np.ndarray, radius: float = 0.5, samples: int = 300, seed: int = 0) -> float:
    """Median (mm) over sampled 0.5 m balls of the points' RMS distance from their best plane."""
    r = np.linalg.norm(xyz[:, :2], axis=1)
    pts = xyz[(r > 4) & (r < 25)]
    out = []
    for i in np.random.default_rng(seed).choice(len(pts), min(samples, len(pts)), replace=False):
        nb = pts[np.linalg.norm(pts - pts[i], axis=1) < radius]
        if len(nb) >= 8:
            out.append(np.sqrt(np.linalg.eigvalsh(np.cov(nb.T))[0]))
    return 1000 * float(np.median(out)) if out else float("nan")


def road_plane(xyz: np.ndarray, lab: np.ndarray, near: float = 4.0, far: float = 12.0) -> np.ndarray:
    """z = a x + b y + c through the road points near..far metres away."""
    r = np.linalg.norm(xyz[:, :2], axis=1)
    m = (lab == ROAD) & (r > near) & (r < far)
    return np.linalg.lstsq(np.c_[xyz[m, :2], np.ones(m.sum())], xyz[m, 2], rcond=None)[0]


def cells_components(xy: np.ndarray, cell: float = 1.0) -> np.ndarray:
    """Cluster ids of points whose cells touch (8-neighbourhood), for the unlabelled real scan."""
    keys = np.floor(xy / cell).astype(np.int64)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    index = {tuple(k): i for i, k in enumerate(uniq)}
    comp = -np.ones(len(uniq), np.int64)
    for start in range(len(uniq)):
        if comp[start] >= 0:
            continue
        comp[start], stack = start, [start]
        while stack:
            kx, ky = uniq[stack.pop()]
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    j = index.get((kx + dx, ky + dy))
                    if j is not None and comp[j] < 0:
                        comp[j] = start
                        stack.append(j)
    return comp[inv.ravel()]


def cars(xyz: np.ndarray, lab: np.ndarray, inst: np.ndarray | None) -> list[tuple[float, float, int]]:
    """(range m, top over the road plane m, points) of each car of 50+ points."""
    plane = road_plane(xyz, lab, 4.0, 40.0)
    m = lab == CAR
    ids = inst[m] if inst is not None else cells_components(xyz[m, :2])
    out = []
    for i in np.unique(ids):
        p = xyz[m][ids == i]
        if len(p) < 50:
            continue
        over = p[:, 2] - (p[:, :2] @ plane[:2] + plane[2])
        out.append((float(np.median(np.linalg.norm(p[:, :2], axis=1))), float(np.percentile(over, 95)), len(p)))
    return out


def measure_scan(xyz: np.ndarray, lab: np.ndarray, inst: np.ndarray | None) -> dict:
    a, b, _ = road_plane(xyz, lab)
    return {"road": roughness(xyz[lab == ROAD]), "terrain": roughness(xyz[lab == TERRAIN]),
            "vegetation_scatter": surface_scatter(xyz[lab == VEGETATION]),
            "car_scatter": surface_scatter(xyz[lab == CAR]),
            "ahead": 100 * float(a), "side": 100 * float(b), "cars": cars(xyz, lab, inst)}


def measure_synthetic(version: int, sequence: str, scans: int, seed: int) -> list[dict]:
    cfg = SynthConfig.preset("full").override(seed=seed, world_version=version)
    sim = SequenceSim(cfg, sequence)
    out = []
    for f in np.linspace(0, cfg.scans - 1, scans).astype(int):
        pts, sem, inst = sim.scan(int(f))
        out.append(measure_scan(pts[:, :3].astype(np.float64), raw_to_train(sem), inst.astype(np.int64)))
    return out


def summary(per_scan: list[dict]) -> dict:
    cars_all = [c for s in per_scan for c in s["cars"]]
    mid = [c for c in cars_all if 15 <= c[0] <= 30]

    def q(key: str, k: int | None = None) -> list[float]:
        """min and max over the scans of s[key] (of s[key][k] for a pair)."""
        v = [x for x in (s[key] if k is None else s[key][k] for s in per_scan) if np.isfinite(x)]
        return [float(np.min(v)), float(np.max(v))] if v else [np.nan, np.nan]
    return {"scans": len(per_scan), "road_mm": q("road", 0), "terrain_mm": q("terrain", 0),
            "vegetation_scatter_mm": q("vegetation_scatter"), "car_scatter_mm": q("car_scatter"),
            "terrain_q90_mm": q("terrain", 1),
            "ahead_pct": [min(s["ahead"] for s in per_scan), max(s["ahead"] for s in per_scan)],
            "side_pct": [min(s["side"] for s in per_scan), max(s["side"] for s in per_scan)],
            "cars_15_30m": len(mid), "cars": len(cars_all),
            "car_points_15_30m": [float(np.percentile([c[2] for c in mid], q)) for q in (0, 50, 100)] if mid
            else [np.nan] * 3,
            "car_top_m": [float(np.percentile([c[1] for c in cars_all], q)) for q in (0, 50, 100)] if cars_all
            else [np.nan] * 3}


@click.command()
@click.option("--sequence", default="08", show_default=True, help="the synthetic drive (08: residential)")
@click.option("--scans", default=12, show_default=True, help="full-size scans spread over the drive")
@click.option("--seed", default=0, show_default=True, help="world seed")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(sequence: str, scans: int, seed: int, json_path: Path | None) -> None:
    xyz = np.load(REAL / "semantickitti_points_000750.npy").astype(np.float64)
    lab = np.load(REAL / "semantickitti_labels_000750.npy").ravel()
    real = summary([measure_scan(xyz, lab, None)])
    res = {"real 000750": real, **{f"version {v}": summary(measure_synthetic(v, sequence, scans, seed))
                                   for v in WORLD_VERSIONS}}
    t = Table(title=f"real scan 000750 vs synthetic sequence {sequence} (world seed {seed}, {scans} full-size "
                    "scans: min-max over scans)")
    t.add_column("quantity")
    for k in res:
        t.add_column(k)

    def span(v, fmt):
        return f"{v[0]:{fmt}}" if v[0] == v[1] else f"{v[0]:{fmt}} - {v[1]:{fmt}}"
    rows = [("road roughness, median (mm)", lambda s: span(s["road_mm"], ".0f")),
            ("terrain roughness, median (mm)", lambda s: span(s["terrain_mm"], ".0f")),
            ("terrain roughness, q90 (mm)", lambda s: span(s["terrain_q90_mm"], ".0f")),
            ("vegetation scatter about its surface, 0.5 m balls, median (mm)",
             lambda s: span(s["vegetation_scatter_mm"], ".0f")),
            ("car scatter about its surface, 0.5 m balls, median (mm)", lambda s: span(s["car_scatter_mm"], ".0f")),
            ("road slope ahead (%)", lambda s: span(s["ahead_pct"], "+.1f")),
            ("road slope sideways (%)", lambda s: span(s["side_pct"], "+.1f")),
            ("cars of 50+ points, 15-30 m (all scans)", lambda s: f"{s['cars_15_30m']} of {s['cars']}"),
            ("points per car of 50+ points at 15-30 m: median [min, max]",
             lambda s: "{1:.0f} [{0:.0f}, {2:.0f}]".format(*s["car_points_15_30m"])),
            ("car top over the road (q95 per car, m): median [min, max]",
             lambda s: "{1:.2f} [{0:.2f}, {2:.2f}]".format(*s["car_top_m"]))]
    for name, f in rows:
        t.add_row(name, *(f(s) for s in res.values()))
    Console().print(t)
    if json_path:
        json_path.write_text(json.dumps({"sequence": sequence, "scans": scans, "seed": seed, **res}, indent=1))


if __name__ == "__main__":
    main()
