"""Backbones learn, runs resume exactly, evaluation and prediction files are right, bad input is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from m2skd.common.labels import raw_to_train
from m2skd.common.shards import ShardError
from m2skd.train.data.batch import collate
from m2skd.train.data.dataset import RawDataset, ShardDataset
from m2skd.train.distillation.losses import segmentation_loss
from m2skd.train.engine.checkpoint import CheckpointError, load_checkpoint, load_model
from m2skd.train.engine.trainer import RunSpec, TrainError, read_metrics, train
from m2skd.train.evaluation.evaluate import evaluate
from m2skd.train.evaluation.export import write_predictions
from m2skd.train.evaluation.metrics import Confusion, predict
from m2skd.train.models import build_model

from .conftest import RAW_OF_TRAIN, by_hand_class, by_hand_model, raw_scan, tiny_train_config


def _oracle_miou(vox: np.ndarray, labels: np.ndarray) -> float:
    """Best mIoU any per-voxel classifier can reach: the majority label of each voxel."""
    _, inv = np.unique(vox, axis=0, return_inverse=True)
    inv = inv.ravel()
    votes = np.zeros((inv.max() + 1, 20), np.int64)
    np.add.at(votes, (inv, labels), 1)
    votes[:, 0] = 0
    conf = Confusion()
    conf.add(votes.argmax(1)[inv][labels > 0], labels[labels > 0])
    present = np.flatnonzero(conf.matrix.sum(0))
    return float(conf.iou()[present].mean())


# PolarNet decodes 8 heights x 20 classes from one pooled BEV cell and converges more
# slowly than the 3D network: in 60 steps it reaches ~half the voxel oracle (0.42 of 0.82
# measured), Cylinder3D all of it in 40.
@pytest.mark.parametrize(("model", "steps", "frac"), [("polarnet", 60, 0.45), ("cylinder3d", 40, 0.9)])
def test_backbone_overfits_one_scan(fused_cache, model, steps, frac):
    cfg = tiny_train_config(model, dropout=0.0)
    sample = ShardDataset(fused_cache, ("00",), cfg, view="single")[0]
    batch = collate("single")([sample.prefix(8000)])  # a third of the scan keeps the test quick
    torch.manual_seed(0)
    net = build_model(cfg.model).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = segmentation_loss(net(batch).point_logits, batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        pred = predict(net(batch).point_logits)
    conf = Confusion()
    conf.add(pred, batch.labels)
    present = np.flatnonzero(conf.matrix[:, 1:].sum(0)) + 1
    miou = float(conf.iou()[present].mean())
    oracle = _oracle_miou(batch.vox.numpy(), batch.labels.numpy())
    assert losses[-1] < 0.35 * losses[0]
    assert miou > frac * oracle, (miou, oracle)


def _spec(cache, out, kind="teacher", steps=4, **kw):
    cfg = tiny_train_config(kw.pop("model", "polarnet"), **kw.pop("cfg", {}))
    return RunSpec(kind=kind, cfg=cfg, cache=cache, out=out, steps=steps, seed=3, progress=False, **kw)


@pytest.mark.parametrize("model", ["polarnet", "cylinder3d"])
def test_resume_gives_the_weights_of_an_unbroken_run(fused_cache, tmp_path, model):
    # PolarNet with dropout and a per-cell point cap: RNG state must be restored too.
    # On the CPU, where runs are deterministic: CUDA's atomic scatters make any two runs
    # differ in the last bits, resumed or not.
    extra = {"max_points_per_cell": 8} if model == "polarnet" else {}
    train(_spec(fused_cache, tmp_path / "full", steps=4, model=model, cfg=extra, device="cpu"))
    train(_spec(fused_cache, tmp_path / "part", steps=2, model=model, cfg=extra, device="cpu"))
    assert load_checkpoint(tmp_path / "part" / "last.pt")["step"] == 2
    train(_spec(fused_cache, tmp_path / "part", steps=4, resume="yes", model=model, cfg=extra, device="cpu"))
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0, msg=k)
    assert [m["step"] for m in read_metrics(tmp_path / "part")] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "part" / "config.json").read_text())["config"]["model"]["backbone"] == model
    # a finished run is not overwritten by accident
    with pytest.raises(TrainError, match="--resume"):
        train(_spec(fused_cache, tmp_path / "full", steps=4, model=model, cfg=extra))


def test_student_run_logs_every_term_and_refuses_a_foreign_teacher(fused_cache, tmp_path):
    train(_spec(fused_cache, tmp_path / "t", steps=2))
    train(_spec(fused_cache, tmp_path / "s", kind="student", steps=2, teacher=tmp_path / "t" / "last.pt"))
    rows = read_metrics(tmp_path / "s")
    assert len(rows) == 2 and all({"seg", "feat", "logit", "aff", "total"} <= set(r) for r in rows)
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("seg", "feat", "logit", "aff", "total"))
        assert r["total"] == pytest.approx(r["seg"] + 0.1 * r["feat"] + r["logit"] + r["aff"], rel=1e-5)
    # switching a term off removes it from the log
    train(_spec(fused_cache, tmp_path / "s2", kind="student", steps=1, teacher=tmp_path / "t" / "last.pt",
                cfg={"w_aff": 0.0}))
    assert "aff" not in read_metrics(tmp_path / "s2")[0]
    with pytest.raises(CheckpointError, match="different network"):
        train(_spec(fused_cache, tmp_path / "s3", kind="student", steps=1, model="cylinder3d",
                    teacher=tmp_path / "t" / "last.pt"))
    with pytest.raises(CheckpointError, match="a student checkpoint; distil from a teacher"):
        train(_spec(fused_cache, tmp_path / "s4", kind="student", steps=1, teacher=tmp_path / "s" / "last.pt"))


def _hand_confusion(root: Path, seq: str) -> np.ndarray:
    """Rows the hand-set predictions, columns the ground truth, over every scan's own points."""
    m = np.zeros((20, 20), np.int64)
    for f in sorted(int(p.stem) for p in (root / "sequences" / seq / "velodyne").glob("*.bin")):
        pts, raw = raw_scan(root, seq, f)
        np.add.at(m, (by_hand_class(pts[:, 0]), raw_to_train(raw)), 1)
    return m


