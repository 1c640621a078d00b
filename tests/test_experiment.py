"""The evidence harness on tiny data: every control trained, paired differences right,
tables rebuilt from the recorded per-run results alone."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from m2skd.experiments import evidence


def test_harness_trains_the_controls_and_pairs_them(fused_cache, tmp_path):
    out, record = tmp_path / "exp", tmp_path / "record"
    args = ["--cache", str(fused_cache), "--out", str(out), "--seeds", "0,1", "--train-seqs", "00", "--val-seqs", "08",
            "--report-seqs", "08", "--max-steps", "4", "--val-every", "2", "--patience", "1", "--lanes", "1",
            "--device", "cpu", "--record", str(record), "--variants", "aff_only"]
    r = CliRunner().invoke(evidence.main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    runs = {x["name"]: x for x in res["runs"]}
    assert set(runs) == {f"{k}_s{s}" for k in (*evidence.KINDS, "m2skd-aff_only") for s in (0, 1)}
    # the students distilled from the right teachers: their config says which view their teacher read
    for s in (0, 1):
        s2 = json.loads((out / "runs" / f"s2skd_s{s}" / "config.json").read_text())
        m2 = json.loads((out / "runs" / f"m2skd_s{s}" / "config.json").read_text())
        assert s2["teacher_view"] == "single" and s2["teacher"].endswith(f"baseline_s{s}/best.pt")
        assert m2["teacher_view"] == "fused" and m2["teacher"].endswith(f"teacher_s{s}/best.pt")
        # the ablation: M2SKD's teacher and settings, the feature and logit terms off
        ab = json.loads((out / "runs" / f"m2skd-aff_only_s{s}" / "config.json").read_text())
        assert ab["teacher"] == m2["teacher"] and ab["config"]["distill"]["w_feat"] == 0 == ab["config"]["distill"][
            "w_logit"] and ab["config"]["distill"]["w_aff"] == m2["config"]["distill"]["w_aff"] > 0
    # paired differences, recomputed from the per-run scores
    d = [100 * (runs[f"m2skd_s{s}"]["report"]["hard_miou"] - runs[f"s2skd_s{s}"]["report"]["hard_miou"])
         for s in (0, 1)]
    paired = res["summary"]["paired"]["m2skd - s2skd"]["hard_miou"]
    assert paired["mean"] == pytest.approx(sum(d) / 2) and paired["positive"] == sum(x > 0 for x in d)
    d = [100 * (runs[f"m2skd-aff_only_s{s}"]["report"]["miou"] - runs[f"m2skd_s{s}"]["report"]["miou"]) for s in (0, 1)]
    assert res["summary"]["paired"]["m2skd-aff_only - m2skd"]["miou"]["mean"] == pytest.approx(sum(d) / 2)
    assert "| aff_only | 2 |" in (out / "results.md").read_text()
    assert all(r["stopped_at"] <= 4 and r["best_step"] <= r["stopped_at"] for r in runs.values())
    # the table is rebuilt from the recorded results alone
    again = tmp_path / "again"
    r = CliRunner().invoke(evidence.main, ["--out", str(again), "--rebuild", str(record)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert (again / "results.md").read_text() == (out / "results.md").read_text()
