"""Never lose a user's file: outputs that would overwrite an input, or data the generator did not make."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from m2skd.common.outputs import OutputError
from m2skd.train.trainer import RunSpec, train

from .conftest import tiny_train_config


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_never_writes_into_a_sequence_it_did_not_make(synth_root, tmp_path):
    """A real sequence (no synth.json) is refused, --force or not, before anything is written."""
    from m2skd.synth.cli import main

    root = tmp_path / "kitti"
    shutil.copytree(synth_root / "sequences" / "08", root / "sequences" / "08")
    (root / "sequences" / "08" / "synth.json").unlink()  # now it looks like real data
    before = _tree(root)
    for extra in ([], ["--seed", "3"]):
        r = CliRunner().invoke(main, [str(root), "--sequences", "07-08", "--scans", "4", "--preset", "tiny", *extra])
        assert r.exit_code == 1 and "did not write" in r.output and "sequences/08" in r.output
        assert _tree(root) == before  # 07 was not written either: every folder is checked first
    # a marker that is not ours is refused too
    (root / "sequences" / "08" / "synth.json").write_text('{"generator": "someone else"}')
    r = CliRunner().invoke(main, [str(root), "--sequences", "08", "--scans", "4", "--preset", "tiny"])
    assert r.exit_code == 1 and "not m2skd-synth's" in r.output
    # its own folder, and an empty one, are written as before
    (root / "sequences" / "09").mkdir()
    r = CliRunner().invoke(main, [str(root), "--sequences", "09", "--scans", "2", "--preset", "tiny", "--no-summary"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [str(root), "--sequences", "09", "--scans", "3", "--preset", "tiny", "--no-summary"])
    assert r.exit_code == 0, r.output
    assert len(list((root / "sequences" / "09" / "velodyne").iterdir())) == 3


def test_a_student_never_writes_over_its_teacher_or_its_cache(fused_cache, tmp_path):
    cfg = tiny_train_config()
    t = train(RunSpec(kind="teacher", cfg=cfg, cache=fused_cache, out=tmp_path / "T", steps=1, progress=False))
    before = t.read_bytes()
    for force in (False, True):
        with pytest.raises(OutputError, match="teacher checkpoint"):
            train(RunSpec(kind="student", cfg=cfg, cache=fused_cache, out=tmp_path / "T", steps=1, teacher=t,
                          force=force, progress=False))
    assert t.read_bytes() == before
    with pytest.raises(OutputError, match="fused cache"):
        train(RunSpec(kind="baseline", cfg=cfg, cache=fused_cache, out=fused_cache / "run", steps=1, progress=False))
    assert not (fused_cache / "run").exists()


def test_eval_outputs_never_overwrite_an_input_or_a_foreign_file(fused_cache, tmp_path):
    from m2skd.train.cli import main

    cfg = tiny_train_config()
    ckpt = train(RunSpec(kind="baseline", cfg=cfg, cache=fused_cache, out=tmp_path / "R", steps=1, progress=False))
    before = ckpt.read_bytes()
    base = ["eval", "--ckpt", str(ckpt), "--cache", str(fused_cache), "--quiet", "--device", "cpu"]
    r = CliRunner().invoke(main, [*base, "--json", str(ckpt)])
    assert r.exit_code == 1 and "checkpoint" in r.output and ckpt.read_bytes() == before
    r = CliRunner().invoke(main, [*base, "--predictions", str(fused_cache / "p")])
    assert r.exit_code == 1 and "fused cache" in r.output and not (fused_cache / "p").exists()
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    r = CliRunner().invoke(main, [*base, "--json", str(notes)])
    assert r.exit_code == 1 and "not an earlier" in r.output and notes.read_text() == '{"my": "notes"}'
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "thesis.tex").write_text("x")
    r = CliRunner().invoke(main, [*base, "--predictions", str(mixed)])
    assert r.exit_code == 1 and "thesis.tex" in r.output
    # an earlier result and earlier predictions are replaced
    good = tmp_path / "eval.json"
    for _ in range(2):
        r = CliRunner().invoke(main, [*base, "--json", str(good), "--predictions", str(tmp_path / "pred")])
        assert r.exit_code == 0, r.output
    assert json.loads(good.read_text())["checkpoint"] == str(ckpt)


def _cli(*args):
    from m2skd.train.cli import main

    return CliRunner().invoke(main, list(args))


def test_a_damaged_shard_is_refused_naming_it(fused_cache, tmp_path):
    from m2skd.common.shards import ShardError
    from m2skd.train.dataset import ShardDataset

    cache = tmp_path / "cache"
    shutil.copytree(fused_cache, cache)
    shard = sorted(cache.glob("*.h5"))[0]
    data = bytearray(shard.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    shard.write_bytes(bytes(data))
    cfg = tiny_train_config()
    with pytest.raises(ShardError, match=rf"{shard.name}: damaged.*m2skd-fuse"):
        ShardDataset(cache, ("00", "08"), cfg, view="fused")
    with pytest.raises(ShardError, match="damaged"):
        train(RunSpec(kind="teacher", cfg=cfg, cache=cache, out=tmp_path / "t", steps=1, progress=False))
    assert not (tmp_path / "t" / "last.pt").exists()


def test_resume_refuses_another_cache(fused_cache, synth_root, tmp_path):
    from m2skd.preprocess.config import FusionConfig
    from m2skd.preprocess.pipeline import run_fusion
    from m2skd.train.trainer import TrainError

    other = tmp_path / "other"
    run_fusion(synth_root, ["00", "08"], other, FusionConfig(hard_classes=("person", "bicycle"), shard_size=6))
    cfg = tiny_train_config()
    out = tmp_path / "run"
    train(RunSpec(kind="teacher", cfg=cfg, cache=fused_cache, out=out, steps=1, progress=False))
    with pytest.raises(TrainError, match=r"cache fused otherwise.*\['person', 'bicycle'\]"):
        train(RunSpec(kind="teacher", cfg=cfg, cache=other, out=out, steps=2, resume=True, progress=False))
    # and eval --view fused refuses a checkpoint fused with other hard classes than the cache
    ckpt = out / "last.pt"
    r = _cli("eval", "--ckpt", str(ckpt), "--cache", str(other), "--view", "fused", "--quiet", "--device", "cpu")
    assert r.exit_code == 1 and "hard classes" in r.output


def test_non_finite_weights_are_never_saved_or_loaded(fused_cache, tmp_path):
    import torch

    from m2skd.train.checkpoint import CheckpointError, load_checkpoint
    from m2skd.train.trainer import TrainError

    with pytest.raises(TrainError, match=r"not finite.*nothing was saved"):
        train(RunSpec(kind="baseline", cfg=tiny_train_config(lr=float("inf")), cache=fused_cache, out=tmp_path / "x",
                      steps=1, progress=False))
    assert not (tmp_path / "x" / "last.pt").exists()
    ckpt = train(RunSpec(kind="baseline", cfg=tiny_train_config(), cache=fused_cache, out=tmp_path / "y", steps=1,
                         progress=False))
    state = torch.load(ckpt, weights_only=False)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].view(-1)[0] = float("nan")
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="1 weights are not finite"):
        load_checkpoint(ckpt)
    r = _cli("eval", "--ckpt", str(ckpt), "--cache", str(fused_cache), "--quiet", "--device", "cpu")
    assert r.exit_code == 1 and "not finite" in r.output


def test_predict_never_mixes_two_models_and_redoes_invalid_files(fused_cache, synth_root, tmp_path):
    import numpy as np

    from m2skd.common import kitti_io

    a = train(RunSpec(kind="baseline", cfg=tiny_train_config(), cache=fused_cache, out=tmp_path / "A", steps=1,
                      progress=False))
    b = train(RunSpec(kind="baseline", cfg=tiny_train_config(), cache=fused_cache, out=tmp_path / "B", steps=2,
                      progress=False))
    out = tmp_path / "sub"
    args = ["predict", "--data", str(synth_root), "--sequences", "11", "--out", str(out), "--quiet", "--device", "cpu"]
    assert _cli(*args, "--ckpt", str(a)).exit_code == 0
    r = _cli(*args, "--ckpt", str(b))
    assert r.exit_code == 1 and "another checkpoint" in r.output and "--force" in r.output
    first = kitti_io.Sequence(out, "11").prediction_path(0)
    # a right-sized file of invalid ids is not "done": the rerun predicts it again
    first.write_bytes(np.full(first.stat().st_size // 4, 7777, np.uint32).tobytes())
    r = _cli(*args, "--ckpt", str(a))
    assert r.exit_code == 0 and "1 scans predicted" in r.output, r.output
    r = _cli(*args, "--ckpt", str(b), "--force")
    n = len(kitti_io.Sequence(synth_root, "11").frames())
    assert r.exit_code == 0 and f"{n} scans predicted, 0 already done" in r.output, r.output


def test_a_shard_writer_makes_its_missing_folder(tmp_path):
    """`write_shard` into a folder that does not exist yet (the throughput bench did): made, not a FileNotFoundError."""
    import numpy as np

    from m2skd.common.shards import FusedScan, ShardReader, write_shard

    scan = FusedScan(frame=3, points=np.arange(20, dtype=np.float32).reshape(5, 4), labels=np.ones(5, np.int64),
                     instance=np.zeros(5, np.int64), source=np.zeros(5, np.int8), n_original=5)
    path = tmp_path / "new" / "deep" / "x.h5"
    entry = write_shard(path, [scan], {"sequence": "00"})
    got = ShardReader(path, entry["sha256"]).scan(0)
    assert got.frame == 3 and np.array_equal(got.points, scan.points)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        write_shard(tmp_path / "file" / "x.h5", [scan], {"sequence": "00"})
