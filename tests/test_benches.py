"""Every benchmark script and experiment entry point runs end to end at its smallest size
(issue "Benchmarks that cannot rot"): exit 0 and its table printed. A README figure whose
script no longer runs is a figure nobody can check; these tests say so the day it breaks.
The numbers themselves are not checked here: a bench measures, a test does not time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REAL, SMALL

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


# script -> (smallest arguments, a phrase its table prints); {cache} and {tmp} are filled in
BENCHES = {
    "cache_layout.py": (["--scans", "2"], "bytes and loader speed"),
    "car_swap.py": (["--runs", "{tmp}/s2r/run", "--radii", "0", "--cut-radii", "6"],
                    "share of a car's points called car"),
    "deploy_speed.py": (["--runs", "1", "--presets", "tiny", "--device", "cpu"], "deployment on cpu"),
    "fuse_throughput.py": (["--scans", "3", "--reference-scans", "1"], "fusion of 3 full-size scans"),
    "low_vegetation.py": (["--scans", "1"], "low vegetation: the real scan 000750"),
    "paired_sim2real.py": (["{repo}/docs/sim2real/pitch_control_v3.json", "{repo}/docs/sim2real/pitch_v5.json"],
                           "paired by training seed"),
    "paper_step.py": (["--cache", "{cache}", "--preset", "tiny", "--steps", "1", "--amp", "off", "--device", "cpu"],
                      "tiny preset, batch 2"),
    "real_car_probe.py": (["--runs", "{tmp}/s2r/run", "--scans", "1"], "why the real car is missed"),
    "real_geometry.py": (["--scans", "2"], "real scan 000750 vs synthetic"),
    "sim_to_real.py": (["--out", "{tmp}/s2r", "--sequences", "00", "--scans", "3", "--steps", "2",
                        "--train-seeds", "0,1", "--world-version", "3", "--jobs", "2"],
                       "scored on SemanticKITTI 000750"),
    "synth_realism.py": (["--split", "00", "--scans", "2", "--seeds", "0,1", "--world-version", "3"],
                         "range over the seeds"),
    "train_step.py": (["--cache", "{cache}", "--steps", "1"], "training step, tiny preset"),
}


def test_every_bench_script_has_a_smoke_row():
    scripts = {p.name for p in (REPO / "bench").glob("*.py")}
    assert scripts == set(BENCHES), f"add a row for {sorted(scripts - set(BENCHES))} (or drop {set(BENCHES) - scripts})"


@pytest.mark.parametrize("script", sorted(BENCHES))
def test_bench_runs_at_its_smallest_size(script, fused_cache, tmp_path):
    needs_real = script in ("car_swap.py", "low_vegetation.py", "real_car_probe.py", "real_geometry.py",
                            "sim_to_real.py", "synth_realism.py")
    if needs_real and not (REAL / "semantickitti_points_000750.npy").is_file():
        pytest.skip("needs the real scan of shared/data/real")
    args, phrase = BENCHES[script]
    args = [a.format(cache=fused_cache, tmp=tmp_path, repo=REPO) for a in args]
    if script in ("car_swap.py", "real_car_probe.py"):  # they probe what sim_to_real.py trained: one such model first
        s2r = _run([sys.executable, str(REPO / "bench" / "sim_to_real.py"), "--out", str(tmp_path / "s2r"),
                    "--sequences", "00", "--scans", "2", "--steps", "1"], cwd=tmp_path)
        assert s2r.returncode == 0, s2r.stderr[-3000:]
    scratch = tmp_path / "tempdir"  # the bench's own temp dir: whatever it makes there must go when it ends
    scratch.mkdir()
    r = _run([sys.executable, str(REPO / "bench" / script), *args], cwd=tmp_path, env={"TMPDIR": str(scratch)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert phrase in r.stdout, r.stdout[-3000:]
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("m2skd")], "the bench left its world behind"


def test_gpu_check_script_parses():
    """bench/gpu_check.sh needs a GPU (nvidia-smi, the CUDA test run): on CPU its syntax is
    checked; every bench it calls runs above."""
    r = _run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")], cwd=REPO)
    assert r.returncode == 0, r.stderr
    called = set(re.findall(r"bench/\w+\.py", (REPO / "bench" / "gpu_check.sh").read_text()))
    assert called and called <= {f"bench/{s}" for s in BENCHES}, called


def test_demo_runs_at_its_smallest_size(synth_root, fused_cache, tmp_path):
    """...and its results.json names the world the cache was fused from (`--data`, as
    `make demo` passes it): the fused cache alone does not know it."""
    r = _run([sys.executable, "-m", "m2skd.experiments.demo", "--cache", str(fused_cache), "--out", str(tmp_path / "d"),
              "--steps", "2", "--teacher-steps", "2", "--train-seqs", "00", "--val-seqs", "08", "--workers", "0",
              "--lanes", "1", "--no-plots", "--data", str(synth_root)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "M2SKD demo" in r.stdout and (tmp_path / "d" / "results.json").is_file()
    world = json.loads((tmp_path / "d" / "results.json").read_text())["setup"]["world"]
    assert world == {"seed": SMALL.seed, "generator_version": SMALL.world_version}


def test_experiment_runs_every_arm_at_its_smallest_size(fused_cache, tmp_path):
    r = _run([sys.executable, "-m", "m2skd.experiments.evidence", "--cache", str(fused_cache), "--out",
              str(tmp_path / "e"), "--train-seqs", "00", "--val-seqs", "08", "--report-seqs", "08", "--max-steps", "2",
              "--val-every", "1", "--seeds", "0", "--lanes", "1", "--skip-gate"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    results = (tmp_path / "e" / "results.md").read_text()
    for arm in ("baseline", "teacher", "s2skd", "m2skd", "online", "online-nokd"):
        assert arm in results, results
    r = _run([sys.executable, "-m", "m2skd.experiments.instance_size", "--cache", str(fused_cache), "--runs",
              str(tmp_path / "e" / "runs"), "--seeds", "0", "--report-seqs", "08", "--record",
              str(tmp_path / "size.json")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "all hard classes" in r.stdout and (tmp_path / "size.json").is_file()


def test_tuning_script_runs_at_its_smallest_size(fused_cache, tmp_path):
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "m2skd-train").exists() or shutil.which("bash") is None:
        pytest.skip("needs the installed m2skd-train beside this python")
    r = _run(["bash", str(REPO / "experiments" / "tuning_released_logit.sh")], cwd=REPO,
             env={"CACHE": str(fused_cache), "OUT": str(tmp_path / "t"), "BIN": str(bin_dir), "T_STEPS": "2",
                  "S_STEPS": "2", "TRAIN": "00"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p.name for p in (tmp_path / "t").glob("*.json")} == {"B600.json", "S600_released.json",
                                                                  "S600_default.json", "T1200_fused.json"}


def test_fingerprint_runs_and_is_deterministic_at_one_step(tmp_path):
    """The refactor check (docs/extending.md): two runs on the same code give the same bytes."""
    outs = []
    for i in range(2):
        out = tmp_path / f"fp{i}.json"
        r = _run([sys.executable, "-m", "m2skd.experiments.fingerprint", "--out", str(out), "--steps", "1"],
                 cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and b'"runs"' in outs[0]


def test_sim_to_real_views_are_the_turns_and_mirrors_of_the_scan():
    """The 24 views the real scan is scored under: rigid turns about z (heights and
    distances kept), half of them mirrored (orientation reversed), none twice, the first the
    scan itself (the reading recorded before the views)."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("sim_to_real", REPO / "bench" / "sim_to_real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    xyz = rng.normal(0, 10, (50, 3)).astype(np.float32)
    out = mod.views(xyz)
    assert len(out) == 24
    np.testing.assert_array_equal(out[0], xyz)

    def orientation(p):  # sign of the signed area of the first three points' xy triangle
        a, b, c = p[:3, :2].astype(np.float64)
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    d0 = np.linalg.norm(xyz[:, None] - xyz[None], axis=2)
    for k, v in enumerate(out):
        np.testing.assert_allclose(v[:, 2], xyz[:, 2])
        np.testing.assert_allclose(np.linalg.norm(v[:, None] - v[None], axis=2), d0, atol=1e-3)
        assert orientation(v) == (1 if k < 12 else -1) * orientation(xyz)
    flat = {tuple(np.round(v[0], 3)) for v in out}
    assert len(flat) == 24


