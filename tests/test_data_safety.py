"""Never lose a user's file: outputs that would overwrite an input, or data the generator did not make."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from m2skd.common.outputs import OutputError
from m2skd.train.engine.trainer import RunSpec, train

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



def _mtimes(root):
    return {p.relative_to(root): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_keeps_a_sequence_of_an_older_generator_whole(tmp_path):
    """A sequence an older generator wrote keeps its scans *and* its poses (the bug: the
    poses were rewritten by the new world while the scans stayed the old one's, and the
    fusion misplaced every neighbour); a partial one is refused; --regenerate replaces it.
    A resumed run of the same version touches no file, so the fused cache is not rebuilt."""
    from m2skd.synth.cli import main

    args = [str(tmp_path), "--sequences", "08", "--scans", "3", "--preset", "tiny", "--no-summary"]
    assert CliRunner().invoke(main, args).exit_code == 0
    seq = tmp_path / "sequences" / "08"
    before = _mtimes(tmp_path)
    r = CliRunner().invoke(main, args)  # the same version again: nothing rewritten
    assert r.exit_code == 0 and _mtimes(tmp_path) == before, r.output
    stamp = json.loads((seq / "synth.json").read_text())
    (seq / "synth.json").write_text(json.dumps({**stamp, "version": stamp["version"] - 1}))
    (seq / "poses.txt").write_text((seq / "poses.txt").read_text().replace("0", "1", 5))  # "the old world's"
    before, kept = _mtimes(tmp_path), _tree(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "kept as it is" in r.output and "version" in r.output
    assert _tree(tmp_path) == kept and _mtimes(tmp_path) == before
    (seq / "velodyne" / "000002.bin").unlink()  # a partial sequence of the older version: refused
    kept = _tree(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "mix two worlds" in r.output and "sequences/08" in r.output
    assert _tree(tmp_path) == kept
    r = CliRunner().invoke(main, [*args, "--regenerate"])
    assert r.exit_code == 0, r.output
    assert json.loads((seq / "synth.json").read_text())["version"] == stamp["version"]
    assert len(list((seq / "velodyne").iterdir())) == 3 and "1" * 5 not in (seq / "poses.txt").read_text()[:40]


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
    from m2skd.train.data.dataset import ShardDataset

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
    from m2skd.train.engine.trainer import TrainError

    other = tmp_path / "other"
    run_fusion(synth_root, ["00", "08"], other, FusionConfig(hard_classes=("person", "bicycle"), shard_size=6))
    cfg = tiny_train_config()
    out = tmp_path / "run"
    train(RunSpec(kind="teacher", cfg=cfg, cache=fused_cache, out=out, steps=1, progress=False))
    with pytest.raises(TrainError, match=r"cache fused otherwise.*\['person', 'bicycle'\]"):
        train(RunSpec(kind="teacher", cfg=cfg, cache=other, out=out, steps=2, resume="yes", progress=False))
    # and eval --view fused refuses a checkpoint fused with other hard classes than the cache
    ckpt = out / "last.pt"
    r = _cli("eval", "--ckpt", str(ckpt), "--cache", str(other), "--view", "fused", "--quiet", "--device", "cpu")
    assert r.exit_code == 1 and "hard classes" in r.output


def test_non_finite_weights_are_never_saved_or_loaded(fused_cache, tmp_path, monkeypatch):
    import torch

    from m2skd.train.engine.checkpoint import CheckpointError, load_checkpoint
    from m2skd.train.engine.trainer import TrainError

    with pytest.raises(ValueError, match="--lr: inf is not a finite number"):  # refused before the run now
        tiny_train_config(lr=float("inf"))

    class Diverging(torch.optim.Adam):  # a step that overflows, as --lr inf did
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))

    monkeypatch.setattr("m2skd.train.engine.run.torch.optim.Adam", Diverging)
    with pytest.raises(TrainError, match=r"not finite.*nothing was saved"):
        train(RunSpec(kind="baseline", cfg=tiny_train_config(), cache=fused_cache, out=tmp_path / "x",
                      steps=1, progress=False))
    assert not (tmp_path / "x" / "last.pt").exists()
    monkeypatch.undo()
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


def test_a_disk_that_fills_mid_write_is_one_line_and_leaves_no_partial_file(synth_root, fused_cache, tmp_path,
                                                                             monkeypatch):
    """Item 11: ENOSPC while a shard, a sidecar or a checkpoint is written (after the
    up-front space check passed: another process filled the disk) is one line naming the
    file and the remedy, exit 1; no temp file stays, and what was finished before is kept."""
    import errno

    import h5py
    import torch

    from m2skd.preprocess.cli import main as fuse

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "cache"
    real_file = h5py.File
    calls = []

    def second_shard_fails(path, *a, **k):  # the first shard is written, the second finds the disk full
        calls.append(path)
        if len(calls) == 2:
            full()
        return real_file(path, *a, **k)

    monkeypatch.setattr("m2skd.common.shards.h5py.File", second_shard_fails)
    r = CliRunner().invoke(fuse, ["--data", str(synth_root), "--sequences", "08", "--out", str(out),
                                  "--shard-size", "4", "--workers", "1"])
    assert r.exit_code == 1, r.output
    assert "disk filled up" in r.output and "make fuse" in r.output and "Traceback" not in r.output
    assert len(list(out.glob("*.h5.json"))) == 1 and not list(out.glob(".*.tmp"))
    monkeypatch.setattr("m2skd.common.shards.h5py.File", real_file)
    assert CliRunner().invoke(fuse, ["--data", str(synth_root), "--sequences", "08", "--out", str(out),
                                     "--shard-size", "4", "--workers", "1"]).exit_code == 0

    # a checkpoint: the OSError path and torch's own short-write RuntimeError
    ckpt = train(RunSpec(kind="baseline", cfg=tiny_train_config(), cache=fused_cache, out=tmp_path / "run", steps=2,
                         seed=0, progress=False, device="cpu"))
    before = ckpt.read_bytes()
    for err in (OSError(errno.ENOSPC, "No space left on device"),
                RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")):
        def save(obj, f, err=err):
            open(f, "wb").write(b"partial")
            raise err
        monkeypatch.setattr("m2skd.train.engine.checkpoint.torch.save", save)
        with pytest.raises(OutputError, match=r"last.pt: the disk filled up .* previous checkpoint is intact"):
            train(RunSpec(kind="baseline", cfg=tiny_train_config(), cache=fused_cache, out=tmp_path / "run",
                          steps=4, seed=0, progress=False, device="cpu", resume="yes"))
        assert ckpt.read_bytes() == before and not list(ckpt.parent.glob(".*.tmp"))
    monkeypatch.setattr("m2skd.train.engine.checkpoint.torch.save", torch.save)


def test_make_passes_paths_with_spaces_as_one_argument(tmp_path):
    """Item 19: `make fuse`/`make eval` with a path holding a space ended in "unexpected
    extra arguments". The recipes make prints (make -n) must split into the same words."""
    import shlex
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    data, cache, ckpt = tmp_path / "my data", tmp_path / "my cache", tmp_path / "my run" / "last.pt"

    def words(target: str, *assign: str) -> list[str]:
        printed = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(repo), target, *assign],
                                 capture_output=True, text=True, check=True).stdout.replace("\\\n", " ")
        line = next(ln for ln in printed.splitlines() if "m2skd-fuse" in ln or "m2skd-train eval" in ln)
        return shlex.split(line.split(";", 1)[-1])

    fuse = words("fuse", f"DATA={data}", f"CACHE={cache}", "SEQ=08")
    assert fuse[fuse.index("--data") + 1] == str(data) and fuse[fuse.index("--out") + 1] == f"{cache}/fused"
    ev = words("eval", f"CKPT={ckpt}", f"DATA={data}")
    assert ev[ev.index("--ckpt") + 1] == str(ckpt) and ev[ev.index("--data") + 1] == str(data)
    assert ev[ev.index("--json") + 1] == "$ckpt_dir/eval.json"  # the shell's dirname of the quoted CKPT


