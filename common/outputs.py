"""Output folders: checked writable before any work starts, held by one process at a time,
and checked for free space before a big write.

Every stage that writes a folder (`m2skd-fuse --out`, `m2skd-train ... --out`) goes
through `output_dir(path)`: a path that is a file, lies under a file, or sits on a
read-only file system is refused up front with one line naming it, and a second process
writing the same folder is refused while the first is alive (a dead owner's lock is
taken over).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

LOCK = ".m2skd.lock"


class OutputError(ValueError):
    """An output path that cannot be written (the message names it and says what to do)."""


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) if needed and prove it is a writable folder."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{path}: {parent} is a file, not a folder; choose another output path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".m2skd-probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{path}: cannot write here ({e.strerror or e}); choose another output path") from None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str = "m2skd") -> Iterator[Path]:
    """Hold `path/.m2skd.lock` (holding our PID) for the duration; refuse if a live process
    holds it. A folder created here and still empty at the end is removed again, so a run
    refused before it wrote anything leaves nothing behind."""
    created = not Path(path).exists()
    path = ensure_writable_dir(path)
    lock = path / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:  # "PID" (older locks) or "PID what": the holder names itself
                pid_text, _, holder = lock.read_text().strip().partition(" ")
                owner = int(pid_text or 0)
            except (OSError, ValueError):
                owner, holder = 0, ""
            if owner and owner != os.getpid() and _alive(owner):
                raise OutputError(f"{path}: another {holder or 'm2skd'} process (PID {owner}) is writing here; wait "
                                  "for it, stop it, or choose another output folder") from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # a dead owner's (or our own stale) lock: take it over
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {what}")
        except OSError as e:  # an empty probe fits on a full disk; the lock's few bytes may not
            with contextlib.suppress(OSError):
                lock.unlink()
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()
            why = "the disk is full" if disk_full(e) else (e.strerror or str(e))
            raise OutputError(f"{lock}: cannot write the folder's lock ({why}); free some space or choose "
                              "another output folder") from None
        break
    else:
        raise OutputError(f"{lock}: could not take the lock")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if lock.read_text().split(" ", 1)[0].strip() == str(os.getpid()):
                lock.unlink()
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds if empty


RESERVE_MIB = 64  # left free after any write: a disk filled to the last byte breaks more than this run


def check_free_space(path: str | os.PathLike, need: int, what: str) -> None:
    """Refuse to start a write of about `need` bytes under `path` when the disk has less
    (with 10 % and 64 MiB to spare): a full disk mid-write costs more than a clear no."""
    free = shutil.disk_usage(path).free
    if free < need * 1.1 + (RESERVE_MIB << 20):
        raise OutputError(f"{path}: not enough free disk space for {what} (needs ~{need / 2**20:,.0f} MiB and "
                          f"keeps {RESERVE_MIB} MiB spare, {free / 2**20:,.0f} MiB free); free some space or choose "
                          "another output folder")


def disk_full(e: BaseException) -> bool:
    """An error of a full disk: ENOSPC/EDQUOT, or numpy's `tofile` short write, which carries
    no errno ("4022 requested and 1024 written")."""
    if not isinstance(e, OSError):
        return False
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and bool(
        re.search(r"\d+ requested and \d+ written", str(e))))


def _within(a: Path, b: Path) -> bool:
    """True if `a` is `b` or lies under it (both resolved)."""
    return a == b or b in a.parents


def refuse_inputs(output: str | os.PathLike, option: str, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output path that is one of the command's inputs, lies inside an input
    folder, or holds an input (a run folder holding the teacher it distils): writing there
    would overwrite what the command reads. Whatever the flags (--force included)."""
    out = Path(output).resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        inp = Path(path).resolve()
        if _within(out, inp) or _within(inp, out):
            raise OutputError(f"{option} {output}: that is where the {name} {path} lives; writing there would "
                              f"overwrite the command's own input: choose another {option}")
