"""Progress for long work: a rich bar on a terminal, plain periodic lines otherwise.

Output piped to a file (a cluster job's log, `| tee`) gets one line every `every`
seconds and one at the end of each task, instead of a bar that only appears when the
run is over.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn


class PlainProgress:
    """The part of rich's Progress the CLIs use, printed as plain lines."""

    def __init__(self, console: Console, every: float = 10.0, disable: bool = False) -> None:
        self.console, self.every, self.disable = console, every, disable
        self.tasks: dict[int, dict[str, Any]] = {}
        self._last = 0.0

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        task = len(self.tasks)
        self.tasks[task] = {"description": description, "total": total, "completed": completed, "fields": fields,
                            "start": time.perf_counter(), "done": False}
        return task

    def update(self, task: int, *, advance: float = 0, completed: float | None = None, total: float | None = None,
               **fields: Any) -> None:
        t = self.tasks[task]
        t["completed"] = t["completed"] + advance if completed is None else completed
        if total is not None:
            t["total"] = total
        t["fields"].update(fields)
        finished = t["total"] is not None and t["completed"] >= t["total"]
        now = time.perf_counter()
        if not self.disable and ((finished and not t["done"]) or now - self._last >= self.every):
            self._last = now
            t["done"] = finished
            total_s = "?" if t["total"] is None else f"{t['total']:.0f}"
            extra = " ".join(str(v) for v in t["fields"].values() if v not in ("", None))
            self.console.print(f"{t['description']}: {t['completed']:.0f}/{total_s} {extra} "
                               f"[{now - t['start']:.0f} s]", markup=False, highlight=False, soft_wrap=True)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)


def progress(*columns: ProgressColumn, console: Console | None = None, disable: bool = False,
             every: float = 10.0) -> Progress | PlainProgress:
    """A rich Progress with `columns` when `console` is a terminal, else PlainProgress."""
    console = console or Console(file=sys.stderr)
    if console.is_terminal:
        return Progress(*columns, console=console, disable=disable)
    return PlainProgress(console, every, disable)
