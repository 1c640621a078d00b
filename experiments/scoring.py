"""What a finished run of the experiment records: its best checkpoint scored on the report
sequences (per class, ground-truth points, hard-instance recall by size), its curve, the
world it trained on."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from m2skd.train.engine.checkpoint import load_checkpoint
from m2skd.train.engine.run_log import read_metrics

from .instance_size import EDGES, score_run
from .lanes import deployable


def score(ckpt: Path, cache: Path, sequences: tuple[str, ...], view: str, device: torch.device) -> dict:
    """The checkpoint's scores on `sequences` (`Confusion.summary`), each class's
    ground-truth points there, and its hard-class instances' recall by size (`EDGES`)."""
    r = score_run(ckpt, cache, sequences, view, device)
    return {**r["summary"], "gt_points": r["gt_points"], "instances": r["bins"], "instance_edges": list(EDGES)}


def run_result(name: str, last: Path, cache: Path, report: tuple[str, ...], device: torch.device,
               world: dict | None = None) -> dict:
    arm, seed = name.rsplit("_s", 1)
    best = deployable(last)
    state = load_checkpoint(last)
    cfg = state["config"]
    res = {"name": name, "arm": arm, "seed": int(seed), "stopped_at": state["step"],
           "best_step": load_checkpoint(best)["step"], "stopped_early": bool(state.get("stopped")),
           "budget": state.get("total_steps"), "val_every": cfg.get("runtime", {}).get("val_every"),
           "patience": cfg.get("runtime", {}).get("patience"), "world": world,
           "hard_classes": state["hard_classes"], "report": score(best, cache, report, "single", device),
           "val_curve": [(m["step"], m["val_miou"]) for m in read_metrics(last.parent) if "val_miou" in m]}
    if arm.startswith(("teacher", "online")):  # its own network on fused scans too
        res["report_fused"] = score(best, cache, report, "fused", device)
    return res


def world_of(data: Path | None, sequences: tuple[str, ...]) -> dict | None:
    """The synthetic world the cache was fused from (each sequence's synth.json): its seed,
    the generator's version and config; None for data the generator did not write."""
    if data is None:
        return None
    stamps = {}
    for seq in sequences:
        p = data / "sequences" / seq / "synth.json"
        if not p.is_file():
            return None
        stamps[seq] = json.loads(p.read_text())
    first = next(iter(stamps.values()))
    seeds = {st["config"]["seed"] for st in stamps.values()}
    versions = {st.get("version") for st in stamps.values()}
    if len(seeds) > 1 or len(versions) > 1:
        raise click.ClickException(f"{data}: sequences of several worlds (seeds {sorted(seeds)}, generator versions "
                                   f"{sorted(versions, key=str)}): an experiment runs on one world")
    return {"seed": first["config"]["seed"], "generator_version": first.get("version"), "config": first["config"],
            "sequences": list(stamps)}