BAD_OPTIONS = [  # items 13, 14, 17, 18, 19: (CLI, options, what the one-line error says)
    ("train", ["--grid-shape", "96,72"], "--grid-shape: needs 3 comma-separated values, got 2"),
    ("train", ["--grid-shape", "8,8,8"], "--grid-shape: rho and phi need at least 16"),
    ("train", ["--rotate-deg", "nan"], "--rotate-deg: nan is not a finite number"),
    ("train", ["--init-size", "0"], "--init-size must be >= 1"),
    ("train", ["--compress", "0"], "--compress must be >= 1"),
    ("train", ["--point-widths", "0"], "--point-widths must be >= 1"),
    ("train", ["--scale", "0,0"], "--scale must be > 0.0"),
    ("train", ["--scale", "2,1"], "--scale: low 2.0 is above high 1.0"),
    ("train", ["--translate", "1,2"], "--translate: needs 3 comma-separated values"),
    ("online", ["--temperature", "nan"], "--temperature: nan is not a finite number"),
    ("train", ["--tilt-deg", "1000"], "--tilt-deg must be >= 0.0 and <= 45.0"),
    ("train", ["--lr", "inf"], "--lr: inf is not a finite number"),
    ("train", ["--epochs", "0"], "--epochs"),
    ("train", ["--batch-size", "100000"], "--batch-size must be >= 1 and <= 4096"),
    ("train", ["--batch-size", "1000"], "--batch-size 1000 is more scans a step than the training split holds (12)"),
    ("fuse", ["--voxel", "nan"], "--voxel: nan is not a finite number"),
    ("fuse", ["--voxel", "inf"], "--voxel: inf is not a finite number"),
    ("fuse", ["--voxel", "1e-30"], "--voxel must be 0 (off) or at least 0.001 m"),
    ("fuse", ["--drift-threshold", "inf"], "--drift-threshold: inf is not a finite number"),
    ("fuse", ["--workers", "-3"], "--workers"),
    ("synth", ["--seed", "-1"], "--seed must be >= 0"),
    ("synth", ["--range-noise", "nan"], "--range-noise: nan is not a finite number"),
    ("synth", ["--columns", "100000000"], "--columns must be >= 1 and <= 20000"),
    # issue 33, item 10: eval and predict hung past 600 s on 99999 loader workers
    ("eval", ["--workers", "99999"], "--workers"),
    ("train", ["--out", ""], "an empty path would write into the current folder"),
    ("fuse", ["--hard-classes", "truck,truck,person"], "--hard-classes: truck named more than once"),
    ("predict", ["--workers", "99999"], "--workers"),
]


