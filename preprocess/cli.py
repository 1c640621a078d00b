"""`m2skd-fuse`: multi-scan hard-instance fusion into resumable HDF5 shards."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from m2skd.common.cli import OutPath, config_options, fail, knob_values
from m2skd.common.kitti_io import KittiFormatError
from m2skd.common.labels import UnknownLabelError
from m2skd.common.outputs import OutputError
from m2skd.common.progress import progress
from m2skd.common.shards import ShardError
from m2skd.common.splits import parse_sequences

from .config import FusionConfig, parse_window
from .pipeline import FusionError, run_fusion
from .summary import fused_stats

console = Console(stderr=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="dataset root holding sequences/ (SemanticKITTI layout)")
@click.option("--sequences", default="00", show_default=True, help="e.g. 00-10, 08 or 00,02,08")
@click.option("--out", default=Path("data_cache/fused"), show_default=True, type=OutPath(path_type=Path))
@click.option("--preset", type=click.Choice(FusionConfig.preset_names()), default="default", show_default=True,
              help="default: pose-aligned, the moving-object rule, a 5 cm filter, the 4 previous scans; released: "
                   "the released loader's fusion exactly (centroid-only, no filter, t < 4 unfused, t's instances "
                   "appended again); symmetric: -2:+2")
@click.option("--window", help=f"neighbour scans -K:+K (past:future) [default: {FusionConfig().window}, "
                               "or the preset's]")
@config_options(FusionConfig)
@click.option("--workers", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="processes fusing in parallel: runs of consecutive shards, so one sequence uses them too")
@click.option("--force", is_flag=True, help="rebuild shards even if finished")
def main(data: Path, sequences: str, out: Path, preset: str, window: str | None, workers: int, force: bool,
         **options) -> None:
    """Fuse the hard-class instances of neighbouring scans into each scan (the teacher's input)."""
    try:
        names = parse_sequences(sequences)
        knobs = knob_values(FusionConfig, options)
        if window is not None:
            knobs["past"], knobs["future"] = parse_window(window)
        cfg = FusionConfig.preset(preset).override(**knobs)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    root, dest = Path(data).resolve(), Path(out).resolve()
    if dest == root or dest.is_relative_to(root / "sequences"):
        # shards and a manifest among the scans: a later `make fuse` or a reader of the dataset trips on them
        fail(f"--out {out}: that is the dataset ({data}) or one of its sequence folders; write the cache beside it "
             "(e.g. data_cache/fused)")
    try:
        _fuse(data, names, out, cfg, workers, force)
    except (FusionError, KittiFormatError, UnknownLabelError, OutputError, ShardError) as e:
        fail(str(e))
    except BaseException as e:  # Ctrl-C: inside a numba kernel it surfaces chained to another error
        if not _interrupted(e):
            raise
        fail(f"interrupted: the finished shards in {out} are kept; rerun the same command to resume", 130)


def _interrupted(e: BaseException | None) -> bool:
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__cause__ or e.__context__
    return False


def _fuse(data: Path, names: list[str], out: Path, cfg: FusionConfig, workers: int, force: bool) -> None:
    t0 = time.perf_counter()
    done = {"fused": 0}
    with progress(TextColumn("[bold]fuse"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("fuse", total=None, info="")

        def on_plan(plans):
            for note in (n for p in plans for n in p.notes):
                console.print(f"warning: {note}", markup=False, highlight=False)
            bar.update(task, total=sum(p.n_frames for p in plans))

        def on_scan(name, frame, skipped):
            if not skipped:
                done["fused"] += 1
            rate = done["fused"] / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=1, info=f"seq {name} {rate:.1f} scans/s")

        manifest = run_fusion(data, names, out, cfg, workers=workers, force=force, on_scan=on_scan, on_plan=on_plan)
    dt = time.perf_counter() - t0
    stats = fused_stats(manifest, out)
    table = Table(title=f"fused cache {out} (window {cfg.window}, voxel {cfg.voxel} m)")
    table.add_column("quantity")
    table.add_column("value")
    table.add_row("shards / scans", f"{len(manifest['shards'])} / {manifest['scans']}")
    table.add_row("scans fused this run", f"{done['fused']} in {dt:.1f} s")
    table.add_row("fused points per scan", f"{stats['fused_per_scan']:.0f}")
    for name, v in stats["per_class_per_scan"].items():
        table.add_row(f"  {name}", f"{v:.0f}")
    Console().print(table)

if __name__ == "__main__":
    sys.exit(main())
