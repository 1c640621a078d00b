"""The order of scans and the augmentation of each: a pure function of (seed, step).

So a resumed run, another worker count or another rank layout replays exactly what an
unbroken run would have seen.
"""

from __future__ import annotations

import numpy as np
import torch


def aug_seed(seed: int, step: int, slot: int) -> int:
    """Augmentation seed of one batch slot: a pure function of (run seed, step, slot), so a
    resumed run or another worker count draws exactly the same augmentation."""
    return int(np.random.SeedSequence([seed, step, slot]).generate_state(1)[0])


class StepSampler(torch.utils.data.Sampler):
    """Batches of `(index, aug_seed)` for steps start..total-1, a pure function of (seed, step).

    Epoch e visits a seeded permutation; step s is chunk s % steps_per_epoch of epoch
    s // steps_per_epoch, so resuming at step s replays exactly what an unbroken run would
    have seen. Under DDP each rank takes its slice of the global batch (bs * world).
    """

    def __init__(self, n: int, batch_size: int, seed: int, total_steps: int, start_step: int = 0,
                 rank: int = 0, world: int = 1, augment: bool = True) -> None:
        self.n, self.bs, self.seed, self.total, self.start = n, batch_size, seed, total_steps, start_step
        self.rank, self.world, self.augment = rank, world, augment
        self.global_bs = batch_size * world
        self.steps_per_epoch = max(1, n // self.global_bs)

    def _epoch(self, e: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, e])
        need = self.steps_per_epoch * self.global_bs
        parts = [rng.permutation(self.n) for _ in range(-(-need // self.n))]
        return np.concatenate(parts)[:need]

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        cached = (-1, None)
        for step in range(self.start, self.total):
            e, k = divmod(step, self.steps_per_epoch)
            if cached[0] != e:
                cached = (e, self._epoch(e))
            chunk = cached[1][k * self.global_bs:(k + 1) * self.global_bs]
            slots = range(self.rank * self.bs, (self.rank + 1) * self.bs)
            yield [(int(chunk[j]), aug_seed(self.seed, step, j) if self.augment else None) for j in slots]