@pytest.mark.parametrize(("cli", "extra", "message"), BAD_OPTIONS, ids=[" ".join(b[1]) for b in BAD_OPTIONS])
def test_nonsense_options_get_one_line_naming_the_option_and_write_nothing(cli, extra, message, synth_root,
                                                                           fused_cache, tmp_path):
    from m2skd.preprocess.cli import main as fuse
    from m2skd.synth.cli import main as synth
    from m2skd.train.cli import main as train_cli

    out = tmp_path / "out"
    kind = "online" if cli == "online" else "baseline"
    argv = {"train": (train_cli, [kind, "--cache", str(fused_cache), "--train-sequences", "00", "--steps", "1",
                                  "--workers", "0", "--model", "polarnet", "--out", str(out)]),
            "fuse": (fuse, ["--data", str(synth_root), "--sequences", "08", "--out", str(out)]),
            "synth": (synth, [str(out), "--scans", "2", "--preset", "tiny"]),
            "eval": (train_cli, ["eval", "--ckpt", str(tmp_path / "none.pt"), "--cache", str(fused_cache),
                                 "--predictions", str(out)]),
            "predict": (train_cli, ["predict", "--ckpt", str(tmp_path / "none.pt"), "--data", str(synth_root),
                                    "--out", str(out)])}
    command, base = argv["train" if cli == "online" else cli]
    r = CliRunner().invoke(command, [*base, *extra])
    assert r.exit_code in (1, 2), r.output
    assert message in r.output and "Traceback" not in r.output, r.output
    assert isinstance(r.exception, SystemExit)  # a clean exit, not an exception escaping
    assert not out.exists()


