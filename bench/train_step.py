"""Training-step cost on CPU, tiny preset, both backbones, measured side by side in one run.

    python bench/train_step.py [--cache data_cache/fused] [--steps 12] [--device auto]

Per backbone: step time of the plain single-scan baseline, the teacher (fused view) and
the student with all three distillations (its frozen teacher forward included) on the
student's DropBlock-free forward (`kd_forward clean`, the default since issue 30) and on
its DropBlock forward (`dropped`, as before), the student/baseline ratio (design target
<= 1.4x), and the loader's own throughput with the
preset's workers next to what the student step consumes (target >= 5x). Then the memory
of one affinity matrix pair against instance size, with and without the voxel cap.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from m2skd.train.config import TrainConfig
from m2skd.train.data.batch import collate
from m2skd.train.data.dataset import ShardDataset
from m2skd.train.data.sampler import StepSampler
from m2skd.train.distillation.distill import Distiller, affinity_loss, term_weights
from m2skd.train.distillation.losses import segmentation_loss
from m2skd.train.engine.estimate import estimate
from m2skd.train.engine.runtime import pick_device
from m2skd.train.engine.trainer import RunSpec
from m2skd.train.models import build_model, deterministic_forward, for_distillation


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(cfg: TrainConfig, cache: Path, steps: int, device: torch.device) -> dict[str, float]:
    ds = ShardDataset(cache, cfg.data.train_sequences, cfg, view="pair")
    batches = [collate("pair")([ds[(i, 100 + i)] for i in idx]) for idx in
               ([(2 * s) % len(ds), (2 * s + 1) % len(ds)] for s in range(steps + 2))]
    torch.manual_seed(0)
    teacher = build_model(cfg.model, device).eval().requires_grad_(False)
    out = {}
    for kind in ("baseline", "teacher", "student", "student-dropped"):
        torch.manual_seed(0)
        model = build_model(cfg.model, device).train()
        distiller = Distiller(cfg.distill, ds.hard_classes, model.feature_dim, teacher.feature_dim).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        times = []
        for i, (tb, sb) in enumerate(batches):
            tb, sb = tb.to(device), sb.to(device)
            _sync(device)
            t0 = time.perf_counter()
            b = tb if kind == "teacher" else sb
            o = deterministic_forward(model, b) if kind == "student" else model(b)
            loss = segmentation_loss(o.point_logits, b.labels)
            if kind.startswith("student"):
                with torch.no_grad():
                    t_out = teacher(tb)
                kd = distiller(tb, t_out, sb, for_distillation(o), {"feat": True, "logit": True, "aff": True})
                loss = loss + sum(w * kd[k] for k, w in term_weights(cfg.distill).items())
            opt.zero_grad()
            loss.backward()
            opt.step()
            _sync(device)
            if i >= 2:  # warm-up: first calls build spconv index caches and allocator pools
                times.append(time.perf_counter() - t0)
        out[kind] = float(np.median(times))
    return out


def loader_rate(cfg: TrainConfig, cache: Path, n_batches: int) -> float:
    ds = ShardDataset(cache, cfg.data.train_sequences, cfg, view="pair")
    sampler = StepSampler(len(ds), cfg.optim.batch_size, 0, n_batches)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate("pair"),
                                         num_workers=cfg.data.workers, prefetch_factor=4 if cfg.data.workers else None)
    it = iter(loader)
    next(it)  # worker start-up is paid once per run, not per step
    t0 = time.perf_counter()
    n = 0
    for _ in it:
        n += cfg.optim.batch_size
    return n / (time.perf_counter() - t0)


def affinity_memory(dim: int = 32, cap: int = 256) -> list[tuple[int, float, float, float]]:
    rows = []
    for n in (64, 256, 1024, 4096):
        feats = torch.randn(n, dim)
        k = min(n, cap)
        capped = torch.randperm(n)[:k]
        t0 = time.perf_counter()
        affinity_loss(feats, feats + 0.1, [capped])
        dt = time.perf_counter() - t0
        rows.append((n, 2 * n * n * 4 / 2**20, 2 * k * k * 4 / 2**20, dt * 1e3))
    return rows


@click.command()
@click.option("--cache", type=click.Path(path_type=Path), default=Path("data_cache/fused"))
@click.option("--steps", type=int, default=12)
@click.option("--device", default="cpu")
def main(cache: Path, steps: int, device: str) -> None:
    dev = pick_device(device)
    torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)  # as the trainer runs on CPU
    console = Console()
    t = Table(title=f"training step, tiny preset, batch 2, {dev} ({torch.get_num_threads()} threads), median of "
                    f"{steps} steps")
    for c in ("backbone", "baseline s/step", "teacher s/step", "student+KD s/step", "student / baseline",
              "student, KD on the DropBlock forward s/step", "its / baseline", "loader scans/s", "student scans/s",
              "loader / student"):
        t.add_column(c, justify="right")
    for model in ("polarnet", "cylinder3d"):
        cfg = TrainConfig.preset("tiny", model=model).override(train_sequences=("00",), workers=1)
        st = step_times(cfg, cache, steps, dev)
        rate = loader_rate(cfg, cache, 3 * steps)
        consume = cfg.optim.batch_size / st["student"]
        t.add_row(model, f"{st['baseline']:.3f}", f"{st['teacher']:.3f}", f"{st['student']:.3f}",
                  f"{st['student'] / st['baseline']:.2f}x", f"{st['student-dropped']:.3f}",
                  f"{st['student-dropped'] / st['baseline']:.2f}x", f"{rate:.1f}", f"{consume:.1f}",
                  f"{rate / consume:.1f}x")
    console.print(t)
    o = Table(title=f"the trainer's own steps (`--dry-run`'s estimate: loader, loss, backward, Adam), tiny, batch 2, "
                    f"{dev}: online (tiny+released-loss: both views through the network) against the baseline")
    for c in ("backbone", "baseline s/step", "online s/step", "online / baseline"):
        o.add_column(c, justify="right")
    for model in ("polarnet", "cylinder3d"):
        rows = {}
        for kind, preset in (("baseline", "tiny"), ("online", "tiny+released-loss")):
            cfg = TrainConfig.preset(preset, model=model).override(train_sequences=("00",), workers=0)
            with tempfile.TemporaryDirectory() as tmp:
                spec = RunSpec(kind=kind, cfg=cfg, cache=cache, out=Path(tmp) / "run", steps=steps + 2, seed=0,
                               progress=False, device=str(dev))
                rows[kind] = estimate(spec, steps=steps, warmup=2)["s_per_step"]
        ratio = rows["online"] / rows["baseline"]
        o.add_row(model, f"{rows['baseline']:.3f}", f"{rows['online']:.3f}", f"{ratio:.2f}x")
    console.print(o)
    a = Table(title="affinity term, one instance (features 32-d): memory of A_s and A_t")
    for c in ("instance voxels", "uncapped MiB", "capped at 256 MiB", "capped time ms"):
        a.add_column(c, justify="right")
    for n, full, capped, ms in affinity_memory():
        a.add_row(f"{n:,}", f"{full:.2f}", f"{capped:.2f}", f"{ms:.2f}")
    console.print(a)


if __name__ == "__main__":
    main()