def test_eval_scores_and_writes_the_labels_of_logits_set_by_hand(synth_root, fused_cache, tmp_path):
    """eval over raw scans: its confusion is the one counted from the raw files and the
    hand-set logits; each written file holds the raw ids those logits choose."""
    cfg = tiny_train_config()
    conf = evaluate(by_hand_model(), RawDataset(synth_root, ("08",), cfg), torch.device("cpu"), progress=False,
                    observe=lambda b, pred: write_predictions(tmp_path / "pred", b, pred.cpu().numpy()))
    np.testing.assert_array_equal(conf.matrix, _hand_confusion(synth_root, "08"))
    for f in (0, 11):
        pts, _ = raw_scan(synth_root, "08", f)
        written = np.fromfile(tmp_path / "pred" / "sequences" / "08" / "predictions" / f"{f:06d}.label", np.uint32)
        np.testing.assert_array_equal(written, RAW_OF_TRAIN[by_hand_class(pts[:, 0])])


def test_eval_on_the_fused_view_scores_each_scans_own_points_only(synth_root, fused_cache):
    """`eval --view fused`: the fused scans carry other scans' points too, but only each
    scan's own points are scored: the confusion equals the raw scans' by hand."""
    cfg = tiny_train_config()
    ds = ShardDataset(fused_cache, ("08",), cfg, view="fused")
    assert sum(len(ds[i].labels) - ds[i].n_original for i in range(len(ds))) > 0  # fused points are there
    conf = evaluate(by_hand_model(), ds, torch.device("cpu"), view="fused", batch_size=2, progress=False)
    np.testing.assert_array_equal(conf.matrix, _hand_confusion(synth_root, "08"))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "m2skd.train.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_train_eval_and_clear_errors(fused_cache, synth_root, tmp_path):
    out = tmp_path / "run"
    r = _cli("baseline", "--cache", str(fused_cache), "--model", "polarnet", "--steps", "1", "--out", str(out),
             "--workers", "0", "--train-sequences", "00", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "last.pt").is_file() and (out / "config.json").is_file()
    r = _cli("eval", "--ckpt", str(out / "last.pt"), "--data", str(synth_root), "--json", str(tmp_path / "r.json"),
             "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert set(res) >= {"miou", "hard_miou", "iou"} and len(res["iou"]) == 19
    assert res["miou"] == pytest.approx(np.mean(list(res["iou"].values())))
    # an empty cache, a missing sequence, a corrupt checkpoint: one clear line each, exit 1
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _cli("teacher", "--cache", str(empty), "--steps", "1", "--out", str(tmp_path / "x"), cwd=tmp_path)
    assert r.returncode == 1 and "no manifest" in r.stderr
    r = _cli("teacher", "--cache", str(fused_cache), "--steps", "1", "--out", str(tmp_path / "x"),
             "--train-sequences", "05", cwd=tmp_path)
    assert r.returncode == 1 and "no fused scans of sequence(s) ['05']" in r.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = _cli("eval", "--ckpt", str(bad), "--data", str(synth_root), cwd=tmp_path)
    assert r.returncode == 1 and "bad.pt: not a readable checkpoint" in r.stderr


def test_a_cache_fused_with_other_hard_classes_trains_with_them(synth_root, tmp_path):
    """The manifest is the one source of the hard classes: teacher, student, checkpoint and
    evaluation all take the cache's list, whatever the default."""
    from m2skd.preprocess.config import FusionConfig
    from m2skd.preprocess.pipeline import run_fusion

    cache = tmp_path / "cache"
    run_fusion(synth_root, ["00"], cache, FusionConfig(hard_classes=("person", "bicycle"), shard_size=6))
    teacher = train(_spec(cache, tmp_path / "t", steps=1))
    student = train(_spec(cache, tmp_path / "s", kind="student", steps=1, teacher=teacher))
    assert load_checkpoint(student)["hard_classes"] == ["person", "bicycle"]
    r = _cli("eval", "--ckpt", str(student), "--cache", str(cache), "--sequences", "00", "--json",
             str(tmp_path / "r.json"), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["hard_miou"] == pytest.approx((res["iou"]["person"] + res["iou"]["bicycle"]) / 2)


def test_asked_sequences_missing_from_the_cache_are_refused(fused_cache, tmp_path):
    with pytest.raises(ShardError, match=r"no fused scans of sequence\(s\) \['03'\]"):
        train(_spec(fused_cache, tmp_path / "x", cfg={"train_sequences": ("00", "03")}))
    assert not (tmp_path / "x").exists()


def test_student_run_leaves_its_teacher_untouched(fused_cache, tmp_path):
    """The trainer's own teacher loading: after a student run the teacher in memory still
    has the checkpoint's weights and BatchNorm statistics (frozen, eval mode)."""
    teacher = train(_spec(fused_cache, tmp_path / "t", steps=2))
    seen = {}
    train(_spec(fused_cache, tmp_path / "s", kind="student", steps=3, teacher=teacher,
                on_finish=lambda run: seen.update(run.teacher.state_dict())))
    saved = load_checkpoint(teacher)["model"]
    assert seen.keys() == saved.keys() and any("running_mean" in k for k in saved)
    for k, v in saved.items():
        torch.testing.assert_close(seen[k].cpu(), v, rtol=0, atol=0, msg=k)  # the run may be on a GPU


def test_baseline_and_student_of_one_seed_see_the_same_batches(fused_cache, tmp_path):
    """Same seed: the baseline's batches are the student's single view, scan for scan and
    augmentation for augmentation, so the two differ only by the distillation."""
    from m2skd.train.engine.run import start_run

    teacher = train(_spec(fused_cache, tmp_path / "t", steps=1))
    base = start_run(_spec(fused_cache, tmp_path / "b", kind="baseline", steps=4))
    stud = start_run(_spec(fused_cache, tmp_path / "s", kind="student", steps=4, teacher=teacher))
    n = 0
    for b, (fused, single) in zip(base.loader(), stud.loader(), strict=True):
        assert b.meta == single.meta == fused.meta
        for name in ("feats", "vox", "labels", "instance"):
            assert torch.equal(getattr(b, name), getattr(single, name)), name
        n += 1
    assert n == 4


def test_single_scan_teacher_is_the_control(fused_cache, tmp_path):
    """`student --teacher BASELINE.pt`: the teacher reads the student's own scan; everything
    else as for an M2SKD student, and the run records which kind of teacher it had."""
    from m2skd.train.engine.run import start_run

    baseline = train(_spec(fused_cache, tmp_path / "b", kind="baseline", steps=2))
    spec = _spec(fused_cache, tmp_path / "s", kind="student", steps=2, teacher=baseline)
    run = start_run(spec)
    assert run.teacher_view == "single" and run.view == "single"
    train(spec)
    info = json.loads((tmp_path / "s" / "config.json").read_text())
    assert info["teacher_view"] == "single" and load_checkpoint(tmp_path / "s" / "last.pt")["teacher_view"] == "single"
    assert all({"feat", "logit", "aff"} <= set(m) for m in read_metrics(tmp_path / "s"))
    teacher = train(_spec(fused_cache, tmp_path / "t", steps=1))
    assert start_run(_spec(fused_cache, tmp_path / "s2", kind="student", steps=2, teacher=teacher)).view == "pair"


def test_validation_keeps_the_best_checkpoint_and_stops_on_a_plateau(fused_cache, tmp_path):
    # a high rate, so the val curve turns within 12 steps (0.05 did on version 3 of the
    # world; on version 6 it still rose at step 12)
    cfg = {"val_every": 1, "patience": 2, "lr": 0.1}
    train(_spec(fused_cache, tmp_path / "v", kind="baseline", steps=12, cfg=cfg, device="cpu"))
    rows = read_metrics(tmp_path / "v")
    vals = [r["val_miou"] for r in rows]
    assert all("val_hard_miou" in r for r in rows)
    # the independent reading of the log: where the best is, and where 2 validations
    # without a better one end the run
    best, bad, stop = 0, 0, len(vals)
    for i, v in enumerate(vals):
        if i == 0 or v > vals[best]:
            best, bad = i, 0
        else:
            bad += 1
            if bad == 2:
                stop = i + 1
                break
    assert len(rows) == stop < 12
    assert load_checkpoint(tmp_path / "v" / "best.pt")["step"] == best + 1
    last = load_checkpoint(tmp_path / "v" / "last.pt")
    assert last["step"] == stop and last["best"]["val_miou"] == pytest.approx(vals[best])
    # resumed with the same patience it stays stopped; with none it runs on to the steps
    # asked and ends where a run that never had patience ends (on the CPU, bit for bit)
    train(_spec(fused_cache, tmp_path / "v", kind="baseline", steps=12, cfg=cfg, resume="yes", device="cpu"))
    assert load_checkpoint(tmp_path / "v" / "last.pt")["step"] == stop
    longer = {**cfg, "patience": 0}
    train(_spec(fused_cache, tmp_path / "v", kind="baseline", steps=12, cfg=longer, resume="yes", device="cpu"))
    train(_spec(fused_cache, tmp_path / "u", kind="baseline", steps=12, cfg=longer, device="cpu"))
    a, b = (load_checkpoint(tmp_path / r / "last.pt") for r in ("v", "u"))
    assert a["step"] == b["step"] == 12 and not a["stopped"]
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0, msg=k)


def test_resume_with_validation_matches_an_unbroken_run(fused_cache, tmp_path):
    cfg = {"val_every": 2}  # on the CPU, deterministic (see above)
    train(_spec(fused_cache, tmp_path / "full", kind="baseline", steps=4, cfg=cfg, device="cpu"))
    train(_spec(fused_cache, tmp_path / "part", kind="baseline", steps=2, cfg=cfg, device="cpu"))
    train(_spec(fused_cache, tmp_path / "part", kind="baseline", steps=4, resume="yes", cfg=cfg, device="cpu"))
    a, b = (load_checkpoint(tmp_path / r / "best.pt") for r in ("full", "part"))
    assert a["step"] == b["step"]
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0, msg=k)
    assert [m.get("val_miou") for m in read_metrics(tmp_path / "full")] == [
        m.get("val_miou") for m in read_metrics(tmp_path / "part")]


