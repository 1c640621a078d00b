"""The evidence harness on tiny data: every control trained, paired differences right,
tables rebuilt from the recorded per-run results alone."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from m2skd.common.labels import CLASS_NAMES
from m2skd.experiments import evidence, stats, tables

from .conftest import SMALL


def _result(arm, seed, miou, hard, fused=None, arm_key="arm"):
    """A recorded run's result as `evidence` writes it, every class at the hard-class IoU."""
    r = {"name": f"{arm}_s{seed}", arm_key: arm, "seed": seed, "stopped_at": 100, "hard_classes": ["person"],
         "report": {"miou": miou, "hard_miou": hard, "iou": dict.fromkeys(CLASS_NAMES[1:], hard)}}
    if fused is not None:
        r["report_fused"] = {"miou": fused, "hard_miou": fused}
    return r


def test_harness_trains_the_controls_and_pairs_them(fused_cache, synth_root, tmp_path):
    out, record = tmp_path / "exp", tmp_path / "record"
    args = ["--cache", str(fused_cache), "--out", str(out), "--seeds", "0,1", "--train-seqs", "00", "--val-seqs", "08",
            "--report-seqs", "08", "--max-steps", "4", "--val-every", "2", "--lanes", "1", "--world", str(synth_root),
            "--device", "cpu", "--record", str(record), "--variants", "aff_only", "--arms", ",".join(evidence.ARMS)]
    # `make experiment-gate`: the gate's arms alone (seed 0 here); their weights are kept for
    # the students a later invocation trains
    r = CliRunner().invoke(evidence.main, [*args, "--arms", "baseline,teacher", "--variants", "", "--seeds", "0"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (record / "teachers").iterdir()) == ["baseline_s0.pt", "teacher_s0.pt"]
    # the gate first: 4-step teachers lead nobody, so only baseline and teacher are trained (seed 0's recorded)
    r = CliRunner().invoke(evidence.main, args, catch_exceptions=False)
    assert "baseline_s0: recorded in" in r.output and "teacher_s0: recorded in" in r.output
    assert r.exit_code == 3 and "the gate is not passed" in r.output, r.output
    assert sorted(p.stem for p in record.glob("*.json")) == ["baseline_s0", "baseline_s1", "teacher_s0", "teacher_s1"]
    assert "**Gate**" in (out / "results.md").read_text()
    r = CliRunner().invoke(evidence.main, [*args, "--skip-gate"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    runs = {x["name"]: x for x in res["runs"]}
    assert set(runs) == {f"{k}_s{s}" for k in (*evidence.ARMS, "m2skd-aff_only") for s in (0, 1)}
    # the students distilled from the right teachers: their config says which view their teacher read
    for s in (0, 1):
        s2 = json.loads((out / "runs" / f"s2skd_s{s}" / "config.json").read_text())
        m2 = json.loads((out / "runs" / f"m2skd_s{s}" / "config.json").read_text())
        # from the weights kept beside the records (the first invocation trained the teachers)
        assert s2["teacher_view"] == "single" and s2["teacher"] == str(record / "teachers" / f"baseline_s{s}.pt")
        assert m2["teacher_view"] == "fused" and m2["teacher"] == str(record / "teachers" / f"teacher_s{s}.pt")
        kept, best = (torch.load(p, weights_only=False) for p in (m2["teacher"], out / "runs" / f"teacher_s{s}" /
                                                                  "best.pt"))
        assert kept["optimizer"] is None and best["optimizer"] is not None and kept["step"] == best["step"]
        assert all(torch.equal(kept["model"][k], v) for k, v in best["model"].items())
        # the ablation: M2SKD's teacher and settings, the feature and logit terms off
        ab = json.loads((out / "runs" / f"m2skd-aff_only_s{s}" / "config.json").read_text())
        assert ab["teacher"] == m2["teacher"] and ab["config"]["distill"]["w_feat"] == 0 == ab["config"]["distill"][
            "w_logit"] and ab["config"]["distill"]["w_aff"] == m2["config"]["distill"]["w_aff"] > 0
    # the online arms: the released values, distillation off in the control; scored on fused scans too
    for s in (0, 1):
        on = json.loads((out / "runs" / f"online_s{s}" / "config.json").read_text())
        off = json.loads((out / "runs" / f"online-nokd_s{s}" / "config.json").read_text())
        assert on["kind"] == off["kind"] == "online" and on["teacher"] is None
        assert on["config"]["distill"]["w_logit"] == 5.0 and on["config"]["distill"]["aff_level"] == "released"
        assert off["config"]["distill"]["w_logit"] == off["config"]["distill"]["w_aff"] == 0.0
        assert off["config"]["distill"]["w_fused"] == on["config"]["distill"]["w_fused"] == 0.2
        assert "report_fused" in runs[f"online_s{s}"]
    gap = res["summary"]["gap_closed"]["online"]
    want = [(runs[f"online_s{s}"]["report"]["hard_miou"] - runs[f"baseline_s{s}"]["report"]["hard_miou"])
            / (runs[f"online_s{s}"]["report_fused"]["hard_miou"] - runs[f"baseline_s{s}"]["report"]["hard_miou"])
            for s in (0, 1)]
    assert gap["share"] == pytest.approx(want)
    # paired differences, recomputed from the per-run scores
    d = [100 * (runs[f"m2skd_s{s}"]["report"]["hard_miou"] - runs[f"s2skd_s{s}"]["report"]["hard_miou"])
         for s in (0, 1)]
    paired = res["summary"]["paired"]["m2skd - s2skd"]["hard_miou"]
    assert paired["mean"] == pytest.approx(sum(d) / 2) and paired["positive"] == sum(x > 0 for x in d)
    d = [100 * (runs[f"m2skd-aff_only_s{s}"]["report"]["miou"] - runs[f"m2skd_s{s}"]["report"]["miou"]) for s in (0, 1)]
    assert res["summary"]["paired"]["m2skd-aff_only - m2skd"]["miou"]["mean"] == pytest.approx(sum(d) / 2)
    assert "| m2skd-aff_only (− m2skd; − baseline) | 2 |" in (out / "results.md").read_text()
    # one budget, no early stop: every run trained its 4 steps; the world and the scores behind the gate recorded
    assert all(r["stopped_at"] == r["budget"] == 4 and r["best_step"] <= 4 for r in runs.values())
    assert all(r["world"]["seed"] == SMALL.seed and r["world"]["generator_version"] == SMALL.world_version
               for r in runs.values())
    base = runs["baseline_s0"]["report"]
    assert sum(base["gt_points"].values()) == base["points"]
    assert base["instances"]["all"][0][1] <= sum(base["gt_points"][c] for c in runs["baseline_s0"]["hard_classes"])
    # the table is rebuilt from the recorded results alone
    again = tmp_path / "again"
    r = CliRunner().invoke(evidence.main, ["--out", str(again), "--rebuild", str(record)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (again / "results.md").read_text() == (out / "results.md").read_text()
    # a later session (data_cache/ gone): recorded runs are not trained again, their records
    # stand in; a run recorded on another world is refused, then trained again when asked
    shutil.rmtree(out / "runs")
    rec = json.loads((record / "s2skd_s1.json").read_text())
    rec["world"]["seed"] += 1
    (record / "s2skd_s1.json").write_text(json.dumps(rec))
    r = CliRunner().invoke(evidence.main, [*args, "--skip-gate", "--out", str(tmp_path / "refused")])
    assert r.exit_code == 1 and "s2skd_s1" in r.output and f"world seed {SMALL.seed + 1}" in r.output, r.output
    assert "--replace-other-world" in r.output and not (tmp_path / "refused" / "runs").exists()
    assert json.loads((record / "s2skd_s1.json").read_text()) == rec
    r = CliRunner().invoke(evidence.main, [*args, "--skip-gate", "--out", str(tmp_path / "later"),
                                           "--replace-other-world"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "later" / "runs").iterdir()) == ["s2skd_s1"]
    assert json.loads((record / "s2skd_s1.json").read_text())["world"]["seed"] == SMALL.seed
    later = json.loads((tmp_path / "later" / "results.json").read_text())
    assert {x["name"]: x for x in later["runs"]}["m2skd_s0"] == runs["m2skd_s0"]


def test_tagged_runs_and_ablations_pair_with_the_right_runs(tmp_path):
    """A tagged set (another window's teacher and student) and the variants: run names,
    the teacher each distils from, and paired differences worked by hand."""
    from m2skd.train.config import TrainConfig

    cfg = TrainConfig.preset("tiny")
    jobs = evidence.jobs_for(cfg, tmp_path, tmp_path / "runs", [3], 10, ("aff_only",), ("teacher", "m2skd"), "-win44")
    assert set(jobs) == {"teacher-win44_s3", "m2skd-win44_s3", "m2skd-aff_only-win44_s3"}
    assert jobs["m2skd-win44_s3"].teacher == jobs["m2skd-aff_only-win44_s3"].teacher == "teacher-win44_s3"
    ablation = jobs["m2skd-aff_only-win44_s3"].cfg.distill
    assert ablation.w_feat == 0 == ablation.w_logit and ablation.w_aff > 0

    def run(arm, seed, miou, hard, fused=None):
        # seed 0 as recorded before the word "arm" ("kind"), seed 1 as now: both are read
        return _result(arm, seed, miou, hard, fused, arm_key="kind" if seed == 0 else "arm")

    results = [run("baseline", 0, .30, .10), run("baseline", 1, .32, .12), run("teacher", 0, .31, .11, .40),
               run("teacher", 1, .33, .13, .42), run("m2skd", 0, .31, .15), run("m2skd", 1, .33, .14),
               run("m2skd-win44", 0, .35, .20), run("m2skd-win44", 1, .30, .12),
               run("teacher-win44", 0, .30, .10, .50), run("teacher-win44", 1, .30, .10, .44)]
    s = evidence.summarise(results)
    d = s["paired"]["m2skd-win44 - m2skd"]["hard_miou"]  # (20 - 15, 12 - 14) points
    assert d["values"] == [5.0, -2.0] and d["mean"] == pytest.approx(1.5) and d["positive"] == 1
    assert s["paired"]["m2skd-win44 - baseline"]["miou"]["values"] == [5.0, -2.0]
    assert s["arms"]["teacher-win44"]["fused"]["miou"]["mean"] == pytest.approx(47.0)
    table = evidence.markdown(s)
    # mIoU 35, 30 against M2SKD's 31, 33: +4, -3; hard 20, 12 against 15, 14: +5, -2;
    # against the baseline's 30, 32: +5, -2 and its 10, 12: +10, 0 (sample sd 7.07)
    assert ("| m2skd-win44 (− m2skd; − baseline) | 2 | 32.5 ± 3.5 | 16.0 ± 5.7 | +0.5 ± 4.9 (1/2 > 0) | "
            "+1.5 ± 4.9 (1/2 > 0) | +1.5 ± 4.9 (1/2 > 0) | +5.0 ± 7.1 (1/2 > 0) | 100 |") in table
    assert "| teacher-win44 (− teacher; fused input 47.0 / 47.0 hard, teacher's 41.0 / 41.0) | 2 |" in table
    # a run continued past its plateau pairs with the baseline continued alike
    results += [run("baseline-long", 0, .40, .20), run("m2skd-long", 0, .41, .24)]
    s = evidence.summarise(results)
    assert s["derived"]["m2skd-long"] == {"reference": "m2skd", "baseline": "baseline-long"}
    assert s["paired"]["m2skd-long - baseline-long"]["hard_miou"]["values"] == [4.0]
    assert s["paired"]["baseline-long - baseline"]["miou"]["values"] == [10.0]


def test_extend_continues_copies_of_the_students_and_keeps_the_teachers(fused_cache, tmp_path):
    """`--extend N`: copies named KIND-long of the runs that teach none of the others, with
    early stopping off, resuming from the copied checkpoint; the teachers stay themselves."""
    from m2skd.train.engine.checkpoint import load_checkpoint
    from m2skd.train.engine.trainer import RunSpec, train

    from .conftest import tiny_train_config

    cfg = tiny_train_config(val_every=1, patience=1)
    runs = tmp_path / "runs"
    jobs = evidence.jobs_for(cfg, fused_cache, runs, [0], 2, arms=("baseline", "teacher", "m2skd"))
    train(RunSpec(kind="baseline", cfg=cfg, cache=fused_cache, out=runs / "baseline_s0", steps=2, seed=0,
                  progress=False, device="cpu"))
    longer = evidence.extend_jobs(jobs, 5)
    assert set(longer) == {"teacher_s0", "baseline-long_s0", "m2skd-long_s0"}
    assert longer["teacher_s0"] == jobs["teacher_s0"] and longer["m2skd-long_s0"].teacher == "teacher_s0"
    job = longer["baseline-long_s0"]
    assert job.cfg.runtime.patience == 0 and job.steps == 5 and job.out == runs / "baseline-long_s0"
    assert load_checkpoint(job.out / "last.pt")["step"] == 2  # the copy, ready to resume
    assert not (runs / "m2skd-long_s0").exists()  # nothing to copy: it starts from scratch


def test_instance_size_diagnosis_by_hand():
    """Diagnosis (c)'s counting on a scan worked by hand: instances are (class, id > 0)
    pairs, binned by their point count, recall = points labelled right / points."""
    import numpy as np

    from m2skd.experiments.instance_size import instance_hits, predicted_as, size_bins

    labels = np.array([2, 2, 2, 6, 6, 10, 2, 2])
    instance = np.array([1, 1, 1, 1, 1, 3, 2, 0])  # bicycle 1 (3 pts), person 1 (2), parking 3, bicycle 2 (1), no id
    pred = np.array([2, 2, 0, 6, 2, 10, 2, 2])
    cls, points, right = instance_hits(labels, instance, pred, (2, 6))
    assert cls.tolist() == [2, 2, 6] and points.tolist() == [3, 1, 2] and right.tolist() == [2, 1, 1]
    bins = size_bins(cls, points, right, (2, 6), edges=(1, 3))
    assert bins == {"bicycle": [[1, 1, 1], [1, 3, 2]], "person": [[1, 2, 1], [0, 0, 0]], "all": [[2, 3, 2], [1, 3, 2]]}
    conf = np.zeros((len(CLASS_NAMES),) * 2, np.int64)
    np.add.at(conf, (labels, pred), 1)
    # bicycle's five labelled points (instance or not): four called bicycle, one unlabeled
    assert predicted_as(conf, (2, 6)) == {"bicycle": {"bicycle": 0.8, "unlabeled": 0.2},
                                          "person": {"bicycle": 0.5, "person": 0.5}}


def test_width_diagnosis_runs_wider_networks_beside_the_tiny_ones(fused_cache, tmp_path):
    """--width 2: the three arms at twice the tiny widths, tagged w2 (never mixed into the
    tiny runs' folders), the student taught by the wide teacher and paired with the wide baseline."""
    out = tmp_path / "exp"
    args = ["--cache", str(fused_cache), "--out", str(out), "--seeds", "0", "--train-seqs", "00", "--val-seqs", "08",
            "--report-seqs", "08", "--max-steps", "2", "--val-every", "2", "--patience", "1", "--lanes", "1",
            "--device", "cpu", "--arms", "baseline,teacher,m2skd", "--width", "2"]
    r = CliRunner().invoke(evidence.main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["baseline-w2_s0", "m2skd-w2_s0", "teacher-w2_s0"]
    from m2skd.train.config import TrainConfig

    tiny = TrainConfig.preset("tiny").model
    for arm in ("baseline", "teacher", "m2skd"):
        model = json.loads((out / "runs" / f"{arm}-w2_s0" / "config.json").read_text())["config"]["model"]
        assert model["point_widths"] == [2 * w for w in tiny.point_widths] and model["init_size"] == 2 * tiny.init_size
    m2 = json.loads((out / "runs" / "m2skd-w2_s0" / "config.json").read_text())
    assert m2["teacher"].endswith("teacher-w2_s0/best.pt")
    paired = json.loads((out / "results.json").read_text())["summary"]["paired"]
    assert "m2skd-w2 - baseline-w2" in paired


def test_paired_interval_and_the_targets_verdict_by_hand():
    """The t interval of paired differences and the issue's target, on runs worked by hand."""
    # m2skd - baseline on hard classes: +1, +2, +3 points; mIoU +1, +1, +1; teacher's fused gap 4, 4, 4
    results = []
    for s, b in enumerate((.10, .20, .30)):
        results += [_result("baseline", s, b, b), _result("teacher", s, b, b, fused=b + .04),
                    _result("m2skd", s, b + .01, b + .01 * (s + 1)),
                    _result("online", s, b + .01, b + .03, fused=b - .01)]  # its fused view below the baseline
    s = evidence.summarise(results)
    # mean 2, sd 1, t(0.975, 2) = 4.303: 2 -+ 4.303 / sqrt(3)
    lo, hi = s["paired"]["m2skd - baseline"]["hard_miou"]["ci95"]
    assert lo == pytest.approx(2 - 4.303 / 3 ** .5, abs=1e-3) and hi == pytest.approx(2 + 4.303 / 3 ** .5, abs=1e-3)
    v = s["verdict"]["m2skd"]
    assert (v["hard_ahead"], v["seeds"]) == (3, 3) and v["miou_diff"] == pytest.approx(1.0)
    assert v["gap_share"] == pytest.approx(6 / 12) and v["met"]  # 3 of 3 ahead, mIoU +1, half the gap
    # online: ahead everywhere, yet its "teacher" is below the baseline: a share of a negative gap is no share
    assert s["verdict"]["online"]["gap_share"] == pytest.approx(9 / -3) and not s["verdict"]["online"]["met"]
    assert "| m2skd | 3/3 | +2.0 [-0.5, +4.5] | +1.0 [+1.0, +1.0] | 0.50 | yes |" in evidence.markdown(s)


def test_an_interrupted_experiment_ends_in_one_line_and_exit_130(fused_cache, tmp_path, monkeypatch):
    """Ctrl-C in a run: the runs finished before it are recorded, the rest resume; no traceback.
    A lane's TrainInterrupted crosses the process boundary whole (pickled with its step)."""
    import pickle

    from m2skd.experiments import lanes
    from m2skd.train.engine.trainer import TrainInterrupted

    again = pickle.loads(pickle.dumps(TrainInterrupted(tmp_path / "last.pt", 41)))
    assert (again.ckpt, again.step) == (tmp_path / "last.pt", 41) and "step 41" in str(again)
    trained = []

    def fake_run(job, teacher, device, progress, init=None):
        if job.kind != "baseline":
            raise TrainInterrupted(job.out / "last.pt", 7)
        trained.append(job.out.name)
        return job.out / "last.pt"

    monkeypatch.setattr(lanes, "_run", fake_run)
    recorded = []
    monkeypatch.setattr(evidence, "run_result", lambda name, *a: recorded.append(name) or {"name": name})
    kept = []  # the baseline teaches S2SKD: its weights are kept (a stand-in file, the runs are fakes)

    def fake_keep(src, dst):
        kept.append(src.name)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(b"w")

    monkeypatch.setattr(evidence, "keep_weights", fake_keep)
    r = CliRunner().invoke(evidence.main, ["--cache", str(fused_cache), "--out", str(tmp_path / "exp"),
                                           "--seeds", "0", "--arms", "baseline,teacher", "--lanes", "1",
                                           "--train-seqs", "00", "--val-seqs", "08", "--report-seqs", "08",
                                           "--record", str(tmp_path / "rec")])
    assert r.exit_code == 130 and "Traceback" not in r.output, r.output
    assert "interrupted: 1 of 2 runs finished" in r.output and "resumes" in r.output
    assert trained == recorded == ["baseline_s0"] and (tmp_path / "rec" / "baseline_s0.json").is_file()
    assert kept == ["last.pt"] and (tmp_path / "rec" / "teachers" / "baseline_s0.pt").is_file()


def test_gate_and_plateau_by_hand():
    """The gate over the hard classes present (a class without ground truth in the report
    set is left out), per seed, and the baseline's plateau, from numbers worked by hand."""
    def rec(arm, seed, iou_person, iou_truck, fused=None, curve=()):
        r = _result(arm, seed, 0.5, 0.0)
        r["hard_classes"] = ["person", "truck", "motorcyclist"]
        r["report"]["iou"].update(person=iou_person, truck=iou_truck, motorcyclist=0.0)
        r["report"]["gt_points"] = {"person": 10, "truck": 5, "motorcyclist": 0}
        if fused is not None:
            r["report_fused"] = {"miou": 0.6, "hard_miou": 0.0, "iou": {"person": fused[0], "truck": fused[1],
                                 "motorcyclist": 0.0}, "gt_points": r["report"]["gt_points"]}
        r["val_curve"] = list(curve)
        return r

    # seed 0: baseline (0.20 + 0.10) / 2 = 0.15, teacher (0.30 + 0.06) / 2 = 0.18: +3.0 points (>= 3)
    # seed 1: baseline 0.15, teacher (0.17 + 0.15) / 2 = 0.16: +1.0
    results = [rec("baseline", 0, 0.20, 0.10, curve=[(1000, 0.40), (2000, 0.44), (3000, 0.45), (4000, 0.47)]),
               rec("teacher", 0, 0.0, 0.0, fused=(0.30, 0.06)),
               rec("baseline", 1, 0.20, 0.10, curve=[(1000, 0.30), (2000, 0.36), (3000, 0.37), (4000, 0.39)]),
               rec("teacher", 1, 0.0, 0.0, fused=(0.17, 0.15))]
    g = evidence.gate(results)
    assert [r["present"] for r in g["rows"]] == [["person", "truck"]] * 2
    assert [round(r["lead"], 6) for r in g["rows"]] == [3.0, 1.0]
    assert g["ahead"] == 1 and not g["passed"]  # 1 of 2 < 80 %
    results[3]["report_fused"]["iou"]["person"] = 0.23  # (0.23 + 0.15) / 2 - 0.15 = +4.0
    assert evidence.gate(results)["passed"]
    # mean curve: 35, 40, 41, 43 (%); window 2000: last (41 + 43) / 2 = 42, before (35 + 40) / 2 = 37.5
    p = stats.plateau(results, window=2000)
    assert p["end"] == 4000 and p["last"] == pytest.approx(42.0) and p["gain"] == pytest.approx(4.5)


def test_transfer_and_small_instance_recall_by_hand():
    """Per class the teacher's gain beside the student's, with the seeds where the student
    moves with a gaining teacher; small bicycle/person instances' recall per arm."""
    edges = [1, 10, 30, 100, 300]

    def rec(arm, seed, person, truck, bins=None, fused=None):
        r = _result(arm, seed, 0.5, 0.0)
        r["hard_classes"] = ["person", "truck", "motorcyclist"]
        r["report"]["iou"].update(person=person, truck=truck, motorcyclist=0.0)
        r["report"]["gt_points"] = {"person": 10, "truck": 5, "motorcyclist": 0}
        if bins is not None:  # [instances, points, right] per size bin
            r["report"]["instances"] = {"person": bins, "bicycle": [[0, 0, 0]] * 5}
            r["report"]["instance_edges"] = edges
        if fused is not None:
            r["report_fused"] = {"miou": 0.6, "hard_miou": 0.0, "iou": {"person": fused[0], "truck": fused[1],
                                                                      "motorcyclist": 0.0}}
        return r

    b = [[2, 8, 2], [1, 20, 5], [0, 0, 0], [0, 0, 0], [0, 0, 0]]
    results = [rec("baseline", 0, 0.20, 0.30, b), rec("teacher", 0, 0.0, 0.0, fused=(0.30, 0.25)),
               rec("m2skd", 0, 0.25, 0.28, [[2, 8, 4], [1, 20, 10], [0, 0, 0], [0, 0, 0], [0, 0, 0]]),
               rec("baseline", 1, 0.10, 0.30, b), rec("teacher", 1, 0.0, 0.0, fused=(0.30, 0.35)),
               rec("m2skd", 1, 0.08, 0.31, b)]
    t = stats.transfer(results)
    assert set(t) == {"person", "truck"}  # motorcyclist has no ground truth in the report set
    # person: teacher +10, +20 -> +15; m2skd +5, -2 -> +1.5, moving with the teacher in 1 of 2 seeds
    assert t["person"]["teacher"] == pytest.approx(15.0) and t["person"]["m2skd"] == pytest.approx(1.5)
    assert t["person"]["m2skd_toward"] == 1
    # truck: teacher -5, +5 -> 0.0: no gain, so "moving with it" is not counted
    assert t["truck"]["teacher"] == pytest.approx(0.0) and t["truck"]["m2skd_toward"] is None
    r = stats.small_recall(results)
    # baseline: person 1-9: 2/8 = 25 %, 10-29: 5/20 = 25 %; m2skd seed 0: 50 %, 50 %, seed 1: 25 %, 25 %
    assert r["baseline"]["person 1-9"]["mean"] == pytest.approx(25.0)
    assert r["m2skd"]["person 10-29"]["mean"] == pytest.approx(37.5)
    assert "bicycle 1-9" not in r["baseline"]  # no point of a small bicycle: no recall, not 0 %
    md = tables.transfer_markdown({"transfer": t}) + tables.recall_markdown({"small_recall": r})
    assert "| person | +15.0 | +1.5 (1/2) |" in md


def test_kd_forward_probe_pairs_each_arm_with_its_control(fused_cache, tmp_path):
    """The probe that picks `--kd-forward`'s default, at its smallest size: every arm
    fine-tunes from the start baseline's weights, is scored on the val sequences, and is
    paired with its control (differences recomputed here from the recorded val mIoUs)."""
    from m2skd.experiments import kd_forward_probe as probe
    from m2skd.train.config import TrainConfig
    from m2skd.train.engine.checkpoint import load_checkpoint
    from m2skd.train.engine.trainer import RunSpec, train

    cfg = TrainConfig.preset("tiny").override(workers=0, train_sequences=("00",))  # the probe's network
    teacher = train(RunSpec(kind="teacher", cfg=cfg, cache=fused_cache, out=tmp_path / "t", steps=2, progress=False))
    record = tmp_path / "probe.json"
    r = CliRunner().invoke(probe.main, ["--cache", str(fused_cache), "--out", str(tmp_path / "p"), "--teacher",
                                        str(teacher), "--train-seqs", "00", "--val-seqs", "08", "--start", "2",
                                        "--steps", "2", "--seeds", "0", "--lanes", "1", "--device", "cpu",
                                        "--record", str(record)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(record.read_text())["arms"]
    assert set(res) == set(probe.ARMS)
    start = load_checkpoint(tmp_path / "p" / "runs" / "start" / "last.pt")
    for arm in probe.ARMS:
        state = load_checkpoint(tmp_path / "p" / "runs" / f"{arm}_s0" / "last.pt")
        assert state["init_digest"] == start["digest"] and state["step"] == 2
        assert state["config"]["distill"]["kd_forward"] == probe.ARMS[arm][1].get("kd_forward", "clean")
    for arm, ctrl in probe.CONTROL.items():
        assert res[arm]["diff"] == pytest.approx(res[arm]["val_miou"]["0"] - res[ctrl]["val_miou"]["0"])


def test_kd_forward_probe_pairing_by_hand():
    got = probe_paired({"seg_s0": 0.40, "seg_s1": 0.42, "kl-clean_s0": 0.39, "kl-clean_s1": 0.43,
                        "nodrop_s0": 0.41, "nodrop-kl_s0": 0.38})
    assert got["kl-clean"]["diffs"] == pytest.approx([-1.0, 1.0]) and got["kl-clean"]["diff"] == pytest.approx(0.0)
    assert got["nodrop-kl"]["diff"] == pytest.approx(-3.0) and got["nodrop"]["diff"] == pytest.approx(1.0)
    assert "diff" not in got["seg"]


def probe_paired(results):
    from m2skd.experiments.kd_forward_probe import paired

    return paired(results)


def test_the_tables_hard_class_miou_leaves_out_a_class_absent_from_the_report_set():
    """Issue 30's metric: hard-class mIoU over the hard classes present in the report set.
    The gate did so; the main table and the gap closed averaged in motorcyclist (no instance
    in 08-10, IoU 0 whatever the model), 7/6 of the real figure. Worked by hand below."""
    def rec(arm, seed, person, truck, fused=None):
        r = _result(arm, seed, 0.5, 0.0)
        r["hard_classes"] = ["person", "truck", "motorcyclist"]
        r["report"]["iou"].update(person=person, truck=truck, motorcyclist=0.0)
        r["report"]["hard_miou"] = (person + truck) / 3  # what the evaluator records: over all three
        r["report"]["gt_points"] = {"person": 10, "truck": 5, "motorcyclist": 0}
        if fused is not None:
            r["report_fused"] = {"miou": 0.6, "hard_miou": sum(fused) / 3, "gt_points": r["report"]["gt_points"],
                                 "iou": {"person": fused[0], "truck": fused[1], "motorcyclist": 0.0}}
        return r

    # baseline (0.20 + 0.10) / 2 = 15.0; M2SKD (0.30 + 0.14) / 2 = 22.0; teacher fused (0.40 + 0.20) / 2 = 30.0
    s = stats.summarise([rec("baseline", 0, 0.20, 0.10), rec("teacher", 0, 0.0, 0.0, fused=(0.40, 0.20)),
                         rec("m2skd", 0, 0.30, 0.14)])
    assert round(s["arms"]["baseline"]["hard_miou"]["mean"], 6) == 15.0
    assert round(s["arms"]["m2skd"]["hard_miou"]["mean"], 6) == 22.0
    assert round(s["arms"]["teacher"]["fused"]["hard_miou"]["mean"], 6) == 30.0
    assert round(s["paired"]["m2skd - baseline"]["hard_miou"]["mean"], 6) == 7.0
    assert [round(x, 6) for x in s["gap_closed"]["m2skd"]["share"]] == [round(7.0 / 15.0, 6)]
