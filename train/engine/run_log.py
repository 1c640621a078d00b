"""What a run reports: one JSON line per step in `metrics.jsonl`, TensorBoard event files
in `tb/` (every term, val scores, learning rate, scans/s; when the `tensorboard` package is
installed), a progress bar (plain lines when piped), and `train.log`: what the run said,
with times (its resolved config, progress, validations, checkpoints, warnings, how it
ended), appended across resumes, so a run's messages outlive the terminal."""

from __future__ import annotations

import contextlib
import gzip
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from m2skd.common.progress import progress

METRICS = "metrics.jsonl"
TB = "tb"
TEXT_LOG = "train.log"


class TextLog:
    """OUT/train.log, one timestamped line a message (nothing written when disabled:
    the ranks other than the main one)."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.path, self.enabled = Path(out) / TEXT_LOG, enabled

    def line(self, message: str) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                for part in message.splitlines() or [""]:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {part}\n")

    @contextlib.contextmanager
    def warnings(self) -> Iterator[None]:
        """Every Python warning raised meanwhile goes to the log too (and still to stderr)."""
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            self.line(f"warning: {category.__name__}: {message} ({filename}:{lineno})")
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = shown


def _tensorboard(path: Path):
    """A SummaryWriter, or None (with one line saying why) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: no TensorBoard curves (pip install 'm2skd[tensorboard]'); metrics.jsonl has every value")
        return None
    return SummaryWriter(str(path))


class RunLog:
    """Context manager: `record(step, values, scans)` after each step. Only the main rank
    writes (`enabled=False` elsewhere); the bar shows the losses and scans/s."""

    def __init__(self, out: Path, title: str, total: int, start: int, *, enabled: bool, show: bool,
                 every: int, tensorboard: bool = False, text: TextLog | None = None) -> None:
        self.path, self.title, self.total, self.start = Path(out) / METRICS, title, total, start
        self.text = text or TextLog(out, False)
        self.enabled, self.every = enabled, every
        self.tb = _tensorboard(Path(out) / TB) if (tensorboard and enabled) else None
        self.bar = progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[losses]}"), TextColumn("{task.fields[rate]}"),
                            TimeElapsedColumn(), disable=not (show and enabled))

    def __enter__(self) -> RunLog:
        if self.enabled:
            trim_metrics(self.path, self.start)
            self.file = self.path.open("a")
        self.bar.__enter__()
        self.task = self.bar.add_task(self.title, total=self.total, completed=self.start, losses="", rate="")
        self.t_last, self.scans_since = time.perf_counter(), 0
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
        if self.enabled:
            self.file.close()
        if self.tb is not None:
            self.tb.close()

    def record(self, step: int, values: dict[str, float], scans: int, lr: float | None = None) -> None:
        self.scans_since += scans
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = self.scans_since / max(now - self.t_last, 1e-9)
        record = {"step": step, **values, "scans_per_s": round(rate, 2)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"val/{k[4:]}" if k.startswith("val_") else f"loss/{k}", v, step)
            self.tb.add_scalar("speed/scans_per_s", rate, step)
            if lr is not None:
                self.tb.add_scalar("optim/lr", lr, step)
        if step % self.every == 0 or step == self.total or any(k.startswith("val_") for k in values):
            losses = " ".join(f"{k} {v:.3f}" for k, v in values.items())
            self.bar.update(self.task, completed=step, rate=f"{rate:.1f} scans/s", losses=losses)
            self.text.line(f"step {step}/{self.total} {losses} {rate:.1f} scans/s")
            self.t_last, self.scans_since = now, 0


def trim_metrics(path: Path, upto: int) -> None:
    """Drop logged steps beyond the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= upto]
    path.write_text("".join(ln + "\n" for ln in keep))


def read_metrics(out: str | Path) -> list[dict]:
    """A run folder's step log, one dict a step: `metrics.jsonl` as the trainer writes it, or
    `metrics.jsonl.gz` as the committed records keep it (gzip -9 of the same lines)."""
    path = Path(out) / METRICS
    if path.exists():
        text = path.read_text()
    elif path.with_name(METRICS + ".gz").exists():
        text = gzip.decompress(path.with_name(METRICS + ".gz").read_bytes()).decode()
    else:
        return []
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]
