"""Single-scan inference over a split: its confusion matrix and scores. It writes nothing:
`eval --predictions` hooks export.py's writer in through `observe`.

Scores are always on each scan's own points. In the `fused` view (a cache) the network
sees the fused scan but is scored on the original points only, which is how the
teacher's "fused val" numbers are meant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from m2skd.common.progress import progress as progress_bar

from ..data.batch import Batch, collate
from ..data.dataset import RawDataset, ShardDataset
from ..engine.checkpoint import CheckpointError, load_model
from .metrics import Confusion, predict


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: torch.utils.data.Dataset, device: torch.device, *,
             view: str = "single", batch_size: int = 1, workers: int = 0,
             progress: bool = True, observe: Callable[[Batch, torch.Tensor], None] | None = None) -> Confusion:
    """Confusion over the dataset's scans, read in `view` (single or fused), scored on their own points.

    `observe(batch, pred)` sees every batch (on the device) with its per-point predictions:
    where an analysis that a confusion matrix cannot hold (per instance, per range) hooks in."""
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
            if observe is not None:
                observe(b, pred)
            bar.advance(task, batch.batch_size)
    return conf


def score_checkpoint(ckpt: str | Path, device: torch.device, *, cache: Path | None = None, data: Path | None = None,
                     sequences: tuple[str, ...] | None = None, split: str = "val", view: str = "single",
                     batch_size: int = 1, workers: int = 0,
                     progress: bool = False, observe: Callable[[Batch, torch.Tensor], None] | None = None,
                     ) -> tuple[dict, dict]:
    """A checkpoint's scores (`Confusion.summary` over the hard classes it trained with) on
    `sequences` (else its config's `split`) of a fused cache or of raw scans, and the
    checkpoint itself (its state has the sequences scored under "sequences"). What
    `m2skd-train eval`, the demo and the experiments all report."""
    model, cfg, state = load_model(ckpt, device)
    seqs = tuple(sequences) if sequences else (cfg.data.val_sequences if split == "val" else cfg.data.train_sequences)
    if (data is None) == (cache is None):
        raise ValueError("give exactly one of --data RAW_ROOT or --cache DIR")
    if data is not None and view == "fused":
        raise ValueError("--view fused needs --cache (fused scans come from `make fuse`)")
    ds = RawDataset(data, seqs, cfg) if data is not None else ShardDataset(cache, seqs, cfg, view=view)
    hard = tuple(state["hard_classes"])
    if view == "fused" and tuple(ds.hard_classes) != hard:
        raise CheckpointError(f"{cache}: fused with hard classes {list(ds.hard_classes)}, the checkpoint {ckpt} "
                              f"with {list(hard)}: its fused input would not be what it learnt on; "
                              "use the cache it was trained on")
    conf = evaluate(model, ds, device, view=view, batch_size=batch_size, workers=workers,
                    progress=progress, observe=observe)
    summary = conf.summary(hard)
    if summary["points"] == 0:  # every IoU would be 0: a score of nothing, not of the model
        raise ValueError(f"sequences {','.join(seqs)}: no labelled point to score (every label is 'unlabelled')")
    return summary, {**state, "sequences": list(seqs)}
