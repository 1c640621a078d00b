"""Single-scan inference over a split: confusion matrix, IoU table, prediction files.

Scores are always on each scan's own points. In the `fused` view (a cache) the network
sees the fused scan but is scored on the original points only, which is how the
teacher's "fused val" numbers are meant.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from m2skd.common import kitti_io
from m2skd.common.labels import CLASS_NAMES, class_ids, train_to_raw
from m2skd.common.progress import progress as progress_bar

from .batch import collate
from .checkpoint import checkpoint_config, load_checkpoint
from .config import TrainConfig
from .dataset import RawDataset, ShardDataset
from .metrics import Confusion, predict
from .models import build_model


def load_model(ckpt: str | Path, device: torch.device) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """The checkpoint's network in eval mode, its config, and the checkpoint (its
    `hard_classes` are the ones the run trained with)."""
    state = load_checkpoint(ckpt)
    cfg = checkpoint_config(state, ckpt)
    model = build_model(cfg.model, device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, state


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: torch.utils.data.Dataset, device: torch.device, *,
             view: str = "single", batch_size: int = 1, workers: int = 0, predictions: Path | None = None,
             progress: bool = True) -> Confusion:
    """Confusion over the dataset's scans, read in `view` (single or fused), scored on their own points."""
    # its own generator: validation during training must not draw from the run's RNG
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate(view),
                                         num_workers=workers, generator=torch.Generator())
    conf = Confusion()
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("evaluating", total=len(dataset))
        for batch in loader:
            b = batch.to(device)
            pred = predict(model(b).point_logits)
            own = b.original_mask()
            conf.add(pred[own], b.labels[own])
            if predictions is not None:
                write_predictions(predictions, batch, pred.cpu().numpy())
            bar.advance(task, batch.batch_size)
    return conf


def write_predictions(root: Path, batch, pred: np.ndarray) -> None:
    """ROOT/sequences/XX/predictions/NNNNNN.label in raw ids for each scan's own points."""
    start = 0
    for size, n, (seq, frame) in zip(batch.sizes, batch.n_original, batch.meta, strict=True):
        raw = train_to_raw(pred[start:start + n])
        path = kitti_io.Sequence(root, seq).prediction_path(frame)
        kitti_io.write_label(path, raw, np.zeros_like(raw))
        start += size


def dataset_for(cfg: TrainConfig, *, data: Path | None, cache: Path | None, sequences: tuple[str, ...],
                view: str) -> torch.utils.data.Dataset:
    if (data is None) == (cache is None):
        raise ValueError("give exactly one of --data RAW_ROOT or --cache DIR")
    if data is not None:
        if view == "fused":
            raise ValueError("--view fused needs --cache (fused scans come from `make fuse`)")
        return RawDataset(data, sequences, cfg)
    return ShardDataset(cache, sequences, cfg, view=view)


def iou_table(results: dict[str, dict], hard_classes: tuple[str, ...], title: str = "") -> Table:
    """Rows: classes (hard ones marked), then mIoU and hard mIoU; one column per result."""
    hard = {CLASS_NAMES[c] for c in class_ids(hard_classes)}
    table = Table(title=title or None)
    table.add_column("class")
    for name in results:
        table.add_column(name, justify="right")
    for c in CLASS_NAMES[1:]:
        label = f"[bold]{c}*[/]" if c in hard else c
        table.add_row(label, *(f"{100 * r['iou'][c]:.1f}" for r in results.values()))
    table.add_section()
    table.add_row("[bold]mIoU", *(f"[bold]{100 * r['miou']:.1f}" for r in results.values()))
    table.add_row("[bold]hard mIoU*", *(f"[bold]{100 * r['hard_miou']:.1f}" for r in results.values()))
    return table


def print_table(results: dict[str, dict], hard_classes: tuple[str, ...], title: str = "") -> None:
    Console().print(iou_table(results, hard_classes, title))
