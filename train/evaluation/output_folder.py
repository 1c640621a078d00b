"""What an eval/predict output may hold, decided in one place: the prediction files of one
checkpoint (marked by `predicted_by.json` with its sha256), the `submission.zip` made of
them, and an `eval --json` result of the same checkpoint. Anything else found there
(another model's files, a user's file, a symbolic link that could lead onto the labels)
is refused, or with `--force` replaced. A training run's folder has its own rules
(train/engine/run_folder.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from m2skd.common.atomic import write_text
from m2skd.common.digest import file_sha256
from m2skd.common.outputs import OutputError

MADE_BY = "predicted_by.json"  # which checkpoint (its sha256) wrote a folder's predictions


class PredictionFolderError(ValueError):
    """An output folder holding another model's predictions."""


def claim_folder(out: Path, ckpt: Path, force: bool) -> None:
    """Record `ckpt` as the model of OUT's predictions. A folder another checkpoint (or an
    unknown one) predicted into is refused: resuming there would mix two models' files and
    zip them as one submission; `force` deletes its predictions and starts over."""
    made_by = out / MADE_BY
    mine = {"checkpoint": str(ckpt), "sha256": file_sha256(ckpt)}
    old = sorted(out.glob("sequences/*/predictions/*.label"))
    prior = None
    if made_by.is_file():
        try:
            prior = json.loads(made_by.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            prior = None
    if (old or made_by.exists() or (out / "submission.zip").exists()) and prior != mine["sha256"]:
        if not force:
            who = ("another checkpoint" if prior else f"an unknown model (a {MADE_BY} m2skd did not write)"
                   if made_by.exists() else f"an unknown model (no {MADE_BY})")
            raise PredictionFolderError(f"{out}: holds predictions of {who}, not of {ckpt}; pass --force to delete "
                                        "them and predict afresh, or choose another --out")
        for f in old:
            f.unlink()
        (out / "submission.zip").unlink(missing_ok=True)
    write_text(made_by, json.dumps(mine, indent=1))



def refuse_foreign_json(path: Path, ckpt: Path, force: bool = False) -> None:
    """`eval --json` replaces only an earlier eval result (a JSON object with its keys) of
    the same checkpoint; another checkpoint's only with `force`."""
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
        ours = isinstance(old, dict) and {"miou", "hard_miou", "checkpoint"} <= old.keys()
    except (OSError, UnicodeDecodeError, ValueError):
        ours = False
    if not ours:
        raise OutputError(f"--json {path}: the file exists and is not an earlier `m2skd-train eval` result; "
                          "refusing to overwrite it: choose another path")
    if Path(str(old["checkpoint"])).resolve() != ckpt.resolve() and not force:
        raise OutputError(f"--json {path}: holds the result of another checkpoint ({old['checkpoint']}); "
                          "choose another path, or --force to replace it")


def refuse_foreign_predictions(root: Path, option: str = "--predictions", also: tuple[str, ...] = ()) -> None:
    """`--predictions DIR` writes DIR/sequences/XX/predictions/*.label: an existing DIR may
    hold only such files (an earlier run's), nothing else it would mix them with (`also`:
    other files of ours at its top, predict's submission.zip)."""
    if not root.is_dir():
        return
    for folder, dirs, files in os.walk(root):  # not following links: a link is refused, not entered
        for name in dirs + files:
            if (Path(folder) / name).is_symlink():
                raise OutputError(f"{option} {root}: {Path(folder) / name} is a symbolic link; predictions "
                                  "are written only into real folders of their own (a link could lead onto the "
                                  "ground-truth labels): choose an empty or new folder")
    foreign = [p for p in root.rglob("*") if p.is_file() and not (
        p.suffix == ".label" and p.parent.name == "predictions" and p.parent.parent.parent.name == "sequences"
        and p.parent.parent.parent.parent == root) and not (
        p.parent == root and p.name in (".m2skd.lock", "predicted_by.json", *also))]
    if foreign:
        raise OutputError(f"{option} {root}: the folder holds other files than predictions ({foreign[0]}); "
                          "choose an empty or new folder")