def test_tensorboard_curves_hold_the_logged_values(fused_cache, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_spec(fused_cache, tmp_path / "r", kind="baseline", steps=3, cfg={"val_every": 3, "tensorboard": True}))
    acc = EventAccumulator(str(tmp_path / "r" / "tb"))
    acc.Reload()
    rows = read_metrics(tmp_path / "r")
    seg = [(e.step, e.value) for e in acc.Scalars("loss/seg")]
    assert seg == [(r["step"], pytest.approx(r["seg"], rel=1e-6)) for r in rows]
    assert [e.value for e in acc.Scalars("val/miou")] == [pytest.approx(rows[-1]["val_miou"], rel=1e-6)]
    assert [e.value for e in acc.Scalars("optim/lr")] == pytest.approx([1e-3] * 3)
    # the val curve, recomputed apart: the step-3 checkpoint scored on the val scans by hand
    model, cfg, state = load_model(tmp_path / "r" / "best.pt", torch.device("cpu"))
    assert state["step"] == 3
    conf = Confusion()
    for scan in ShardDataset(fused_cache, cfg.data.val_sequences, cfg, view="single"):
        b = collate("single")([scan])
        with torch.no_grad():
            conf.add(predict(model(b).point_logits), b.labels)
    miou = float(np.nanmean(np.where(conf.matrix.sum(0) + conf.matrix.sum(1) > 0, conf.iou(), np.nan)[1:]))
    assert acc.Scalars("val/miou")[0].value == pytest.approx(miou, rel=1e-5)


