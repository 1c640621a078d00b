"""Prediction files (`predict`'s test-split export, `eval --predictions`): single-scan
predictions in the benchmark server's layout, checked the way its submission validator
(semantic-kitti-api `validate_submission.py`) checks them.

    OUT/sequences/XX/predictions/NNNNNN.label   raw ids (learning_map_inv), one uint32 a point
    OUT/submission.zip                          the same, with the folder entries the validator wants

Resumable: a scan whose prediction file exists with one label per point is skipped
(files are written to a temp name and renamed, so an existing one is complete).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from m2skd.common import kitti_io
from m2skd.common.atomic import atomic_path
from m2skd.common.labels import LEARNING_MAP_INV, train_to_raw
from m2skd.common.progress import progress

from ..config import TrainConfig
from ..data.batch import collate
from ..data.dataset import RawDataset
from .metrics import predict
from .output_folder import PredictionFolderError

VALID_RAW_IDS = frozenset(LEARNING_MAP_INV[1:])  # a prediction is never 'unlabelled'


def write_predictions(root: Path, batch, pred: np.ndarray) -> None:
    """ROOT/sequences/XX/predictions/NNNNNN.label in raw ids for each scan's own points."""
    start = 0
    inside = Path(root).resolve()
    for size, n, (seq, frame) in zip(batch.sizes, batch.n_original, batch.meta, strict=True):
        raw = train_to_raw(pred[start:start + n])
        path = kitti_io.Sequence(root, seq).prediction_path(frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.resolve().is_relative_to(inside) or path.is_symlink():
            # a link inside the output folder would write through onto whatever it points at (labels)
            raise PredictionFolderError(f"{path}: leads out of {root} through a symbolic link; not written")
        kitti_io.write_label(path, raw, np.zeros_like(raw))
        start += size


def _done(out: Path, seq: kitti_io.Sequence, frame: int) -> bool:
    """A complete, valid prediction of the scan is on disk (one valid raw id a point) and
    newer than the scan: a damaged one, or one of a scan replaced since, is predicted again."""
    pred = kitti_io.Sequence(out, seq.name).prediction_path(frame)
    if not pred.is_file():
        return False
    scan, done = seq.scan_path(frame).stat(), pred.stat()
    # the scan changed after it was predicted (same point count): not done
    if done.st_size != scan.st_size // 4 or done.st_mtime_ns < scan.st_mtime_ns:
        return False
    ids = np.fromfile(pred, dtype=np.uint32) & 0xFFFF
    return bool(np.isin(ids, list(VALID_RAW_IDS)).all())


@torch.no_grad()
def predict_sequences(model: torch.nn.Module, cfg: TrainConfig, root: Path, sequences: list[str], out: Path,
                      device: torch.device, *, show: bool = True, workers: int = 0) -> tuple[int, int]:
    """Write the prediction of every scan not done yet; returns (written, skipped)."""
    ds = RawDataset(root, sequences, cfg, labels=False, skip=lambda seq, f: _done(out, seq, f))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate("single"), num_workers=workers)
    with progress(disable=not show) as bar:
        task = bar.add_task("predict", total=len(ds))
        for batch in loader:
            write_predictions(out, batch, predict(model(batch.to(device)).point_logits).cpu().numpy())
            bar.advance(task, 1)
    return len(ds), ds.skipped


def check_predictions(root: Path, sequences: list[str], out: Path) -> list[str]:
    """What the server would reject, one line each (empty: ready): a missing file, a file
    with another count than its scan, a raw id the benchmark does not score."""
    problems = []
    for seq in kitti_io.iter_sequences(root, sequences):
        for f in seq.frames():
            pred = kitti_io.Sequence(out, seq.name).prediction_path(f)
            n = seq.scan_path(f).stat().st_size // 16
            if not pred.is_file():
                problems.append(f"{pred}: missing")
                continue
            sem, _ = kitti_io.read_label(pred)
            if len(sem) != n:
                problems.append(f"{pred}: {len(sem)} labels for {n} points")
            elif bad := sorted(set(np.unique(sem).tolist()) - VALID_RAW_IDS):
                problems.append(f"{pred}: raw ids {bad[:5]} the benchmark does not score")
    return problems


def write_zip(out: Path, sequences: list[str]) -> Path:
    """OUT/submission.zip with `sequences/`, `sequences/XX/`, `sequences/XX/predictions/` folder
    entries (the validator looks them up) and every prediction file, stored uncompressed
    in name order."""
    path = out / "submission.zip"
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        z.writestr("sequences/", b"")
        for name in sequences:
            z.writestr(f"sequences/{name}/", b"")
            z.writestr(f"sequences/{name}/predictions/", b"")
            for f in sorted((out / "sequences" / name / "predictions").glob("*.label")):
                z.write(f, f"sequences/{name}/predictions/{f.name}")
    return path


def check_zip(path: Path, root: Path, sequences: list[str]) -> list[str]:
    """The validator's checks on the archive: folder entries, one file per scan, its size."""
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
    problems = [f"{path}: folder entry {d!r} missing" for d in
                ["sequences/", *(f"sequences/{s}/{p}" for s in sequences for p in ("", "predictions/"))]
                if d not in infos]
    for seq in kitti_io.iter_sequences(root, sequences):
        for f in seq.frames():
            name = f"sequences/{seq.name}/predictions/{f:06d}.label"
            n = seq.scan_path(f).stat().st_size // 16
            if name not in infos:
                problems.append(f"{path}: {name} missing")
            elif infos[name].file_size != 4 * n:
                problems.append(f"{path}: {name} holds {infos[name].file_size // 4} labels for {n} points")
    return problems
