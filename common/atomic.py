"""Write-then-rename, so a crash never leaves a half-written file under its final name."""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Iterator
from pathlib import Path

from .outputs import OutputError, disk_full


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, remedy: str = "free some space and rerun") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temp name starts with '.' and ends with '.tmp' so globs for finished files
    never see it; it lives in the same folder so the final rename is atomic (POSIX).
    A disk that fills up inside the block is an `OutputError` naming `path` and `remedy`
    (the CLIs print it in one line), not an OSError traceback.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if disk_full(e):
            raise OutputError(f"{path}: the disk filled up while writing it (the partial file was removed); "
                              f"{remedy}") from None
        if isinstance(e, PermissionError):  # a read-only folder, an immutable file (chattr +i) in the way
            raise OutputError(f"{path}: cannot be written or replaced ({e.strerror}); make it writable or write "
                              "elsewhere (nothing was changed)") from None
        raise


def write_text(path: str | os.PathLike, text: str, remedy: str = "free some space and rerun") -> None:
    """`path` holds `text`, or (a crash, a full disk) what it held before: never a part of it."""
    with atomic_path(path, remedy) as tmp:
        tmp.write_text(text)


def remove_stale_temps(folder: str | os.PathLike, targets: tuple[str, ...] = ("*",)) -> list[Path]:
    """Delete temp files left in `folder` by writers that were killed (their PID is gone).

    A SIGKILL skips the cleanup in `atomic_path`; a rerun calls this so no orphan stays.
    Temps of live processes (another writer at work) are left alone, and so is any whose
    final name matches none of `targets` (glob patterns of the files the caller writes):
    a user's `.draft.999999.tmp` is not ours to delete.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            target, pid_text = tmp.name[1:-len(".tmp")].rsplit(".", 1)
            pid = int(pid_text)
        except ValueError:
            continue
        if not any(fnmatch.fnmatchcase(target, t) for t in targets):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            removed.append(tmp)
        except PermissionError:
            pass  # alive, another user's
    return removed
