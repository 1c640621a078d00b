"""Training-stage building blocks against hand-worked cases and independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2skd.common.geometry import PolarGrid
from m2skd.train.config import TrainConfig
from m2skd.train.data.augment import Augmentation
from m2skd.train.data.sampler import StepSampler
from m2skd.train.distillation.losses import lovasz_softmax, segmentation_loss
from m2skd.train.evaluation.metrics import Confusion
from m2skd.train.models.polarnet import PolarConv, circular_pad
from m2skd.train.models.voxels import group, keys_to_vox, max_pool, voxel_keys


def test_voxel_index_of_hand_placed_points():
    # tiny Cylinder3D grid, published spacing (max - min) / (size - 1): rho 0-50 m in
    # steps of 50/95 m, phi -pi..pi in steps of 2 pi/71, z -4..2 m in steps of 6/15 = 0.4 m
    grid = TrainConfig.preset("tiny", model="cylinder3d").model.grid
    pts = np.array([
        [10.3, 0.0, 0.1],  # rho 10.3 * 95/50 = 19.57 -> 19; phi 0: pi / (2 pi/71) = 35.5 -> 35; z 4.1/0.4 -> 10
        [0.0, 3.0, -3.9],  # rho 3 -> 5.7 -> 5; phi 90 deg: 1.5 pi / (2 pi/71) = 53.25 -> 53; z 0.1/0.4 -> 0
        [-20.0, -0.01, 1.99],  # phi just above -pi -> 0; rho 20 -> 38.0 -> 38; z 5.99/0.4 = 14.98 -> 14
        [70.0, 0.0, 5.0],  # outside: clipped onto the bounds, which fall in the last rho and z cells
    ])
    idx = grid.voxel_index(pts)
    np.testing.assert_array_equal(idx, [[19, 35, 10], [5, 53, 0], [38, 0, 14], [95, 35, 15]])


def test_point_features_are_offsets_polar_cartesian_remission():
    grid = PolarGrid((10, 8, 4), (0.0, -np.pi, -2.0), (10.0, np.pi, 2.0))
    feats, idx = grid.point_features(np.array([[3.2, 0.0, 0.3, 0.7]], np.float32))
    # steps 10/9 m, 2 pi/7, 4/3 m: rho 3.2 * 0.9 = 2.88 -> 2; phi pi / (2 pi/7) = 3.5 -> 3; z 2.3 * 0.75 -> 1
    np.testing.assert_array_equal(idx, [[2, 3, 1]])
    # centre of voxel (2, 3, 1): rho 2.5 * 10/9 = 25/9, phi -pi + 3.5 * 2 pi/7 = 0, z -2 + 1.5 * 4/3 = 0
    np.testing.assert_allclose(feats[0], [3.2 - 25 / 9, 0.0, 0.3, 3.2, 0, 0.3, 3.2, 0, 0.7], atol=1e-6)


def test_augmentation_rotation_flip_scale_by_hand():
    p = np.array([[1.0, 0.0, 2.0, 0.5]], np.float32)
    rot = Augmentation(np.pi / 2, False, False, 1.0, (0.0, 0.0, 0.0)).apply(p)
    np.testing.assert_allclose(rot, [[0.0, 1.0, 2.0, 0.5]], atol=1e-6)
    flip = Augmentation(0.0, True, False, 2.0, (1.0, 0.0, -1.0)).apply(p)  # x and y scaled, z not
    np.testing.assert_allclose(flip, [[-2.0 + 1.0, 0.0, 2.0 - 1.0, 0.5]], atol=1e-6)
    both = Augmentation(0.0, True, False, 2.0, (1.0, 0.0, -1.0), scale_z=True).apply(p)
    np.testing.assert_allclose(both, [[-2.0 + 1.0, 0.0, 4.0 - 1.0, 0.5]], atol=1e-6)


def test_same_augmentation_for_both_views(fused_cache):
    from m2skd.train.data.batch import collate
    from m2skd.train.data.dataset import ShardDataset

    from .conftest import tiny_train_config

    cfg = tiny_train_config()
    ds = ShardDataset(fused_cache, ("00",), cfg, view="pair")
    sample = ds[(3, 1234)]
    teacher, student = collate("pair")([sample])
    n = student.sizes[0]
    assert n == sample.n_original and teacher.sizes[0] > n  # fused points exist
    # the student's points are the teacher's first n, features and voxels included
    assert torch.equal(teacher.feats[:n], student.feats) and torch.equal(teacher.vox[:n], student.vox)
    again = ShardDataset(fused_cache, ("00",), cfg, view="single")[(3, 1234)]
    np.testing.assert_array_equal(again.feats, student.feats.numpy())
    # and an augmented scan differs from the raw one
    plain = ShardDataset(fused_cache, ("00",), cfg, view="single")[3]
    assert not np.allclose(plain.feats[:, 6:8], again.feats[:, 6:8])


def test_circular_padding_wraps_the_angle_axis():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).view(1, 2, 3, 5)  # (B, C, rho, phi)
    y = circular_pad(x)
    assert y.shape == (1, 2, 5, 7)
    torch.testing.assert_close(y[:, :, 1:-1, 0], x[:, :, :, -1])  # left of phi=0 is the last angle
    torch.testing.assert_close(y[:, :, 1:-1, -1], x[:, :, :, 0])
    assert float(y[:, :, 0].abs().sum()) == 0 and float(y[:, :, -1].abs().sum()) == 0  # rho: zeros
    # a conv block sees across the seam: a spike at the last angle changes the output at angle 0
    torch.manual_seed(0)
    conv = PolarConv(1, 1).eval()
    base = torch.zeros(1, 1, 6, 8)
    spike = base.clone()
    spike[0, 0, 3, 7] = 5.0
    diff = (conv(spike) - conv(base)).abs()[0, 0]
    diff = diff.detach()
    assert float(diff[3, 0]) > 0 and float(diff[3, 4]) == 0


def test_group_and_max_pool_against_a_loop():
    rng = np.random.default_rng(0)
    vox = torch.from_numpy(np.stack([rng.integers(0, 2, 500), rng.integers(0, 4, 500), rng.integers(0, 3, 500),
                                     rng.integers(0, 2, 500)], 1))
    feats = torch.from_numpy(rng.normal(size=(500, 3)).astype(np.float32))
    keys, cells, inv = group(vox, (4, 3, 2))
    assert torch.equal(keys_to_vox(voxel_keys(vox, (4, 3, 2)), (4, 3, 2)), vox)
    assert torch.equal(cells[inv], vox)
    pooled = max_pool(feats, inv, len(keys))
    for m in range(len(keys)):
        sel = (vox == cells[m]).all(1)
        torch.testing.assert_close(pooled[m], feats[sel].max(0).values)


def test_step_sampler_is_a_pure_function_of_seed_and_step():
    full = list(StepSampler(10, 3, seed=5, total_steps=7))
    assert len(full) == 7 and all(len(b) == 3 for b in full)
    # each epoch (3 steps of 3) visits 9 distinct scans
    assert len({i for b in full[:3] for i, _ in b}) == 9
    assert list(StepSampler(10, 3, seed=5, total_steps=7, start_step=4)) == full[4:]
    # two ranks of world 2 with batch 3 split one global batch of 6 without overlap
    r0 = list(StepSampler(10, 3, 5, 3, rank=0, world=2))
    r1 = list(StepSampler(10, 3, 5, 3, rank=1, world=2))
    for a, b in zip(r0, r1, strict=True):
        assert not {i for i, _ in a} & {i for i, _ in b}
        assert {s for _, s in a}.isdisjoint({s for _, s in b})


def test_lovasz_equals_jaccard_loss_on_hard_predictions():
    # with 0/1 probabilities the Lovasz extension equals 1 - IoU per class exactly
    labels = torch.tensor([1, 1, 1, 2, 2, 0, 2])
    pred = torch.tensor([1, 2, 1, 2, 1, 1, 2])
    probs = torch.nn.functional.one_hot(pred, 3).float()
    # class 1 (ignoring the label-0 point): TP 2, FP 1, FN 1 -> IoU 0.5; class 2: TP 2, FP 1, FN 1 -> 0.5
    assert float(lovasz_softmax(probs, labels)) == pytest.approx(0.5)
    perfect = torch.nn.functional.one_hot(labels, 3).float()
    assert float(lovasz_softmax(perfect, labels)) == pytest.approx(0.0)


def test_segmentation_loss_is_zero_not_nan_without_labels():
    logits = torch.randn(5, 20, requires_grad=True)
    loss = segmentation_loss(logits, torch.zeros(5, dtype=torch.long))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_confusion_matches_the_official_evaluator():
    np_ioueval = pytest.importorskip("auxiliary.np_ioueval", reason="semantic-kitti-api (make setup installs it)")
    rng = np.random.default_rng(1)
    ours = Confusion()
    official = np_ioueval.iouEval(20, [0])
    for _ in range(3):
        gt = rng.integers(0, 20, 5000)
        gt[rng.random(5000) < 0.3] = 3  # uneven classes
        pred = np.where(rng.random(5000) < 0.6, gt, rng.integers(0, 20, 5000))
        pred[gt == 7] = 1  # class 7 never predicted right
        ours.add(pred, gt)
        official.addBatch(pred, gt)
    miou, iou = official.getIoU()
    np.testing.assert_allclose(ours.iou()[1:], iou[1:], atol=1e-12)
    assert ours.summary(("bicycle",))["miou"] == pytest.approx(float(miou), abs=1e-9)


def _published_cylinder3d_parameters(w: int = 32, fea: int = 16, classes: int = 20) -> int:
    """Cylinder3D's parameter count from its published layer list (xinge008/Cylinder3D,
    network/*.py), counted by hand: kernel volume x in x out per conv, 2 per BatchNorm."""
    def bn(c):
        return 2 * c

    def lin(i, o):
        return i * o + o

    point = bn(9) + lin(9, 64) + bn(64) + lin(64, 128) + bn(128) + lin(128, 256) + bn(256) + lin(256, 256)
    point += lin(256, fea)
    def res(i, o):  # two 9-tap convs from the input, two 9-tap convs o -> o, four BNs
        return 2 * 9 * i * o + 2 * 9 * o * o + 4 * bn(o)
    down = sum(res(i, o) + 27 * o * o for i, o in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w), (8 * w, 16 * w)))
    def upb(i, o):  # 3x3x3 i -> o, 1x3x3, 3x1x3, 3x3x3, inverse 3x3x3 (o -> o), four BNs
        return 27 * i * o + 9 * o * o + 9 * o * o + 27 * o * o + 27 * o * o + 4 * bn(o)
    up = upb(16 * w, 16 * w) + upb(16 * w, 8 * w) + upb(8 * w, 4 * w) + upb(4 * w, 2 * w)
    recon = 3 * (3 * (2 * w) ** 2 + bn(2 * w))
    logits = 27 * 4 * w * classes + classes
    return point + res(fea, w) + down + up + recon + logits


@pytest.mark.parametrize(("model", "published"), [
    # PolarSeg's official network at 480 x 360 x 32 with its training script's settings,
    # counted on its code side by side (docs/method.md, "Backbones")
    ("polarnet", 13_642_450),
    ("cylinder3d", _published_cylinder3d_parameters()),
])
def test_paper_preset_is_the_published_network(model, published):
    from m2skd.train.models import build_model

    net = build_model(TrainConfig.preset("paper", model=model).model)
    assert sum(p.numel() for p in net.parameters()) == published


def test_cylinder3d_blocks_in_the_published_order():
    """Context block: shortcut 1x3x3 -> 3x1x3, branch 3x1x3 -> 1x3x3; down blocks the other
    way round (the published ResContextBlock and ResBlock)."""
    from m2skd.train.models import build_model

    net = build_model(TrainConfig.preset("tiny", model="cylinder3d").model)
    ctx, down = net.context, net.down[0].res
    assert (tuple(ctx.shortcut.c1.kernel_size), tuple(ctx.branch.c1.kernel_size)) == ((1, 3, 3), (3, 1, 3))
    assert (tuple(down.shortcut.c1.kernel_size), tuple(down.branch.c1.kernel_size)) == ((3, 1, 3), (1, 3, 3))


def test_tilt_augmentation_by_hand():
    # pitch of +90 deg about y takes x to -z; a roll of +90 deg about x takes y to z
    p = np.array([[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.5]], np.float32)
    pitched = Augmentation(0.0, False, False, 1.0, (0.0, 0.0, 0.0), (0.0, np.pi / 2)).apply(p)
    np.testing.assert_allclose(pitched[0, :3], [0.0, 0.0, -1.0], atol=1e-6)
    rolled = Augmentation(0.0, False, False, 1.0, (0.0, 0.0, 0.0), (np.pi / 2, 0.0)).apply(p)
    np.testing.assert_allclose(rolled[1, :3], [0.0, 0.0, 1.0], atol=1e-6)
