"""What a user can do wrong, or to, `m2skd-fuse`: each gets one clear line, a non-zero exit,
nothing half-written and nothing lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m2skd.common import kitti_io as K
from m2skd.common import outputs
from m2skd.common.outputs import OutputError
from m2skd.common.shards import ShardError, read_manifest
from m2skd.preprocess.config import FusionConfig
from m2skd.preprocess.pipeline import FusionError, plan, run_fusion
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import generate_sequence

CFG = FusionConfig(shard_size=5)


@pytest.fixture(scope="module")
def long_root(tmp_path_factory) -> Path:
    """Two sequences of 300 scans of 32 x 1024 beams: a fusion of several seconds, long enough
    to interrupt mid-run even when the test's own process waits for a busy CPU (the tiny
    preset's scans fuse in ~2 s, and on a loaded 2-core machine the run could end first)."""
    root = tmp_path_factory.mktemp("long")
    for name in ("00", "01"):
        generate_sequence(root, name, SynthConfig.preset("tiny").override(scans=300, beams=32, columns=1024))
    # Compile (and cache) the numba kernels first: in a fresh clone the fusion's first run
    # compiles them, which on a loaded machine took longer than the tests wait for shards.
    run_fusion(root, ["00"], tmp_path_factory.mktemp("warm-up"), FusionConfig(shard_size=100))
    return root


def _fuse_cmd(root: Path, out: Path, *extra: str, sequences: str = "00,01") -> list[str]:
    return [sys.executable, "-m", "m2skd.preprocess.cli", "--data", str(root), "--sequences", sequences,
            "--out", str(out), "--shard-size", "1", *extra]


def _wait_for_shards(out: Path, n: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(out.glob("*.h5.json"))) < n:
        time.sleep(0.01)


