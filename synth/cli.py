"""`m2skd-synth OUT_DIR`: write synthetic sequences in the SemanticKITTI layout."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from m2skd.common import kitti_io
from m2skd.common.cli import config_options, fail, knob_values
from m2skd.common.labels import CLASS_NAMES, HARD_CLASS_IDS, NUM_CLASSES, raw_to_train
from m2skd.common.outputs import OutputError, ensure_writable_dir
from m2skd.common.progress import progress
from m2skd.common.splits import parse_sequences

from .config import WORLD_VERSIONS, SynthConfig
from .sequence import (
    ForeignSequenceError,
    OlderWorldError,
    check_own_folder,
    generate_sequence,
    kept_older_world,
    with_labels,
)

console = Console(stderr=True)


def world_version_option(help: str = "generator version") -> Callable:
    """The benches' --world-version: one of the versions this code writes (WORLD_VERSIONS),
    refused by click before anything runs; by default the generator's (SynthConfig)."""
    return click.option("--world-version", type=click.Choice([str(v) for v in WORLD_VERSIONS]),
                        default=str(SynthConfig().world_version),
                        show_default=True, callback=lambda _ctx, _param, v: int(v),
                        help=f"{help} (a new version is a new world; 4 was withdrawn: docs/synthetic.md)")


def summarise(root: Path, names: list[str], every: int = 1) -> Table:
    """Read the sequences back through the readers and tabulate points and classes."""
    table = Table(title=f"synthetic dataset {root}")
    for col in ("seq", "scans", "points/scan", "labelled", "hard-class points", "hard classes absent",
                "top classes"):
        table.add_column(col)
    for seq in kitti_io.iter_sequences(root, names):
        frames = seq.frames()
        seq.lidar_poses(len(frames))  # validates poses.txt and calib.txt
        counts = np.zeros(NUM_CLASSES)
        n_pts = []
        for f in frames[::every]:
            pts, sem, _ = seq.read(f, labels=seq.has_labels)
            n_pts.append(len(pts))
            if sem is not None:
                counts += np.bincount(raw_to_train(sem, str(seq.label_path(f))), minlength=NUM_CLASSES)
        if counts.sum():
            share = counts / counts.sum()
            hard = f"{100 * share[list(HARD_CLASS_IDS)].sum():.2f}%"
            absent = ", ".join(CLASS_NAMES[c] for c in HARD_CLASS_IDS if counts[c] == 0) or "none"
            top = ", ".join(f"{CLASS_NAMES[c]} {100 * share[c]:.0f}%" for c in np.argsort(-share)[:3])
            labelled = "yes"
        else:
            hard = absent = top = "-"
            labelled = "no (test split)"
        table.add_row(seq.name, str(len(frames)), f"{np.mean(n_pts):,.0f}", labelled, hard, absent, top)
    return table


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--sequences", default="00", show_default=True, help="e.g. 00-10, 08 or 00,02,08")
@click.option("--preset", type=click.Choice(SynthConfig.preset_names()), default="full", show_default=True,
              help="full: HDL-64E-like 64 x 2000 scans; demo: 32 x 1024; tiny: 16 x 360 for tests")
@config_options(SynthConfig)
@click.option("--labels/--no-labels", default=None,
              help="write labels (default: yes, except test sequences 11-21, as SemanticKITTI)")
@click.option("--summary/--no-summary", default=True, show_default=True, help="print a table read back from disk")
@click.option("--regenerate", is_flag=True,
              help="replace sequences an older version of the generator wrote (kept untouched otherwise)")
def main(out_dir: Path, sequences: str, preset: str, labels: bool | None, summary: bool, regenerate: bool,
         **options) -> None:
    """Generate synthetic LiDAR sequences in OUT_DIR/sequences/XX (SemanticKITTI layout).

    Deterministic per seed; an interrupted run resumes where it stopped.
    """
    try:
        names = parse_sequences(sequences)
        cfg = SynthConfig.preset(preset).override(**knob_values(SynthConfig, options))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        ensure_writable_dir(out_dir)
        kept = []
        for name in names:  # every sequence checked before any is written
            seq = kitti_io.Sequence(out_dir, name)
            prior = check_own_folder(seq.path)
            if not regenerate and (old := kept_older_world(seq, prior, cfg, with_labels(name, labels))) is not None:
                kept.append((name, old))
        for name, old in kept:
            console.print(f"[yellow]sequence {name}: written by version {old} of the generator (asked: "
                          f"{cfg.world_version}); kept as it is, scans and poses together (--regenerate replaces it)")
        _generate(out_dir, names, cfg, labels, summary, regenerate)
    except (ForeignSequenceError, OlderWorldError, OutputError) as e:
        fail(str(e))
    except OSError as e:  # a folder that turns read-only or a disk that fills mid-run
        fail(f"{e.filename or out_dir}: {e.strerror or e}; rerun to resume (finished scans are kept)")


def _generate(out_dir: Path, names: list[str], cfg: SynthConfig, labels: bool | None, summary: bool,
              regenerate: bool = False) -> None:
    t0 = time.perf_counter()
    with progress(
        TextColumn("[bold]seq {task.fields[seq]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console,
    ) as bar:
        for name in names:
            task = bar.add_task("synth", total=cfg.scans, seq=name, rate="")
            start = time.perf_counter()

            def tick(frame: int, task=task, start=start) -> None:
                rate = (frame + 1) / max(time.perf_counter() - start, 1e-9)
                bar.update(task, advance=1, rate=f"{rate:.1f} scans/s")

            generate_sequence(out_dir, name, cfg, labels=labels, on_scan=tick, regenerate=regenerate)
    console.print(f"wrote {len(names)} sequence(s) x {cfg.scans} scans to {out_dir} "
                  f"in {time.perf_counter() - t0:.1f} s")
    if summary:
        Console().print(summarise(out_dir, names))


if __name__ == "__main__":
    sys.exit(main())
