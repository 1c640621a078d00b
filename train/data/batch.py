"""The batch the loader yields, and the collate that builds it for a view.

Views (one word for one idea, everywhere): `single` is a scan's own points (the
student's and the baseline's input), `fused` is the scan with its fused neighbours'
points (the teacher's), `pair` is (fused, single) of the same augmented scans (a
student step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from m2skd.common.views import LOADER_VIEWS, check_view

from .sample import Sample


@dataclass
class Batch:
    feats: torch.Tensor  # (N, 9) float
    vox: torch.Tensor  # (N, 4) long: batch, rho, phi, z indices
    labels: torch.Tensor  # (N,) long train ids
    instance: torch.Tensor  # (N,) long
    sizes: list[int]  # points per sample
    n_original: list[int]
    meta: list[tuple[str, int]] = field(default_factory=list)  # (sequence, frame)

    @property
    def batch_size(self) -> int:
        return len(self.sizes)

    def to(self, device: torch.device | str) -> Batch:
        mv = {k: getattr(self, k).to(device, non_blocking=True) for k in ("feats", "vox", "labels", "instance")}
        return Batch(**mv, sizes=self.sizes, n_original=self.n_original, meta=self.meta)

    def original_mask(self) -> torch.Tensor:
        """(N,) bool: True for each sample's own points (False for fused ones)."""
        mask = torch.zeros(len(self.labels), dtype=torch.bool, device=self.labels.device)
        start = 0
        for size, n in zip(self.sizes, self.n_original, strict=True):
            mask[start:start + n] = True
            start += size
        return mask


def make_batch(samples: list[Sample]) -> Batch:
    vox = np.concatenate([np.concatenate([np.full((len(s.vox), 1), b, np.int32), s.vox], axis=1)
                          for b, s in enumerate(samples)])
    return Batch(
        feats=torch.from_numpy(np.concatenate([s.feats for s in samples])),
        vox=torch.from_numpy(vox.astype(np.int64)),
        labels=torch.from_numpy(np.concatenate([s.labels for s in samples])),
        instance=torch.from_numpy(np.concatenate([s.instance for s in samples])),
        sizes=[len(s.labels) for s in samples],
        n_original=[s.n_original for s in samples],
        meta=[(s.sequence, s.frame) for s in samples],
    )


class collate:  # lower case: used like the function it replaced, collate(view)(samples)
    """DataLoader collate_fn for a view: 'fused', 'single' or 'pair' (a (fused, single)
    tuple from the same augmented scans).

    A class, not a closure, so loader workers started with 'spawn' can pickle it.
    """

    def __init__(self, view: str) -> None:
        check_view(view, LOADER_VIEWS)
        self.view = view

    def __call__(self, samples: list[Sample]):
        if self.view == "fused":
            return make_batch(samples)
        single = make_batch([s.prefix(s.n_original) for s in samples])
        return single if self.view == "single" else (make_batch(samples), single)