def _as_from_a_shell() -> None:
    # Ignored and blocked signals are inherited: whatever this test process had done to
    # SIGINT (a library, an earlier test), a shell starts the command with the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(long_root, tmp_path, workers):
    out = tmp_path / "out"
    proc = subprocess.Popen(_fuse_cmd(long_root, out, "--workers", workers), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_from_a_shell)
    _wait_for_shards(out, 3)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: the finished shards" in err and "Traceback" not in err
    assert not list(out.glob(".*.tmp"))
    done = len(list(out.glob("*.h5.json")))
    assert 0 < done < 600
    r = subprocess.run(_fuse_cmd(long_root, out, "--workers", workers), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_manifest(out)["scans"] == 600


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sequences", ["00,01", "00"])
def test_workers_die_with_their_parent(long_root, tmp_path, sequences):
    """With one sequence too: its shards are split among the workers (issue 35; one
    sequence used to run in the parent alone, on one core)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_fuse_cmd(long_root, out, "--workers", "2", sequences=sequences),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_shards(out, 2)
    kids = _children(proc.pid)
    assert kids, "no worker processes found"
    proc.kill()  # kill -9 of the parent alone
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_worker_that_dies_ends_the_run_in_one_line(long_root, tmp_path):
    """Issue 35 (hostile run): kill -9 of one worker (the OOM killer's way) left the parent
    waiting forever on the dead worker's task (multiprocessing.Pool loses it)."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_fuse_cmd(long_root, out, "--workers", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_shards(out, 2)
    kids = _children(proc.pid)
    workers = [k for k in kids if "resource_tracker" not in Path(f"/proc/{k}/cmdline").read_text()]
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("m2skd-fuse still waits for its dead worker after 90 s")
    assert proc.returncode == 1, err[-2000:]
    assert "a fusion worker process died" in err and "Traceback" not in err
    assert not list(out.glob(".*.tmp"))
    r = subprocess.run(_fuse_cmd(long_root, out, "--workers", "2"), capture_output=True, text=True)
    assert r.returncode == 0 and read_manifest(out)["scans"] == 600, r.stderr[-2000:]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_ctrl_c_while_the_workers_start_prints_no_traceback(long_root, tmp_path):
    """The workers ignored SIGINT only once their imports were done: a Ctrl-C in that window
    printed a KeyboardInterrupt traceback per starting worker."""
    out = tmp_path / "out"
    proc = subprocess.Popen(_fuse_cmd(long_root, out, "--workers", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_as_from_a_shell)
    deadline = time.time() + 60
    while time.time() < deadline and len(_children(proc.pid)) < 3:  # tracker and workers exist, importing
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]


def test_a_bad_scan_stops_the_other_workers_at_once(long_root, tmp_path):
    """With --workers, a bad scan was named only after every other run had finished (on
    SemanticKITTI: hours late); now the first failing run stops the rest."""
    root = tmp_path / "data"
    shutil.copytree(long_root, root)
    bad = root / "sequences" / "00" / "velodyne" / "000005.bin"
    pts = __import__("numpy").fromfile(bad, "<f4").reshape(-1, 4)
    pts[0, 0] = float("nan")
    pts.tofile(bad)
    out = tmp_path / "out"
    r = subprocess.run(_fuse_cmd(root, out, "--workers", "2"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "000005.bin" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    done_01 = len(list(out.glob("seq01_*.h5.json")))
    assert done_01 < 250, f"sequence 01 went on to {done_01} of 300 shards after 00 failed"
    assert not list(out.glob(".*.tmp"))


def test_out_that_is_a_file_is_refused_up_front(synth_root, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "sub"):
        r = subprocess.run([sys.executable, "-m", "m2skd.preprocess.cli", "--data", str(synth_root),
                            "--out", str(out)], capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and "is a file" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_a_full_disk_is_refused_before_the_shard_is_written(synth_root, tmp_path, monkeypatch):
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: type("U", (), {"free": 1 << 20})())
    with pytest.raises(OutputError, match=r"not enough free disk space for shard seq00_000000-000004\.h5"):
        run_fusion(synth_root, ["00"], tmp_path, CFG)
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*.tmp"))


def test_a_moved_dataset_keeps_its_cache(synth_root, tmp_path):
    shutil.copytree(K.Sequence(synth_root, "00").path, K.Sequence(tmp_path / "a", "00").path)
    run_fusion(tmp_path / "a", ["00"], tmp_path / "out", CFG)
    (tmp_path / "a").rename(tmp_path / "b")  # same files, same mtimes, another path
    skipped = []
    run_fusion(tmp_path / "b", ["00"], tmp_path / "out", CFG, on_scan=lambda s, f, skip: skipped.append(skip))
    assert skipped and all(skipped)


def test_a_missing_last_scan_is_reported(synth_root, tmp_path):
    seq = K.Sequence(tmp_path, "00")
    shutil.copytree(K.Sequence(synth_root, "00").path, seq.path)
    seq.scan_path(11).unlink()
    seq.label_path(11).unlink()
    (p,) = plan(tmp_path, ["00"], CFG)
    assert p.n_frames == 11 and "12 poses for 11 scans" in p.notes[0]


def test_bad_scan_sizes_are_refused_before_anything_is_written(synth_root, tmp_path):
    seq = K.Sequence(tmp_path, "00")
    shutil.copytree(K.Sequence(synth_root, "00").path, seq.path)
    data = seq.scan_path(9).read_bytes()
    seq.scan_path(9).write_bytes(data[:-4])
    with pytest.raises(FusionError, match=r"000009\.bin: size .* not a multiple of 16.*Nothing was written"):
        run_fusion(tmp_path, ["00"], tmp_path / "out", CFG)
    assert not (tmp_path / "out").exists()


def test_one_config_per_cache(synth_root, tmp_path):
    run_fusion(synth_root, ["00"], tmp_path, CFG)
    other = FusionConfig(shard_size=5, past=2, future=2)
    with pytest.raises(FusionError, match=r"holds sequence\(s\) \['00'\] fused with another config"):
        run_fusion(synth_root, ["08"], tmp_path, other)
    plans = []
    manifest = run_fusion(synth_root, ["08"], tmp_path, other, force=True, on_plan=plans.extend)
    assert {e["sequence"] for e in manifest["shards"]} == {"08"}
    assert "drops sequence(s) ['00']" in plans[0].notes[-1]


def test_bad_manifest_and_bad_shard_name_the_file(fused_cache, tmp_path):
    from m2skd.train.data.dataset import ShardDataset

    from .conftest import tiny_train_config

    cache = tmp_path / "cache"
    shutil.copytree(fused_cache, cache)
    cfg = tiny_train_config()
    (cache / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match=r"manifest\.json: not valid JSON"):
        ShardDataset(cache, ("00",), cfg)
    (cache / "manifest.json").write_text(json.dumps({"shards": [{"file": 1}]}))
    with pytest.raises(ShardError, match=r"manifest\.json: not an m2skd manifest"):
        ShardDataset(cache, ("00",), cfg)
    shutil.copy(fused_cache / "manifest.json", cache / "manifest.json")
    shard = sorted(cache.glob("seq00_*.h5"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    # a truncated shard no longer matches the sha256 fusion recorded: refused before h5py opens it
    with pytest.raises(ShardError, match=f"{shard.name}: damaged.*make fuse"):
        ShardDataset(cache, ("00",), cfg)


def test_a_damaged_manifest_of_our_cache_is_rewritten_a_foreign_shard_name_is_not(synth_root, tmp_path):
    """Issue 33, item 12: a truncated manifest sent the trainer's user to `make fuse`, which
    refused it too; now m2skd-fuse rewrites it from its shards' sidecars. Item 9: with no
    manifest, a user's file at a shard's name was overwritten; now refused (--force replaces)."""
    out = tmp_path / "c"
    run_fusion(synth_root, ["08"], out, FusionConfig(shard_size=6))
    good = read_manifest(out)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(ShardError, match="rerun `make fuse`"):
        read_manifest(out)
    run_fusion(synth_root, ["08"], out, FusionConfig(shard_size=6))
    assert read_manifest(out)["shards"] == good["shards"]
    # a foreign manifest still is never written over
    (out / "manifest.json").write_text('{"mine": true}')
    for side in out.glob("*.h5.json"):
        side.unlink()
    with pytest.raises(FusionError, match="not a manifest m2skd-fuse wrote"):
        run_fusion(synth_root, ["08"], out, FusionConfig(shard_size=6))
    # a user's file at a shard's name, no manifest
    mine = tmp_path / "m"
    mine.mkdir()
    name = sorted(p.name for p in out.glob("*.h5"))[0]
    (mine / name).write_bytes(b"my data")
    (mine / f"{name}.json").write_text('{"my": "notes"}')
    with pytest.raises(FusionError, match="a file m2skd-fuse did not write"):
        run_fusion(synth_root, ["08"], mine, FusionConfig(shard_size=6))
    assert (mine / name).read_bytes() == b"my data"
    run_fusion(synth_root, ["08"], mine, FusionConfig(shard_size=6), force=True)
    assert read_manifest(mine)["scans"] == good["scans"]