def test_fuse_never_overwrites_a_manifest_it_did_not_write_and_says_what_it_replaces(synth_root, tmp_path):
    """Item 20: a manifest.json that is not m2skd-fuse's is left as it is (refused in one
    line); refusing a cache of the same sequences fused with another config says so."""
    from m2skd.preprocess.cli import main as fuse

    out = tmp_path / "cache"
    out.mkdir()
    theirs = out / "manifest.json"
    theirs.write_text('{"name": "my other tool", "files": []}')
    r = CliRunner().invoke(fuse, ["--data", str(synth_root), "--sequences", "08", "--out", str(out)])
    assert r.exit_code == 1 and "not a manifest m2skd-fuse wrote" in r.output, r.output
    assert theirs.read_text() == '{"name": "my other tool", "files": []}' and not list(out.glob("*.h5"))
    theirs.unlink()
    assert CliRunner().invoke(fuse, ["--data", str(synth_root), "--sequences", "08", "--out", str(out)]).exit_code == 0
    r = CliRunner().invoke(fuse, ["--data", str(synth_root), "--sequences", "08", "--out", str(out), "--voxel", "0.1"])
    assert r.exit_code == 0, r.output
    assert "sequence(s) ['08'] were fused with another config; their shards are replaced" in r.output


def test_demo_and_experiment_refuse_a_cache_without_their_sequences_in_one_line(fused_cache, tmp_path):
    """Item 22: `make demo` on a cache missing sequences ended in a ShardError traceback."""
    from m2skd.experiments.demo import main as demo
    from m2skd.experiments.evidence import main as evidence

    for command, args in ((demo, ["--train-seqs", "00", "--val-seqs", "09"]),
                          (evidence, ["--train-seqs", "00", "--val-seqs", "08", "--report-seqs", "10"])):
        r = CliRunner().invoke(command, ["--cache", str(fused_cache), "--out", str(tmp_path / "o"), *args])
        assert r.exit_code == 1 and "no fused scans of sequence(s) ['" in r.output, r.output
        assert "Traceback" not in r.output and not (tmp_path / "o" / "runs").exists()


def test_synth_into_a_folder_it_cannot_write_is_one_line(tmp_path):
    """Item 13: `m2skd-synth` into a read-only folder ended in a PermissionError traceback."""
    import os
    from pathlib import Path

    from m2skd.synth.cli import main

    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere chmod allows: a filesystem that refuses even root
        target = Path("/sys/m2skd-synth-test")
    try:
        r = CliRunner().invoke(main, [str(target), "--scans", "2", "--preset", "tiny"])
    finally:
        (tmp_path / "ro").chmod(0o700)
    assert r.exit_code == 1 and "cannot write here" in r.output and "Traceback" not in r.output, r.output


def test_resume_refuses_a_cache_rebuilt_from_changed_input(synth_root, tmp_path):
    """The incident of docs/evidence.md: a cache re-fused with other poses under a run that then
    resumed on it. Same fusion config, so only the shards' content can tell; a re-fusion of
    unchanged input (new mtimes, so every shard is rebuilt, and lzf bytes that differ) must
    still resume."""
    import h5py
    import numpy as np

    from m2skd.preprocess.config import FusionConfig
    from m2skd.preprocess.pipeline import run_fusion
    from m2skd.train.engine.trainer import TrainError

    data = tmp_path / "kitti"
    for name in ("00", "08"):
        shutil.copytree(synth_root / "sequences" / name, data / "sequences" / name)
    cache, fusion = tmp_path / "cache", FusionConfig(shard_size=5)
    run_fusion(data, ["00", "08"], cache, fusion)

    # the recorded digest, recomputed from what h5py reads back, in the order docs/formats.md gives
    for side in sorted(cache.glob("*.h5.json")):
        h = hashlib.sha256()
        with h5py.File(cache / json.loads(side.read_text())["file"]) as f:
            for name, dtype in (("points", "<f4"), ("labels", "u1"), ("instance", "<u4"), ("source", "i1"),
                                ("offsets", "<i8"), ("n_original", "<i4"), ("frame", "<i4")):
                h.update(np.asarray(f[name][:], dtype).tobytes())
        assert json.loads(side.read_text())["content_sha256"] == h.hexdigest()

    cfg, out = tiny_train_config(), tmp_path / "run"
    train(RunSpec(kind="teacher", cfg=cfg, cache=cache, out=out, steps=1, progress=False))
    first = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.h5")}
    for p in (data / "sequences" / "00").rglob("*"):  # touched, not changed: every shard of 00 is redone
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    run_fusion(data, ["00", "08"], cache, fusion)
    assert any(p.stat().st_mtime_ns != first[p.name] for p in cache.glob("seq00_*.h5"))
    train(RunSpec(kind="teacher", cfg=cfg, cache=cache, out=out, steps=2, resume="yes", progress=False))

    poses = data / "sequences" / "00" / "poses.txt"  # every pose 1.5 m off along x, as in the incident
    rows = np.loadtxt(poses).reshape(-1, 3, 4)
    rows[:, 0, 3] += 1.5
    np.savetxt(poses, rows.reshape(-1, 12), fmt="%.9e")
    run_fusion(data, ["00", "08"], cache, fusion)
    before = (out / "last.pt").read_bytes()
    with pytest.raises(TrainError, match=r"no longer holds the scans the run trained on.*poses"):
        train(RunSpec(kind="teacher", cfg=cfg, cache=cache, out=out, steps=3, resume="yes", progress=False))
    assert (out / "last.pt").read_bytes() == before  # refused before anything was trained or saved