def test_paired_sim2real_pairs_by_seed_hand_worked(tmp_path):
    """Two records that share seeds 1 and 2 (seed 0 only in the first, seed 3 only in the
    second): car IoU 10 -> 30 % on seed 1 and 20 -> 10 % on seed 2 gives +20 and -10
    points, mean +5, sd 15 * sqrt(2), one seed ahead, one behind; unpaired seeds are left out."""
    import importlib.util
    import json

    import numpy as np

    spec = importlib.util.spec_from_file_location("paired_sim2real", REPO / "bench" / "paired_sim2real.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run(car: float, road: float) -> dict:
        v = {"iou": {"car": car, "road": road}, "six_mean": 0.5, "true_car_by_view": [10, 30],
             "false_car_by_view": [100, 100]}
        return {"iou": {"car": 0.0, "road": 0.0}, "six_mean": 0.0, "views": v}

    before = {"runs": {"0": run(0.9, 0.9), "1": run(0.1, 0.5), "2": run(0.2, 0.5)}}
    after = {"runs": {"1": run(0.3, 0.5), "2": run(0.1, 0.5), "3": run(0.9, 0.9)}}
    res = mod.paired(mod.per_seed(before, "views"), mod.per_seed(after, "views"))
    car = res["car"]
    assert car["seeds"] == [1, 2]
    assert np.allclose(car["before"], [10, 20]) and np.allclose(car["after"], [30, 10])
    assert np.isclose(car["diff_mean"], 5.0) and np.isclose(car["diff_sd"], 15 * np.sqrt(2))
    assert (car["ahead"], car["behind"], car["tied"]) == (1, 1, 0)
    assert (res["road"]["ahead"], res["road"]["tied"]) == (0, 2)
    assert np.isclose(res["car points found"]["mean_after"], 20.0)
    recorded = mod.paired(mod.per_seed(before, "recorded"), mod.per_seed(after, "recorded"))
    assert recorded["car"]["diff_mean"] == 0.0 and "car points found" not in recorded
    (tmp_path / "a.json").write_text(json.dumps(before))
    (tmp_path / "b.json").write_text(json.dumps({"runs": {"7": run(0.1, 0.1)}}))
    r = _run([sys.executable, str(REPO / "bench" / "paired_sim2real.py"), str(tmp_path / "a.json"),
              str(tmp_path / "b.json")], cwd=tmp_path)
    assert r.returncode != 0 and "no training seed in both records" in r.stderr


def test_low_vegetation_reads_tops_sides_and_columns_hand_worked():
    """A flat 1 x 1 m patch (a top seen from above) gives normals along z, a wall along y
    (a side) normals in the plane, a tilted plane z = x (45 degrees) neither; a column of
    points from 0.2 to 0.9 m spans 0.7 m, a column of 2 points is left out."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("low_vegetation", REPO / "bench" / "low_vegetation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    g = np.stack(np.meshgrid(np.arange(0, 1.0, 0.05), np.arange(0, 1.0, 0.05)), -1).reshape(-1, 2)
    top = np.c_[g, np.full(len(g), 0.8)]
    wall = np.c_[g[:, 0], np.full(len(g), 5.0), g[:, 1]]
    slope = np.c_[g[:, 0], g[:, 1] + 10.0, g[:, 0]]
    for pts, nz in ((top, 1.0), (wall, 0.0), (slope, np.sqrt(0.5))):
        n, sd = mod.normals(pts, pts[::37])
        assert len(n) > 5 and np.allclose(np.abs(n[:, 2]), nz, atol=1e-6) and np.allclose(sd, 0, atol=1e-6)
    col = np.array([[0.1, 0.1, 0.2], [0.2, 0.2, 0.9], [0.3, 0.3, 0.5], [2.1, 2.1, 0.0], [2.2, 2.2, 3.0]])
    assert np.allclose(mod.column_extent(col), [0.7])
    xyz = np.r_[top + np.array([4.0, 0.0, -1.73]), wall]  # the top 4-5 m away, 0.8 m over the ground at the sensor
    labels = np.r_[np.full(len(top), mod.VEGETATION), np.full(len(wall), mod.CAR)]
    r = mod.shape(xyz, mod.near(xyz, labels, mod.VEGETATION))
    assert r["points"] == len(top) and r["horizontal"] == 1.0 and r["vertical"] == 0.0
    assert np.allclose(r["height_q10_q50_q90_m"], 0.8)
    assert 4.0 <= r["range_q10_q50_q90_m"][0] <= r["range_q10_q50_q90_m"][2] <= np.hypot(4.95, 0.95) + 1e-9


def test_car_swap_moves_a_car_by_a_turn_and_a_lift_hand_worked():
    """Two scenes, each a square of road and a 3 x 1 m car of 6 points: the first car 20 m
    ahead (bearing 0) on ground at z = -1.7, the second 20 m to the left (bearing 90 deg)
    on ground at -1.2. The first car moved into the second scene lies 20 m to the left,
    0.5 m higher and turned a quarter (its length across), the second scene's own car gone;
    with a radius of 2.75 m the first scene's road within it comes along and the second's goes."""
    import importlib.util

    import numpy as np

    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("car_swap", REPO / "bench" / "car_swap.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "bench"))
    road = mod.CLASS_NAMES.index("road")
    g = np.stack(np.meshgrid(np.arange(-6.0, 6.01, 0.5), np.arange(-6.0, 6.01, 0.5)), -1).reshape(-1, 2)
    car = np.stack(np.meshgrid([-1.5, 0.0, 1.5], [-0.5, 0.5]), -1).reshape(-1, 2)

    def scene(cx: float, cy: float, z: float) -> mod.Slot:
        at = np.array([cx, cy])
        xyz = np.r_[np.c_[g + at, np.full(len(g), z)], np.c_[car + at, np.full(len(car), z + 1.0)]]
        labels = np.r_[np.full(len(g), road), np.full(len(car), mod.CAR)]
        return mod.Slot("s", xyz, labels, labels == mod.CAR)

    a, b = scene(20.0, 0.0, -1.7), scene(0.0, 20.0, -1.2)
    assert np.isclose(a.ground, -1.7) and np.isclose(b.ground, -1.2) and np.isclose(np.degrees(b.bearing), 90.0)
    xyz, labels, moved = b.swapped(a, 0.0)
    assert moved.sum() == 6 and (labels[moved] == mod.CAR).all() and (labels == mod.CAR).sum() == 6
    turned = np.c_[-car[:, 1], car[:, 0] + 20.0, np.full(6, -0.2)]  # (x, y) -> (-y, x), then 0.5 m up
    np.testing.assert_allclose(np.sort(xyz[moved], axis=0), np.sort(turned, axis=0), atol=1e-9)
    xyz, labels, moved = b.swapped(a, 2.75)  # no grid point lies exactly 2.75 m from a centre
    within = np.linalg.norm(xyz[:, :2] - np.array([0.0, 20.0]), axis=1) < 2.75
    assert len(xyz) == len(g) + 6 and moved.sum() == 6  # as many road points left b as came from a
    assert (within & ~moved).sum() == (np.linalg.norm(g, axis=1) < 2.75).sum()
    np.testing.assert_allclose(xyz[within & ~moved, 2], -1.2)  # a's road, lifted onto b's ground