def test_a_run_starts_from_a_config_file(fused_cache, tmp_path):
    """Issue 32, item 4: `--config` takes a run's config.json (every setting it ran with)
    or a hand-written subset; options given beside it override it; unknown names refused."""
    import json

    from click.testing import CliRunner

    from m2skd.train.cli import main

    base = ["--cache", str(fused_cache), "--train-sequences", "00", "--workers", "0", "--quiet", "--device", "cpu",
            "--steps", "1"]
    first = tmp_path / "first"
    r = CliRunner().invoke(main, ["baseline", *base, "--out", str(first), "--grid-shape", "48,36,8", "--lr", "3e-4",
                                  "--point-widths", "16,32", "--init-size", "4", "--no-flip"])
    assert r.exit_code == 0, r.output
    ran = json.loads((first / "config.json").read_text())["config"]
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["baseline", *base, "--out", str(again), "--config", str(first / "config.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((again / "config.json").read_text())["config"] == ran  # every setting, not the preset's
    # and the same run: the same first step's losses and the same weights after it
    assert read_metrics(again)[0] | {"scans_per_s": 0} == read_metrics(first)[0] | {"scans_per_s": 0}
    w0, w1 = load_checkpoint(first / "last.pt")["model"], load_checkpoint(again / "last.pt")["model"]
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    over = tmp_path / "over"
    r = CliRunner().invoke(main, ["baseline", *base, "--out", str(over), "--config", str(first / "config.json"),
                                  "--lr", "1e-4"])
    assert r.exit_code == 0, r.output
    got = json.loads((over / "config.json").read_text())["config"]
    assert got["optim"]["lr"] == 1e-4 and got["model"] == ran["model"]
    # a hand-written subset, flat: the preset gives the rest
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"lr": 5e-4, "grid_shape": [48, 36, 8], "point_widths": [16, 32], "init_size": 4}))
    r = CliRunner().invoke(main, ["baseline", *base, "--out", str(tmp_path / "m"), "--config", str(mine)])
    assert r.exit_code == 0, r.output
    got = json.loads((tmp_path / "m" / "config.json").read_text())["config"]
    assert got["optim"]["lr"] == 5e-4 and got["augment"]["flip"] is True  # the preset's flip, not the first run's
    mine.write_text(json.dumps({"lr": 5e-4, "learning_rate": 1}))
    r = CliRunner().invoke(main, ["baseline", *base, "--out", str(tmp_path / "bad"), "--config", str(mine)])
    assert r.exit_code == 1 and "mine.json: unknown setting(s) ['learning_rate']" in r.output


def test_read_metrics_reads_a_gzipped_step_log_like_a_plain_one(tmp_path):
    """The committed records keep step logs gzipped (metrics.jsonl.gz); the reader gives the
    same rows as from the plain file the trainer writes, and [] for a folder with neither."""
    import gzip

    rows = [{"step": 1, "seg": 2.5, "total": 2.5}, {"step": 2, "seg": 2.25, "total": 2.75, "kl": 0.5}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "metrics.jsonl").write_text(text + "\n")
    (tmp_path / "packed").mkdir()
    (tmp_path / "packed" / "metrics.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    assert read_metrics(tmp_path / "plain") == read_metrics(tmp_path / "packed") == rows
    assert read_metrics(tmp_path) == []
    committed = read_metrics(Path(__file__).parents[1] / "docs" / "demo" / "train_logs" / "teacher")
    assert [r["step"] for r in committed] == list(range(1, len(committed) + 1)) and len(committed) > 100