def _run(fused_cache, out, kind="baseline", steps=2, teacher=None, **kw):
    return train(RunSpec(kind=kind, cfg=tiny_train_config(val_every=1), cache=fused_cache, out=out, steps=steps,
                         progress=False, teacher=teacher, **kw))


def test_a_student_resumes_only_with_the_teacher_it_started_with(fused_cache, tmp_path):
    """The teacher is known by content, not path: another teacher, a baseline, or another
    teacher's file copied over the first one's path is refused on resume."""
    from m2skd.train.engine.run import TrainError

    ta, tb = _run(fused_cache, tmp_path / "tA", "teacher"), _run(fused_cache, tmp_path / "tB", "teacher", seed=1)
    base = _run(fused_cache, tmp_path / "base")
    sk = tmp_path / "sk"
    _run(fused_cache, sk, "student", teacher=ta)
    for other in (tb, base):
        with pytest.raises(TrainError, match="another teacher"):
            _run(fused_cache, sk, "student", steps=3, teacher=other, resume="yes")
    saved = ta.read_bytes()
    shutil.copy(tb, ta)
    with pytest.raises(TrainError, match="another teacher"):
        _run(fused_cache, sk, "student", steps=3, teacher=ta, resume="yes")
    ta.write_bytes(saved)
    _run(fused_cache, sk, "student", steps=3, teacher=ta, resume="yes")  # its own teacher: resumes


def test_a_checkpoint_changed_after_it_was_written_is_refused(fused_cache, tmp_path):
    """Finite but wrong weights, or a flipped byte of Adam's state, no longer match the
    digest saved with the checkpoint: evaluation, distillation and resume refuse it."""
    import torch

    from m2skd.train.engine.checkpoint import CheckpointError, load_checkpoint

    ckpt = _run(fused_cache, tmp_path / "a")
    load_checkpoint(ckpt)  # intact: loads
    state = torch.load(ckpt, weights_only=False)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].view(-1)[:50] = 1e20
    torch.save(state, ckpt)
    with pytest.raises(CheckpointError, match="no longer matches the digest"):
        load_checkpoint(ckpt)
    ckpt = _run(fused_cache, tmp_path / "b")
    state = torch.load(ckpt, weights_only=False)
    moment = next(iter(state["optimizer"]["state"].values()))["exp_avg"]
    moment.view(-1).view(torch.uint8)[:64] ^= 0xFF
    torch.save(state, ckpt)
    r = _cli("eval", "--ckpt", str(ckpt), "--cache", str(fused_cache), "--quiet", "--device", "cpu")
    assert r.exit_code == 1 and "no longer matches the digest" in r.output


