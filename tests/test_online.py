"""The released code's training mode (`m2skd-train online`) and its loss, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from m2skd.common.labels import IGNORE_INDEX
from m2skd.train.config import AugmentConfig, TrainConfig
from m2skd.train.data.augment import Augmentation
from m2skd.train.data.voxel_labels import VoxelLabels, changed_targets, majority_labels, voxel_labels
from m2skd.train.distillation.distill import released_affinity_loss, step_weights
from m2skd.train.distillation.losses import view_segmentation_loss
from m2skd.train.engine.checkpoint import load_checkpoint
from m2skd.train.engine.run import start_run
from m2skd.train.engine.trainer import RunSpec, TrainError, read_metrics, train

from .conftest import tiny_train_config


def _view(keys, labels) -> VoxelLabels:
    keys, labels = torch.tensor(keys), torch.tensor(labels)
    return VoxelLabels(keys, torch.arange(len(keys)), torch.arange(len(keys)), labels, torch.zeros_like(keys))


def test_changed_voxel_mask_by_hand():
    # voxels 0-4 in both views; voxel 7 only in the fused one (a fused instance's own voxel)
    single = _view([0, 1, 2, 3, 4], [0, 0, 5, 5, 6])
    fused = _view([0, 1, 2, 3, 4, 7], [0, 6, 5, 6, 6, 3])
    assert changed_targets(fused, single).tolist() == [0, 6, 0, 6, 0, 3]
    # nothing of the single view: every labelled fused voxel is a target
    assert changed_targets(fused, _view([], [])).tolist() == [0, 6, 5, 6, 6, 3]


def test_voxel_majority_labels_with_a_tie():
    inverse = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    labels = torch.tensor([5, 3, 5, 3, 0, 0, 7, 9])
    # voxel 0: 3 and 5 twice each -> the smaller id; voxel 1: unlabelled wins; voxel 2: alone
    assert majority_labels(inverse, labels, 3).tolist() == [3, 0, 9]
    # through grid indices: (sample, rho, phi, z) rows, points of one voxel not adjacent
    vox = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]])
    v = voxel_labels(vox, torch.tensor([4, 2, 4, 1, 6]), (2, 2, 2))
    assert v.keys.tolist() == [0, 7, 8] and v.labels.tolist() == [1, 4, 2]
    assert v.first.tolist() == [3, 0, 1] and v.sample.tolist() == [0, 0, 1]
    assert v.inverse.tolist() == [1, 2, 1, 0, 1]


def test_segmentation_on_voxels_leaves_unlabelled_voxels_out():
    # voxel A (3 points: 2, 2, 0) -> label 2; voxel B (0, 0, 4) -> unlabelled, left out
    vox = torch.tensor([[0, 0, 0, 0]] * 3 + [[0, 1, 0, 0]] * 3)
    labels = torch.tensor([2, 2, 0, 0, 0, 4])
    a, b = torch.zeros(20), torch.zeros(20)
    a[2], a[3], b[4] = 1.0, 2.0, 3.0
    logits = torch.stack([a] * 3 + [b] * 3)
    got = view_segmentation_loss(logits, vox, labels, "voxel", (2, 1, 1), lovasz_weight=0.0)
    log_z_a = math.log(18 + math.e + math.e ** 2)
    assert float(got) == pytest.approx(log_z_a - 1.0, rel=1e-6)
    # per point: the mean over the three labelled points (2, 2, 4)
    log_z_b = math.log(19 + math.e ** 3)
    per_point = view_segmentation_loss(logits, vox, labels, "point", (2, 1, 1), lovasz_weight=0.0)
    assert float(per_point) == pytest.approx((2 * (log_z_a - 1.0) + (log_z_b - 3.0)) / 3, rel=1e-6)


def _e(*hot) -> torch.Tensor:
    v = torch.zeros(20)
    for i in hot:
        v[i] = 1.0
    return v


def test_released_affinity_leaves_a_one_voxel_scan_out_of_its_class():
    """The project's generalisation of the released rule (docs/method.md, departures): a
    scan with one voxel of a class is left out of that class's matrix, the other scan's
    voxels kept (the released code keeps the whole class out when scan 0 has one voxel)."""
    # class 2: two voxels in scan 0, one in scan 1 (a one-voxel scan is left out);
    # class 5: one in scan 0 (left out), three in scan 1; class 10 is not hard
    s = torch.stack([_e(0), _e(0, 1), _e(7), _e(3), _e(0), _e(1), _e(2), _e(4)])
    t = torch.stack([_e(0), _e(1), _e(9), _e(3), _e(0), _e(0), _e(0), _e(5)])
    labels = torch.tensor([2, 2, 2, 5, 5, 5, 5, 10])
    sample = torch.tensor([0, 0, 1, 0, 1, 1, 1, 0])
    # class 2: A_s = [[1, 1/sqrt2], [1/sqrt2, 1]], A_t = I -> mean |diff| = 2/sqrt2 / 4
    # class 5: A_s = I (3 x 3), A_t = all ones -> 6 / 9; summed over the classes
    want = (2 / math.sqrt(2)) / 4 + 6 / 9
    got = released_affinity_loss(s, t, labels, sample, tuple(range(2, 9)))
    assert float(got) == pytest.approx(want, rel=1e-6)
    # nothing hard, or one voxel a class: zero
    assert float(released_affinity_loss(s[:1], t[:1], labels[:1], sample[:1], (2,))) == 0.0


def test_released_affinity_pools_both_scans_of_a_class_as_released():
    """The released rule where it is defined (each scan >= 2 voxels of the class): one
    cosine matrix over the class's voxels of both scans, mean |A_s - A_t|, summed over
    classes; by hand on class 3 with two voxels in each scan."""
    s = torch.stack([_e(0), _e(1), _e(0), _e(1)])
    t = torch.stack([_e(0), _e(0), _e(0), _e(0)])
    labels, sample = torch.tensor([3, 3, 3, 3]), torch.tensor([0, 0, 1, 1])
    # A_s: cos 1 within {0, 2} and {1, 3}, 0 across (8 of 16 entries are 1); A_t: all ones -> 8 / 16
    got = released_affinity_loss(s, t, labels, sample, tuple(range(2, 9)))
    assert float(got) == pytest.approx(8 / 16, rel=1e-6)
    # per scan apart, each 2 x 2 matrix would give 2 / 4 twice, summed 1.0: the pooling matters


def test_augmentation_draw_ranges_and_z_is_not_scaled():
    cfg = AugmentConfig(rotate_deg=30.0, scale=(0.8, 1.25), translate=(0.0, 0.0, 0.0))
    rng = np.random.default_rng(0)
    p = np.array([[3.0, 4.0, 2.0, 0.5]], np.float32)
    scales = []
    for _ in range(200):
        aug = Augmentation.draw(rng, cfg)
        assert abs(aug.rotation) <= math.radians(30.0) and 0.8 <= aug.scale <= 1.25
        q = aug.apply(p)[0]
        assert q[2] == pytest.approx(2.0, abs=1e-6)  # x and y only, as Cylinder3D and the released loader
        assert math.hypot(q[0], q[1]) == pytest.approx(5.0 * aug.scale, rel=1e-5)
        scales.append(aug.scale)
    assert min(scales) < 0.85 and max(scales) > 1.2  # the range is used, not one value
    both = Augmentation.draw(np.random.default_rng(0), cfg.override(scale_z=True))
    assert both.apply(p)[0, 2] == pytest.approx(2.0 * both.scale, rel=1e-5)


# The released recipe, read off the released files (skyshoumeng/M2SKD at 8a54472), written
# here by hand from them, not from train/config.py: (knob, value, where it is in the release)
RELEASED_FILES = [
    ("backbone", "cylinder3d", "config/semantickitti.yaml: model_architecture: cylinder_asym"),
    ("rotate_deg", 45.0, "dataloader/dataset_semantickitti.py: np.deg2rad(np.random.random() * 90) - np.pi / 4"),
    ("flip", True, "same file: flip_type = np.random.choice(4, 1): x, y, both or none"),
    ("scale", [0.95, 1.05], "same file: noise_scale = np.random.uniform(0.95, 1.05)"),
    ("scale_z", False, "same file: noise_scale multiplies xyz[:, 0] and xyz[:, 1] only"),
    ("translate", [0.5, 0.5, 0.1], "same file: trans_std=[.5, .5, 0.1], np.random.normal(0, trans_std[i])"),
    ("lr", 1e-3, "config/semantickitti.yaml: learning_rate: 0.001 (Adam, train_cylinder_asym.py)"),
    ("batch_size", 2, "config/semantickitti.yaml: train_data_loader batch_size: 2"),
    ("val_every", 3000, "train_cylinder_asym.py: check_iter = 3000; best val mIoU saved"),
    ("seg_on", "voxel", "train_cylinder_asym.py: the loss on train_vox_label"),
    ("w_logit", 5.0, "network/segmentator_3d_asymm_spconv.py: torch.mean(diss_loss) * 5."),
    ("logit_variant", "released", "same file: softmax(yy * .3), mean(l2*abs(log((l2+1e-6)/(l1+1e-6))), dim=1)"),
    ("logit_on", "voxel", "same file: on the voxel logits"),
    ("kd_balance", "point", "same file: torch.mean over the kept voxels"),
    ("w_aff", 1.0, "same file: aff_loss * 1.0"),
    ("aff_level", "released", "same file: cosine_similarity of logits per thing class, both scans pooled"),
    ("w_feat", 0.0, "same file: torch.mean(fea_loss) * .00"),
    ("feat_level", "half", "same file: up2e = self.upBlock2(...)"),
    ("w_fused", 0.2, "train_cylinder_asym.py: loss * 1. + loss2 * .2 + diss_loss"),
    ("fused_loss", "changed", "same file: point_label_tensor2[point_label_tensor2==point_label_tensor] = 255"),
    ("kd_warmup", 0, "train_cylinder_asym.py: no schedule"),
]


def test_released_preset_is_the_released_recipe():
    """`--preset released` resolves to every value of the released recipe (the table above,
    backbone and augmentation included); `released-loss` keeps the loss values alone (the
    experiment's online arm beside a PolarNet baseline keeps PolarNet's augmentation)."""
    from m2skd.train.config import RELEASED_MODEL

    cfg = TrainConfig.preset("released", model=RELEASED_MODEL)
    flat = {**cfg.model.to_dict(), **cfg.optim.to_dict(), **cfg.augment.to_dict(), **cfg.distill.to_dict(),
            **cfg.runtime.to_dict()}
    wrong = {k: (flat[k], v, where) for k, v, where in RELEASED_FILES if flat[k] != v}
    assert not wrong, wrong
    # the recipe's augmentation whatever the backbone (PolarNet's published one differs)
    assert TrainConfig.preset("released", model="polarnet").augment == cfg.augment
    loss_only = TrainConfig.preset("released-loss", model="polarnet")
    assert loss_only.augment == TrainConfig.preset("paper", model="polarnet").augment
    assert loss_only.distill == TrainConfig.preset("released", model="polarnet").distill
    with pytest.raises(ValueError, match="unknown TrainConfig preset 'nope'"):
        TrainConfig.preset("tiny+nope")


def test_released_preset_takes_the_released_backbone_unless_told(fused_cache, tmp_path):
    """`m2skd-train online --preset tiny+released` trains Cylinder3D (the released backbone);
    an explicit --model keeps its word."""
    from m2skd.train.cli import main

    base = ["online", "--cache", str(fused_cache), "--preset", "tiny+released", "--train-sequences", "00",
            "--workers", "0", "--quiet", "--device", "cpu", "--dry-run", "--steps", "1"]
    for extra, want in (([], "cylinder3d"), (["--model", "polarnet"], "polarnet")):
        r = CliRunner().invoke(main, [*base, *extra, "--out", str(tmp_path / want)])
        assert r.exit_code == 0, r.output
        assert f"online ({want}, tiny+released)" in r.output, r.output


def _spec(cache, out, kind="online", steps=3, **kw):
    cfg = tiny_train_config(kw.pop("model", "polarnet"), **kw.pop("cfg", {}))
    return RunSpec(kind=kind, cfg=cfg, cache=cache, out=out, steps=steps, seed=5, progress=False, device="cpu", **kw)


def _fused_grads(run, batch) -> dict[str, float]:
    """One online step; the gradient that reaches the fused forward's outputs (hooks on the
    second of the two calls of the network), its DropBlock-free outputs too (`det_` names)."""
    seen: dict[str, float] = {}
    calls = []
    forward = run.model.forward

    def spy(b, **kw):
        out = forward(b, **kw)
        calls.append(b)
        if len(calls) == 2:  # the fused view (single first, as released)
            outs = [("", out)] + ([("det_", out.deterministic)]
                                    if out.deterministic is not None and out.deterministic is not out else [])
            for prefix, o in outs:
                for name in ("point_logits", "voxel_feats"):
                    t = getattr(o, name)
                    if t.requires_grad:
                        t.register_hook(lambda g, n=prefix + name: seen.__setitem__(n, float(g.abs().sum())))
        return out

    run.model.forward = spy
    losses, _ = run.kind.step(run.step_context(), batch, torch.Generator().manual_seed(0))
    from m2skd.train.engine.steps import weighted_total

    weighted_total(losses, step_weights(run.spec.cfg.distill, 10**6)).backward()
    assert len(calls) == 2 and sum(calls[0].sizes) < sum(calls[1].sizes)  # single, then fused
    return {"losses": {k: float(v.detach()) for k, v in losses.items()}, **seen}


@pytest.mark.parametrize("model", ["polarnet", "cylinder3d"])
def test_online_distillation_sends_no_gradient_through_the_fused_view(fused_cache, tmp_path, model):
    kd = {"w_feat": 0.1, "w_logit": 5.0, "w_aff": 1.0, "logit_variant": "released", "aff_level": "released",
          "logit_on": "voxel", "kd_balance": "point", "feat_level": "half" if model == "cylinder3d" else "last"}
    run = start_run(_spec(fused_cache, tmp_path / "a", model=model, cfg={**kd, "w_fused": 0.0}))
    got = _fused_grads(run, next(iter(run.loader())))
    assert {"seg", "feat", "logit", "aff"} <= set(got["losses"]) and "fused" not in got["losses"]
    assert run.model.feature_level == kd["feat_level"]
    assert got["losses"]["logit"] > 0 and got["losses"]["feat"] > 0
    # nothing reached the fused forward, DropBlock-free or not
    assert not {"point_logits", "voxel_feats", "det_point_logits", "det_voxel_feats"} & set(got)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in run.model.parameters())
    # the fused view's own cross-entropy is what trains through it
    run = start_run(_spec(fused_cache, tmp_path / "b", model=model, cfg={**kd, "w_fused": 0.2, "fused_loss": "all"}))
    got = _fused_grads(run, next(iter(run.loader())))
    assert got["losses"]["fused"] > 0 and got.get("point_logits", 0.0) > 0
    assert "det_point_logits" not in got and "det_voxel_feats" not in got


def test_online_run_resumes_bit_identically_and_deploys_like_a_baseline(fused_cache, synth_root, tmp_path):
    cfg = {"max_points_per_cell": 8, "kd_warmup": 3, "fused_loss": "all"}
    train(_spec(fused_cache, tmp_path / "full", steps=4, cfg=cfg))
    train(_spec(fused_cache, tmp_path / "part", steps=2, cfg=cfg))
    train(_spec(fused_cache, tmp_path / "part", steps=4, cfg=cfg, resume="yes"))
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["kind"] == "online" and a["step"] == b["step"] == 4
    for k, v in a["model"].items():
        torch.testing.assert_close(v, b["model"][k], rtol=0, atol=0, msg=k)
    rows = read_metrics(tmp_path / "full")
    for r in rows:  # the warm-up: distillation weights step/3 (0 at the first step), the fused term as set
        ramp = min(1.0, (r["step"] - 1) / 3)
        want = r["seg"] + 0.2 * r["fused"] + ramp * (0.1 * r["feat"] + r["logit"] + r["aff"])
        assert r["total"] == pytest.approx(want, rel=1e-5)
    # a single-scan model: eval and predict take it as they take a baseline's
    from m2skd.train.cli import main

    ckpt = tmp_path / "full" / "last.pt"
    r = CliRunner().invoke(main, ["eval", "--ckpt", str(ckpt), "--cache", str(fused_cache), "--quiet", "--device",
                                  "cpu"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["predict", "--ckpt", str(ckpt), "--data", str(synth_root), "--sequences", "11",
                                  "--out", str(tmp_path / "sub"), "--quiet", "--device", "cpu", "--no-zip"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "sub" / "sequences" / "11" / "predictions").glob("*.label"))) > 0


def test_online_refuses_a_teacher(fused_cache, tmp_path):
    from m2skd.train.cli import main

    with pytest.raises(TrainError, match="its own teacher"):
        train(_spec(fused_cache, tmp_path / "x", teacher=tmp_path / "t.pt"))
    r = CliRunner().invoke(main, ["online", "--cache", str(fused_cache), "--teacher", "t.pt", "--steps", "1",
                                  "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and "its own teacher" in r.output
    assert not (tmp_path / "y").exists()


def test_the_student_trains_against_a_frozen_teacher(fused_cache, tmp_path):
    """The teacher the trainer builds: eval mode, no gradients, unchanged by the student's steps."""
    t = train(_spec(fused_cache, tmp_path / "t", kind="teacher", steps=1))
    run = start_run(_spec(fused_cache, tmp_path / "s", kind="student", teacher=t))
    before = {k: v.clone() for k, v in run.teacher.state_dict().items()}
    assert not run.teacher.training and not any(p.requires_grad for p in run.teacher.parameters())
    step = run.optimizer_step()
    for batch, i in zip(run.loader(), range(2), strict=False):
        step(batch, i)
    assert all(torch.equal(v, run.teacher.state_dict()[k]) for k, v in before.items())  # BN statistics too
    assert all(p.grad is None for p in run.teacher.parameters())
    assert IGNORE_INDEX == 0


