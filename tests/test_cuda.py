"""The CUDA path, checked against the CPU (skipped without a GPU; `bash bench/gpu_check.sh`
runs the suite on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from m2skd.train.data.batch import collate
from m2skd.train.data.dataset import ShardDataset
from m2skd.train.engine.trainer import RunSpec, read_metrics, train
from m2skd.train.models import build_model

from .conftest import tiny_train_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
MODELS = ("polarnet", "cylinder3d")


def _batch(fused_cache, cfg):
    ds = ShardDataset(fused_cache, ("00",), cfg, view="single")
    return collate("single")([ds[0], ds[3]])


@pytest.mark.parametrize("model", MODELS)
def test_cuda_forward_matches_the_cpu(fused_cache, model):
    """Same weights, same batch: the GPU's logits and features are the CPU's (fp32, eval)."""
    cfg = tiny_train_config(model)
    batch = _batch(fused_cache, cfg)
    torch.manual_seed(0)
    cpu = build_model(cfg.model, torch.device("cpu")).eval()
    gpu = build_model(cfg.model, torch.device("cuda")).eval()
    gpu.load_state_dict(cpu.state_dict())
    with torch.no_grad():
        a = cpu(batch)
        b = gpu(batch.to(torch.device("cuda")))
    assert torch.equal(b.voxel_keys.cpu(), a.voxel_keys)
    for x, y in ((b.point_logits, a.point_logits), (b.voxel_feats, a.voxel_feats)):
        assert ((x.cpu() - y).norm() / y.norm()).item() < 1e-4  # summation order differs, nothing else


@pytest.mark.parametrize("model", MODELS)
def test_frozen_teacher_under_autocast_gives_its_fp32_output(fused_cache, model):
    """The student step runs its frozen teacher inside fp16 autocast. spconv's inference path
    has no kernel for fp16 features with fp32 weights (it failed on an H100 before the model
    ran its sparse part in fp32 there): the output must be the fp32 one, to fp16 rounding."""
    cfg = tiny_train_config(model)
    batch = _batch(fused_cache, cfg).to(torch.device("cuda"))
    torch.manual_seed(0)
    net = build_model(cfg.model, torch.device("cuda")).eval().requires_grad_(False)
    with torch.no_grad():
        ref = net(batch).point_logits.float()
        with torch.autocast("cuda", dtype=torch.float16):
            amp = net(batch).point_logits.float()
    assert torch.isfinite(amp).all()
    assert ((amp - ref).norm() / ref.norm()).item() < 1e-2  # fp16 rounding of the dense layers only


@pytest.mark.parametrize("model", MODELS)
def test_amp_student_trains_on_the_gpu(fused_cache, tmp_path, model):
    """Teacher, then student with all three distillations, AMP on, validation on: every
    logged term finite, the val scores logged, the checkpoints written."""
    cfg = tiny_train_config(model, amp=True, val_every=2)
    teacher = train(RunSpec(kind="teacher", cfg=cfg, cache=fused_cache, out=tmp_path / "t", steps=2, seed=0,
                            progress=False, device="cuda"))
    last = train(RunSpec(kind="student", cfg=cfg, cache=fused_cache, out=tmp_path / "s", steps=4, seed=0,
                         progress=False, device="cuda", teacher=teacher))
    rows = read_metrics(tmp_path / "s")
    assert last.is_file() and (tmp_path / "s" / "best.pt").is_file()
    assert {"feat", "logit", "aff"} <= set(rows[0])
    assert all(torch.isfinite(torch.tensor(v)).all() for r in rows for v in r.values() if isinstance(v, float))
    assert any("val_miou" in r for r in rows)