def test_a_fresh_start_never_keeps_or_overwrites_another_runs_files(fused_cache, tmp_path):
    """--force starts over without the old run's best.pt; without last.pt, a folder holding
    another run's best.pt, a config.json or a metrics.jsonl not ours is refused, naming the
    file, before anything is written; a run killed before its first checkpoint starts over."""
    from m2skd.train.engine.run import TrainError

    out = tmp_path / "r"
    _run(fused_cache, out, steps=2)
    old_best = (out / "best.pt").read_bytes()
    train(RunSpec(kind="baseline", cfg=tiny_train_config(), cache=fused_cache, out=out, steps=1, progress=False,
                  force=True))  # no validation in the new run: it has no best.pt
    assert not (out / "best.pt").exists() and old_best
    # another run's best.pt without its last.pt
    other = tmp_path / "other"
    _run(fused_cache, other, steps=2, seed=5)
    for name in ("last.pt", "config.json"):  # (its config.json alone is refused the same way)
        (other / name).unlink()
    before = _tree(other)
    with pytest.raises(TrainError, match=r"best.pt: the best model of another run"):
        _run(fused_cache, other, steps=2)
    assert _tree(other) == before
    # a user's own files
    for name, text, message in (("config.json", '{"mine": 1}', "not a run config"),
                                ("metrics.jsonl", "not json\n", "not a step log")):
        d = tmp_path / name
        d.mkdir()
        (d / name).write_text(text)
        with pytest.raises(TrainError, match=message):
            _run(fused_cache, d, steps=1)
        assert (d / name).read_text() == text and not (d / "last.pt").exists()
    # this run's own, killed before its first last.pt (best.pt, config.json, metrics.jsonl): it starts over
    own = tmp_path / "own"
    _run(fused_cache, own, steps=2)
    (own / "last.pt").unlink()
    _run(fused_cache, own, steps=2)
    assert (own / "last.pt").is_file()


def test_eval_writes_no_prediction_through_a_link_nor_over_another_models(fused_cache, synth_root, tmp_path):
    """A link in the predictions folder onto the ground truth is refused and the labels stay
    as they were; another checkpoint's predictions folder or result file is refused without
    --force (predict's rules: a marker naming the checkpoint, a lock)."""
    labels = tmp_path / "data" / "sequences" / "08" / "labels"
    shutil.copytree(synth_root, tmp_path / "data", ignore=shutil.ignore_patterns("11"))
    truth = _tree(labels)
    a = _run(fused_cache, tmp_path / "A", steps=1)
    b = _run(fused_cache, tmp_path / "B", steps=1, seed=1)
    base = ["eval", "--data", str(tmp_path / "data"), "--sequences", "08", "--quiet", "--device", "cpu"]
    trap = tmp_path / "P"
    (trap / "sequences" / "08").mkdir(parents=True)
    (trap / "sequences" / "08" / "predictions").symlink_to(labels)
    r = _cli(*base, "--ckpt", str(a), "--predictions", str(trap))
    assert r.exit_code == 1 and "symbolic link" in r.output
    assert _tree(labels) == truth
    pred, res = tmp_path / "pred", tmp_path / "res.json"
    r = _cli(*base, "--ckpt", str(a), "--predictions", str(pred), "--json", str(res))
    assert r.exit_code == 0, r.output
    a_files, a_res = _tree(pred), res.read_text()
    for extra in (["--predictions", str(pred)], ["--json", str(res)]):
        r = _cli(*base, "--ckpt", str(b), *extra)
        assert r.exit_code == 1 and "another" in r.output, r.output
    assert _tree(pred) == a_files and res.read_text() == a_res
    r = _cli(*base, "--ckpt", str(b), "--predictions", str(pred), "--json", str(res), "--force")
    assert r.exit_code == 0, r.output
    assert json.loads(res.read_text())["checkpoint"] == str(b)
    assert json.loads((pred / "predicted_by.json").read_text())["checkpoint"] == str(b)


