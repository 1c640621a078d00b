"""Output folders: writable or refused, one writer at a time, free space checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from m2skd.common import outputs
from m2skd.common.outputs import OutputError, check_free_space, ensure_writable_dir, exclusive


def test_a_file_or_a_path_under_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match=f"{f}: {f} is a file"):
        ensure_writable_dir(f)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        ensure_writable_dir(f / "sub")
    assert ensure_writable_dir(tmp_path / "a" / "b").is_dir()


def test_a_live_owner_keeps_the_folder_a_dead_one_loses_it(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # the holder names itself in its lock: m2skd-fuse refused by a trainer says a trainer holds it
        (tmp_path / outputs.LOCK).write_text(f"{sleeper.pid} m2skd-train")
        with pytest.raises(OutputError, match=f"another m2skd-train process \\(PID {sleeper.pid}\\)"):
            with exclusive(tmp_path, "m2skd-fuse"):
                pass
        (tmp_path / outputs.LOCK).write_text(str(sleeper.pid))  # a lock of an older version: the PID alone
        with pytest.raises(OutputError, match=f"another m2skd process \\(PID {sleeper.pid}\\)"):
            with exclusive(tmp_path, "m2skd-fuse"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    # the owner is dead now: its lock is taken over, and released at the end
    with exclusive(tmp_path, "m2skd-fuse") as path:
        assert (path / outputs.LOCK).read_text() == f"{__import__('os').getpid()} m2skd-fuse"
    assert not (tmp_path / outputs.LOCK).exists()


def test_a_refused_start_leaves_no_folder_behind(tmp_path):
    with pytest.raises(RuntimeError), exclusive(tmp_path / "new"):
        raise RuntimeError("refused")
    assert not (tmp_path / "new").exists()


def test_free_space_is_checked(tmp_path, monkeypatch):
    check_free_space(tmp_path, 1 << 20, "a test")  # a megabyte fits anywhere this runs
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: type("U", (), {"free": 10 << 20})())
    want = r"not enough free disk space for a test \(needs ~100 MiB and keeps 64 MiB spare, 10 MiB free\)"
    with pytest.raises(OutputError, match=want):
        check_free_space(tmp_path, 100 << 20, "a test")


def test_a_short_write_without_errno_is_a_full_disk():
    """Issue 33, item 13: numpy's `tofile` on a full disk raises OSError('4022 requested and
    1024 written') with no errno; the generator then did not say the disk was full."""
    import errno

    from m2skd.common.outputs import disk_full

    assert disk_full(OSError("4022 requested and 1024 written"))
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(ValueError("4022 requested and 1024 written"))


def test_a_file_that_cannot_be_replaced_is_one_line_and_stays(tmp_path, monkeypatch):
    """Issue 33, item 11: an immutable last.pt (chattr +i) ended `--force` in a
    PermissionError traceback at save; the rename refused is now an OutputError naming it."""
    import os

    from m2skd.common.atomic import atomic_path

    target = tmp_path / "last.pt"
    target.write_text("old")

    def refuse(src, dst):
        raise PermissionError(1, "Operation not permitted", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match=r"last.pt: cannot be written or replaced \(Operation not permitted\)"):
        with atomic_path(target) as tmp:
            tmp.write_text("new")
    assert target.read_text() == "old" and not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_at_the_lock_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """Issue 33, item 11 (hostile rerun): on a full disk the empty probe file of
    ensure_writable_dir fits, the lock's bytes do not: `eval --predictions` ended in an
    ENOSPC traceback from the lock's write."""
    import errno

    real_fdopen = outputs.os.fdopen

    class FullDisk:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(outputs.os, "fdopen", FullDisk)
    with pytest.raises(OutputError, match=r"new/\.m2skd\.lock: cannot write the folder's lock \(the disk is full\)"):
        with exclusive(tmp_path / "new", "m2skd-train eval"):
            pass
    assert not (tmp_path / "new").exists()
