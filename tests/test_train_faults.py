"""What a user can do wrong with `m2skd-train`, and the test-split export."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from m2skd.common import kitti_io, outputs
from m2skd.common.labels import LEARNING_MAP_INV
from m2skd.common.outputs import OutputError
from m2skd.train.engine.checkpoint import CheckpointError, keep_weights, load_checkpoint
from m2skd.train.engine.trainer import RunSpec, TrainError, train

from .conftest import RAW_OF_TRAIN, by_hand_class, by_hand_model, raw_scan, tiny_train_config


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m2skd.train.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _spec(cache, out, kind="baseline", steps=2, **kw):
    cfg = tiny_train_config("polarnet", **kw.pop("cfg", {}))
    return RunSpec(kind=kind, cfg=cfg, cache=cache, out=out, steps=steps, seed=1, progress=False, **kw)


@pytest.fixture(scope="module")
def baseline_ckpt(fused_cache, tmp_path_factory) -> Path:
    return train(_spec(fused_cache, tmp_path_factory.mktemp("b") / "run"))


def test_resume_refuses_what_it_would_not_honour(fused_cache, baseline_ckpt, tmp_path):
    out = baseline_ckpt.parent
    before = (out / "config.json").read_text()
    with pytest.raises(TrainError, match=r"resuming with other settings.*lr: run 0\.001 vs now 0\.5"):
        train(_spec(fused_cache, out, steps=4, resume="yes", cfg={"lr": 0.5}))
    with pytest.raises(TrainError, match="past the 1 steps asked"):
        train(_spec(fused_cache, out, steps=1, resume="yes"))
    with pytest.raises(TrainError, match="--resume and --force contradict"):
        train(_spec(fused_cache, out, steps=4, resume="yes", force=True))
    with pytest.raises(TrainError, match="nothing to resume"):
        train(_spec(fused_cache, tmp_path / "fresh", steps=4, resume="yes"))
    assert (out / "config.json").read_text() == before  # nothing recorded that was not used
    assert not (tmp_path / "fresh").exists()
    # what changes neither the result nor its order may change
    train(_spec(fused_cache, out, steps=3, resume="yes", cfg={"log_every": 5}))


def test_weights_kept_for_teaching_teach_but_do_not_resume(fused_cache, baseline_ckpt, tmp_path):
    kept = keep_weights(baseline_ckpt, tmp_path / "kept" / "baseline.pt")
    full, slim = torch.load(baseline_ckpt, weights_only=False), load_checkpoint(kept)  # load checks the digest
    assert slim["optimizer"] is None and full["optimizer"] is not None
    assert kept.stat().st_size < 0.6 * baseline_ckpt.stat().st_size
    assert slim["model"].keys() == full["model"].keys()
    assert all(torch.equal(slim["model"][k], v) for k, v in full["model"].items())
    student = train(_spec(fused_cache, tmp_path / "student", kind="student", teacher=kept))
    assert load_checkpoint(student)["teacher_digest"] == slim["digest"] != full["digest"]
    run = tmp_path / "copied"
    run.mkdir()
    (run / "last.pt").write_bytes(kept.read_bytes())
    with pytest.raises(CheckpointError, match=r"weights only.*--init"):
        train(_spec(fused_cache, run, steps=4, resume="yes"))


def test_a_run_saved_before_a_knob_existed_resumes_with_its_default(fused_cache, tmp_path):
    """A checkpoint whose config lacks a knob (saved by an older version) resumes when the
    knob keeps its default, and is refused when it is set to something else."""
    out = tmp_path / "old"
    train(_spec(fused_cache, out, steps=2))
    state = torch.load(out / "last.pt", weights_only=False)
    del state["config"]["optim"]["lovasz_weight"], state["digest"]  # (older versions saved no digest either)
    torch.save(state, out / "last.pt")
    with pytest.raises(TrainError, match=r"lovasz_weight: run 1.0 vs now 0.5"):
        train(_spec(fused_cache, out, steps=3, resume="yes", cfg={"lovasz_weight": 0.5}))
    # a baseline computes no distillation term: those knobs (here one it lacks) change nothing in it
    del state["config"]["distill"]["kd_forward"]
    torch.save(state, out / "last.pt")
    train(_spec(fused_cache, out, steps=3, resume="yes", cfg={"kd_where": "correct"}))
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 3


def test_a_run_saved_before_a_default_changed_keeps_its_old_behaviour(fused_cache, tmp_path):
    """Knobs whose default changed (voxel loss, z not scaled, Cylinder3D's bn1): a config that
    lacks them ran the old way, and resumes and loads that way (`LEGACY`)."""
    from m2skd.train.engine.checkpoint import checkpoint_config

    out = tmp_path / "old"
    train(_spec(fused_cache, out, steps=2, cfg={"seg_on": "point", "scale_z": True}))
    state = torch.load(out / "last.pt", weights_only=False)
    del state["config"]["optim"]["seg_on"], state["config"]["augment"]["scale_z"]
    del state["config"]["model"]["context_bn1"], state["digest"]
    torch.save(state, out / "last.pt")
    cfg = checkpoint_config(state, out / "last.pt")
    assert (cfg.optim.seg_on, cfg.augment.scale_z, cfg.model.context_bn1) == ("point", True, False)
    with pytest.raises(TrainError, match=r"seg_on: run point vs now voxel"):
        train(_spec(fused_cache, out, steps=3, resume="yes"))
    train(_spec(fused_cache, out, steps=3, resume="yes", cfg={"seg_on": "point", "scale_z": True,
                                                              "context_bn1": False}))


def test_cli_validates_options_and_outputs_up_front(fused_cache, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    base = ["baseline", "--cache", str(fused_cache), "--model", "polarnet", "--steps", "1", "--workers", "0",
            "--train-sequences", "00"]
    for extra, message in ((["--out", str(f)], "is a file"),
                           (["--out", str(f / "sub")], "is a file"),
                           (["--out", str(tmp_path / "a"), "--checkpoint-every", "0"], "--checkpoint-every must be"),
                           (["--out", str(tmp_path / "b"), "--device", "tpu"], "--device 'tpu'")):
        r = _cli(*base, *extra, cwd=tmp_path)
        # click refuses a file where a folder is expected itself (usage error, exit 2)
        assert r.returncode in (1, 2) and "rror: " in r.stderr and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_full_disk_is_refused_before_the_first_step(fused_cache, tmp_path, monkeypatch):
    """Up front (item 16 of the data-safety issue): not at the first save, after the training."""
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
    with pytest.raises(OutputError, match=r"not enough free disk space for checkpoint last\.pt"):
        train(_spec(fused_cache, tmp_path / "run", steps=50))
    assert not list((tmp_path / "run").glob("*.pt")) and not list((tmp_path / "run").glob(".*.tmp"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step was trained


def test_piped_output_shows_plain_progress_lines(fused_cache, tmp_path):
    r = _cli("baseline", "--cache", str(fused_cache), "--model", "polarnet", "--steps", "3", "--workers", "0",
             "--train-sequences", "00", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("baseline (polarnet): 3/3")]
    assert len(lines) == 1 and "seg" in lines[0] and "scans/s" in lines[0], r.stderr


def test_eval_refuses_unlabelled_sequences(baseline_ckpt, synth_root, tmp_path):
    r = _cli("eval", "--ckpt", str(baseline_ckpt), "--data", str(synth_root), "--sequences", "11", cwd=tmp_path)
    assert r.returncode == 1 and "have no labels" in r.stderr and "m2skd-train predict" in r.stderr, r.stderr


def test_predict_writes_one_valid_raw_id_per_point_and_resumes(baseline_ckpt, synth_root, tmp_path):
    out = tmp_path / "sub"
    r = _cli("predict", "--ckpt", str(baseline_ckpt), "--data", str(synth_root), "--sequences", "11",
             "--out", str(out), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    seq = kitti_io.Sequence(synth_root, "11")
    assert not seq.has_labels
    valid = set(LEARNING_MAP_INV[1:])
    for f in seq.frames():
        raw = np.fromfile(kitti_io.Sequence(out, "11").prediction_path(f), np.uint32)
        assert len(raw) == len(kitti_io.read_scan(seq.scan_path(f)))
        assert set(np.unique(raw).tolist()) <= valid and not (raw >> 16).any()
    with zipfile.ZipFile(out / "submission.zip") as z:
        names = set(z.namelist())
    assert {"sequences/", "sequences/11/", "sequences/11/predictions/"} <= names
    assert len([n for n in names if n.endswith(".label")]) == len(seq.frames())
    # a rerun skips every finished scan; a truncated file is redone
    first = kitti_io.Sequence(out, "11").prediction_path(0)
    first.write_bytes(first.read_bytes()[:8])
    r = _cli("predict", "--ckpt", str(baseline_ckpt), "--data", str(synth_root), "--sequences", "11",
             "--out", str(out), "--quiet", cwd=tmp_path)
    assert r.returncode == 0 and f"1 scans predicted, {len(seq.frames()) - 1} already done" in r.stderr, r.stderr
    assert first.stat().st_size == 4 * len(kitti_io.read_scan(seq.scan_path(0)))


def test_predict_writes_the_labels_of_logits_set_by_hand(synth_root, tmp_path):
    """Every point's written raw id is the one its hand-set logits choose (from its x in the
    raw .bin, mapped by the benchmark's table written out by hand), in the scan's order."""
    from m2skd.train.evaluation.export import predict_sequences

    written, _ = predict_sequences(by_hand_model(), tiny_train_config(), synth_root, ["11"], tmp_path,
                                   torch.device("cpu"), show=False)
    frames = sorted(int(p.stem) for p in (synth_root / "sequences" / "11" / "velodyne").glob("*.bin"))
    assert written == len(frames) > 0
    for f in frames:
        pts, _ = raw_scan(synth_root, "11", f)
        raw = np.fromfile(tmp_path / "sequences" / "11" / "predictions" / f"{f:06d}.label", np.uint32)
        np.testing.assert_array_equal(raw, RAW_OF_TRAIN[by_hand_class(pts[:, 0])])
    assert len(np.unique(raw)) > 5  # the scan spans many metres of x: many classes written


def test_dry_run_times_steps_and_writes_nothing(fused_cache, tmp_path):
    r = _cli("baseline", "--cache", str(fused_cache), "--model", "polarnet", "--epochs", "40", "--workers", "0",
             "--train-sequences", "00", "--out", str(tmp_path / "run"), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "s/step" in r.stderr and "an epoch of 12 scans (6 steps)" in r.stderr and "(240 steps)" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signame,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_ctrl_c_saves_the_step_reached_exits_130_and_resumes_bit_identically(fused_cache, tmp_path, signame, code):
    """Item 15 of the data-safety issue: Ctrl-C ended in click's 'Aborted!', exit 1, nothing
    saved. Now the step in flight finishes, last.pt holds that step, exit 130, and --resume
    from it ends with the weights of an unbroken run. SIGTERM, what a scheduler sends, the
    same with exit 143 (it used to exit 143 with nothing saved and no line in train.log)."""
    import signal
    import time

    args = ["baseline", "--cache", str(fused_cache), "--model", "polarnet", "--preset", "tiny", "--grid-shape",
            "48,36,8", "--point-widths", "16,32", "--init-size", "4", "--compress", "8", "--workers", "0",
            "--train-sequences", "00", "--checkpoint-every", "1000", "--no-tensorboard", "--seed", "1", "--quiet"]
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "m2skd.train.cli", *args, "--steps", "500", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    metrics, deadline = out / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    step = load_checkpoint(out / "last.pt")["step"]
    assert 3 <= step < 500 and f"interrupted at step {step}" in err and "--resume" in err and "Traceback" not in err
    assert f"stopped: TrainInterrupted: interrupted at step {step} ({signame})" in (out / "train.log").read_text()
    r = _cli(*args, "--steps", str(step + 2), "--out", str(out), "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _cli(*args, "--steps", str(step + 2), "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = load_checkpoint(out / "last.pt"), load_checkpoint(tmp_path / "whole" / "last.pt")
    assert a["step"] == b["step"] == step + 2
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0, msg=k)


def test_every_run_keeps_a_text_log_of_what_it_said(fused_cache, tmp_path, monkeypatch):
    """OUT/train.log: the resolved config, progress and validations, checkpoints, warnings
    and how the run ended, appended across a resume (issue 22, item 8)."""
    import dataclasses
    import json
    import warnings

    from m2skd.train.engine.kinds import KINDS
    from m2skd.train.engine.steps import seg_step

    calls = []

    def warning_step(ctx, batch, gen):
        calls.append(1)
        if len(calls) == 2:
            warnings.warn("a warning the run raised", UserWarning, stacklevel=1)
        return seg_step(ctx, batch, gen)

    monkeypatch.setitem(KINDS, "baseline", dataclasses.replace(KINDS["baseline"], step=warning_step))
    out = tmp_path / "run"
    with pytest.warns(UserWarning):
        train(_spec(fused_cache, out, steps=4, cfg={"val_every": 2, "checkpoint_every": 2}))
    train(_spec(fused_cache, out, steps=5, cfg={"val_every": 2, "checkpoint_every": 2}, resume="yes"))
    log = (out / "train.log").read_text()
    lines = [ln.split(" ", 2)[2] for ln in log.splitlines()]  # without the date and time
    config = json.loads(next(ln for ln in lines if ln.startswith("resolved config: "))[len("resolved config: "):])
    assert config["config"]["optim"]["lr"] == tiny_train_config().optim.lr and config["steps"] == 4
    assert lines[0] == "baseline (polarnet) on cpu, seed 1: 4 steps"
    assert any(ln.startswith("step 2/4 seg ") and "val_miou" in ln for ln in lines)
    assert f"checkpoint at step 2: {out / 'last.pt'}" in lines
    assert any("warning: UserWarning: a warning the run raised" in ln for ln in lines)
    assert f"finished at step 4: {out / 'last.pt'}" in lines
    assert "baseline (polarnet) on cpu, seed 1: resumed at step 4 of 5" in lines
    assert lines[-1] == f"finished at step 5: {out / 'last.pt'}"


def test_a_switched_off_terms_knobs_may_change_on_resume(fused_cache, tmp_path):
    """With L_feat off and affinity on logits (the released values), the feature level and
    L_feat's variant change nothing: a run resumed with them changed ends bit for bit where
    the unbroken run does. With L_feat on, the same change is refused."""
    off = {"w_feat": 0.0, "aff_level": "released"}
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(_spec(fused_cache, whole, kind="online", steps=3, cfg=off))
    train(_spec(fused_cache, broken, kind="online", steps=2, cfg=off))
    train(_spec(fused_cache, broken, kind="online", steps=3, resume="yes",
                cfg={**off, "feat_level": "half", "feat_variant": "released"}))
    a, b = (torch.load(p / "last.pt", weights_only=False)["model"] for p in (whole, broken))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    on = tmp_path / "on"
    train(_spec(fused_cache, on, kind="online", steps=2, cfg={"w_feat": 0.1}))
    with pytest.raises(TrainError, match=r"feat_level: run last vs now half"):
        train(_spec(fused_cache, on, kind="online", steps=3, resume="yes", cfg={"w_feat": 0.1, "feat_level": "half"}))
    # affinity on features reads the level too, even with L_feat off
    aff = tmp_path / "aff"
    train(_spec(fused_cache, aff, kind="online", steps=2, cfg={"w_feat": 0.0, "aff_level": "instance"}))
    with pytest.raises(TrainError, match=r"feat_level: run last vs now half"):
        train(_spec(fused_cache, aff, kind="online", steps=3, resume="yes",
                    cfg={"w_feat": 0.0, "aff_level": "instance", "feat_level": "half"}))


def test_init_starts_from_a_checkpoints_weights_and_refuses_another_shape(fused_cache, baseline_ckpt, tmp_path):
    """`--init` (issue 31, item 2): a run's weights before its first step are the given
    checkpoint's (seen after one step at a learning rate of 1e-30, which moves no weight);
    another network shape is refused; a resume with another --init is refused."""
    from m2skd.train.engine.checkpoint import CheckpointError

    out = tmp_path / "init"
    ckpt = train(_spec(fused_cache, out, steps=1, cfg={"lr": 1e-30}, init=baseline_ckpt))
    got, want = load_checkpoint(ckpt)["model"], load_checkpoint(baseline_ckpt)["model"]
    for k, v in want.items():
        if v.is_floating_point() and "running" not in k:  # BatchNorm's statistics move in a training step
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-20, msg=k)
    assert load_checkpoint(ckpt)["init_digest"] == load_checkpoint(baseline_ckpt)["digest"]
    with pytest.raises(CheckpointError, match="the --init checkpoint is a different network"):
        train(_spec(fused_cache, tmp_path / "wide", steps=1, cfg={"init_size": 8}, init=baseline_ckpt))
    other = train(_spec(fused_cache, tmp_path / "other", steps=1))
    with pytest.raises(TrainError, match="started from another checkpoint"):
        train(_spec(fused_cache, out, steps=2, cfg={"lr": 1e-30}, init=other, resume="yes"))


def test_a_teacher_and_its_student_share_remission(fused_cache, tmp_path):
    """Issue 31, item 3: a teacher trained with remission distilled into a student without
    it was accepted (the teacher then saw zeros where it learnt remission)."""
    from m2skd.train.engine.checkpoint import CheckpointError

    teacher = train(_spec(fused_cache, tmp_path / "t", kind="teacher", steps=1))
    with pytest.raises(CheckpointError, match="learnt with remission, the student runs without it"):
        train(_spec(fused_cache, tmp_path / "s", kind="student", steps=1, teacher=teacher,
                    cfg={"remission": False}))