def test_changed_fused_cross_entropy_by_hand():
    """`fused_loss changed` (the released online term): plain cross-entropy on the fused
    view's voxels whose majority label the fused points set or flipped, each voxel once at
    its first point; worked by hand on three voxels, one unchanged, one flipped, one new."""
    from m2skd.train.distillation.losses import fused_view_loss

    shape = (3, 1, 1)
    # single view: voxel 0 (points labelled 4, 4), voxel 1 (6)
    s_vox = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    s_lab = torch.tensor([4, 4, 6])
    # fused view: the same points first, then fused ones: two 2s in voxel 1 (6 -> 2), one 3 in voxel 2 (new)
    f_vox = torch.cat([s_vox, torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0]])])
    f_lab = torch.cat([s_lab, torch.tensor([2, 2, 3])])
    logits = torch.randn(6, 20, generator=torch.Generator().manual_seed(1))
    got = fused_view_loss(logits, voxel_labels(f_vox, f_lab, shape), voxel_labels(s_vox, s_lab, shape), "changed")
    # targets: voxel 1 -> 2 at its first point (2), voxel 2 -> 3 at point 5; voxel 0 unchanged: left out
    ce = [float(torch.logsumexp(logits[i].double(), 0) - logits[i, c].double()) for i, c in ((2, 2), (5, 3))]
    assert float(got) == pytest.approx(sum(ce) / 2, rel=1e-5)
    every = fused_view_loss(logits, voxel_labels(f_vox, f_lab, shape), voxel_labels(s_vox, s_lab, shape), "all")
    ce0 = float(torch.logsumexp(logits[0].double(), 0) - logits[0, 4].double())
    assert float(every) == pytest.approx((ce0 + sum(ce)) / 3, rel=1e-5)