def test_eval_of_a_sequence_without_one_labelled_point_is_refused(fused_cache, synth_root, tmp_path):
    """Issue 33, item 5: an all-unlabelled sequence evaluated to mIoU 0.0, exit 0."""
    import numpy as np

    shutil.copytree(synth_root / "sequences" / "08", tmp_path / "data" / "sequences" / "08")
    for f in (tmp_path / "data" / "sequences" / "08" / "labels").glob("*.label"):
        np.zeros(f.stat().st_size // 4, np.uint32).tofile(f)
    ckpt = _run(fused_cache, tmp_path / "A", steps=1)
    r = _cli("eval", "--ckpt", str(ckpt), "--data", str(tmp_path / "data"), "--sequences", "08", "--quiet",
             "--device", "cpu")
    assert r.exit_code == 1 and "no labelled point to score" in r.output, r.output


def test_fuse_cleans_only_its_own_temps(tmp_path):
    """Issue 33, item 9: a killed writer's temp is removed, a user's `.draft.PID.tmp` is not."""
    import subprocess
    import sys

    from m2skd.common.atomic import remove_stale_temps
    from m2skd.preprocess.pipeline import FUSE_FILES

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID is gone
    ours = tmp_path / f".seq00_000000-000004.h5.{dead.pid}.tmp"
    mine = tmp_path / f".draft.{dead.pid}.tmp"
    for p in (ours, mine):
        p.write_text("x")
    assert remove_stale_temps(tmp_path, FUSE_FILES) == [ours]
    assert mine.read_text() == "x"


def test_predict_refuses_a_foreign_out_and_claims_nothing_before_its_sequences_exist(fused_cache, synth_root,
                                                                                     tmp_path):
    """Issue 33, item 14 and 9: predict into the fused cache, or over a submission.zip it did
    not write, is refused; a missing sequence leaves no predicted_by.json behind."""
    ckpt = _run(fused_cache, tmp_path / "A", steps=1)
    base = ["predict", "--ckpt", str(ckpt), "--data", str(synth_root), "--quiet", "--device", "cpu", "--no-zip"]
    before = _tree(fused_cache)
    r = _cli(*base, "--sequences", "11", "--out", str(fused_cache))
    assert r.exit_code == 1 and "other files than predictions" in r.output and _tree(fused_cache) == before
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "submission.zip").write_bytes(b"my own zip")
    r = _cli(*base, "--sequences", "11", "--out", str(sub))
    assert r.exit_code == 1 and "unknown model" in r.output
    assert (sub / "submission.zip").read_bytes() == b"my own zip"
    new = tmp_path / "new"
    r = _cli(*base, "--sequences", "11,19", "--out", str(new))
    assert r.exit_code == 1 and "19" in r.output and not (new / "predicted_by.json").exists()


def test_dry_run_of_a_one_step_run_times_real_steps(fused_cache, tmp_path):
    """Issue 33, item 14: `--dry-run --steps 1` printed 'nan s/step'."""
    r = _cli("baseline", "--cache", str(fused_cache), "--model", "polarnet", "--steps", "1", "--workers", "0",
             "--train-sequences", "00", "--out", str(tmp_path / "run"), "--dry-run", "--quiet")
    assert r.exit_code == 0 and "nan" not in r.output and "s/step" in r.output, r.output
    assert "this run (1 steps)" in r.output


def test_predict_redoes_a_scan_replaced_since_and_fuse_stays_out_of_the_dataset(fused_cache, synth_root, tmp_path):
    """Issue 33, items 5 and 14: a resumed predict kept the old prediction of a scan
    replaced with the same point count; m2skd-fuse wrote its cache into the dataset's root."""
    from m2skd.common import kitti_io
    from m2skd.preprocess.cli import main as fuse

    data = tmp_path / "data"
    shutil.copytree(synth_root / "sequences" / "11", data / "sequences" / "11")
    ckpt = _run(fused_cache, tmp_path / "A", steps=1)
    args = ["predict", "--ckpt", str(ckpt), "--data", str(data), "--sequences", "11", "--out", str(tmp_path / "sub"),
            "--quiet", "--device", "cpu", "--no-zip"]
    assert _cli(*args).exit_code == 0
    scan = kitti_io.Sequence(data, "11").scan_path(3)
    pts = kitti_io.read_scan(scan)
    pts[:, :2] *= -1.0  # the same points turned half a circle: other predictions, same count
    kitti_io.write_scan(scan, pts)
    r = _cli(*args)
    assert r.exit_code == 0 and "1 scans predicted" in r.output, r.output
    before = _tree(data)
    for bad in (data, data / "sequences" / "11"):
        r = CliRunner().invoke(fuse, ["--data", str(data), "--sequences", "11", "--out", str(bad)])
        assert r.exit_code == 1 and "that is the dataset" in r.output, r.output
    assert _tree(data) == before
