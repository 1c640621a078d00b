"""Distillation terms against hand-computed values, and their guard rails."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from m2skd.common.labels import DEFAULT_HARD_CLASSES, class_ids
from m2skd.train.data.batch import Batch, collate
from m2skd.train.data.dataset import ShardDataset
from m2skd.train.distillation.distill import (
    Distiller,
    affinity_groups,
    affinity_loss,
    class_balanced_mean,
    feature_loss,
    join_voxels,
    logit_loss,
    student_point_index,
)
from m2skd.train.distillation.losses import view_segmentation_loss
from m2skd.train.engine.steps import Deterministic, SegLoss, StepContext, TwoViews, online_step, student_step
from m2skd.train.models import ModelOutput, build_model, set_feature_level
from m2skd.train.models.polarnet import DropBlock2D
from m2skd.train.models.voxels import group

from .conftest import tiny_train_config


def test_join_voxels_on_hand_made_keys():
    teacher = torch.tensor([2, 5, 9, 11, 40])
    student = torch.tensor([5, 40, 2])
    assert join_voxels(student, teacher).tolist() == [1, 4, 0]
    assert join_voxels(torch.tensor([], dtype=torch.long), teacher).tolist() == []
    with pytest.raises(ValueError, match="not teacher voxels"):
        join_voxels(torch.tensor([5, 6]), teacher)
    with pytest.raises(ValueError, match="not teacher voxels"):
        join_voxels(torch.tensor([50]), teacher)  # past the last key


def test_join_through_grid_coordinates():
    # teacher voxels (b, r, p, z) in arbitrary order; the student holds a subset
    t_vox = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 1], [0, 0, 1, 1], [0, 1, 2, 0], [1, 3, 1, 0]])
    s_vox = torch.tensor([[1, 3, 1, 0], [0, 0, 1, 1]])
    shape = (4, 3, 2)
    t_keys, t_cells, _ = group(t_vox, shape)
    s_keys, s_cells, _ = group(s_vox, shape)
    idx = join_voxels(s_keys, t_keys)
    assert torch.equal(t_cells[idx], s_cells)


def test_feature_loss_by_hand():
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    # squared errors 0, 4, 9, 1 -> mean 3.5
    assert float(feature_loss(s, t)) == pytest.approx(3.5)
    # released: per voxel (0 + 4) / 2 = 2 and (9 + 1) / 2 = 5, both > 1 -> 3.5; a voxel at
    # 0.5 (squared errors 1, 0) is left out of the mean, and none above 1 gives 0
    assert float(feature_loss(s, t, "released")) == pytest.approx(3.5)
    s3, t3 = torch.cat([s, torch.tensor([[1.0, 0.0]])]), torch.cat([t, torch.zeros(1, 2)])
    assert float(feature_loss(s3, t3, "released")) == pytest.approx(3.5)
    assert float(feature_loss(s3[2:], t3[2:], "released")) == 0.0


def test_kl_logit_loss_by_hand():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[2.0, 0.0]])
    T = 2.0
    pt1 = math.exp(1.0) / (math.exp(1.0) + 1.0)  # softmax of t / T = (1, 0)
    kl = pt1 * math.log(pt1 / 0.5) + (1 - pt1) * math.log((1 - pt1) / 0.5)
    assert float(logit_loss(s, t, T, "kl")) == pytest.approx(kl * T * T, rel=1e-6)


def test_class_balanced_logit_loss_by_hand():
    # three road points the student already matches, one person point it does not:
    # a plain mean gives the person 1/4 of the weight, the class-balanced mean 1/2
    s = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    t = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([9, 9, 9, 6])
    T = 2.0
    pt1 = math.exp(1.0) / (math.exp(1.0) + 1.0)
    kl = (pt1 * math.log(pt1 / 0.5) + (1 - pt1) * math.log((1 - pt1) / 0.5)) * T * T
    assert float(logit_loss(s, t, T, "kl")) == pytest.approx(kl / 4, rel=1e-6)
    assert float(logit_loss(s, t, T, "kl", labels)) == pytest.approx(kl / 2, rel=1e-6)


def test_released_logit_loss_is_the_released_formula():
    """The released line: p = softmax(0.3 z); per point
    torch.mean(p_t * |log((p_t + 1e-6) / (p_s + 1e-6))|, dim=1) over the 20 classes; points
    whose term is at most 0.01 dropped; the mean over the rest. Worked in double precision
    on five points, three of them kept, one where the 1e-6 changes the term ten-fold."""
    C, eps = 20, 1e-6
    s, t = torch.zeros(5, C), torch.zeros(5, C)
    t[0, 3] = 10.0  # the teacher sure of class 3, the student uniform: kept
    s[1, 5] = t[1, 5] = 1.0  # they agree: term 0, dropped
    t[2, 3] = 1.0  # a small disagreement: its mean over classes below 0.01, dropped
    t[3, 7], s[3, 8] = 20.0, 30.0  # sure of different classes: kept
    s[4, 1] = 100.0  # the teacher uniform, the student's other classes at e^-30 << 1e-6: kept

    def released_term(zt: list[float], zs: list[float], eps: float) -> float:
        et, es = [math.exp(0.3 * v) for v in zt], [math.exp(0.3 * (v - max(zs))) for v in zs]
        pt, ps = [v / sum(et) for v in et], [v / sum(es) for v in es]
        return sum(a * abs(math.log((a + eps) / (b + eps))) for a, b in zip(pt, ps, strict=True)) / C

    terms = [released_term(t[i].tolist(), s[i].tolist(), eps) for i in range(5)]
    assert terms[1] < 1e-12 and terms[2] < 0.01 < terms[2] * C
    assert all(terms[i] > 0.01 for i in (0, 3, 4))
    # without the 1e-6 the last point's term would be ten times larger: the epsilon is in
    assert released_term(t[4].tolist(), s[4].tolist(), 0.0) > 2 * terms[4]
    want = (terms[0] + terms[3] + terms[4]) / 3
    assert float(logit_loss(s, t, 2.0, "released")) == pytest.approx(want, rel=1e-4)


def test_class_balanced_mean_leaves_unlabelled_points_out():
    # KL terms 0 (road), 4 (unlabelled), 2 (person): balanced over road and person only -> 1
    s = torch.zeros(3, 2)
    t = torch.zeros(3, 2)
    values = torch.tensor([0.0, 4.0, 2.0])
    assert float(class_balanced_mean(values, torch.tensor([9, 0, 6]))) == pytest.approx(1.0)
    assert float(class_balanced_mean(values, torch.tensor([0, 0, 0]))) == 0.0
    assert float(logit_loss(s, t, 2.0, "kl", torch.tensor([0, 0, 0]))) == 0.0


def test_affinity_loss_by_hand():
    # student: two orthogonal voxels (cos 0); teacher: parallel (cos 1)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    t = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    # group {0, 1}: A_s = [[1,0],[0,1]], A_t = [[1,1],[1,1]] -> mean |diff| = 2/4
    # group {2}: one voxel, no affinity -> skipped; group {1, 2}: A_s off-diag cos45 = 0.7071, A_t 0.7071 -> 0
    groups = [torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([1, 2])]
    assert float(affinity_loss(s, t, groups)) == pytest.approx((0.5 + 0.0) / 2, abs=1e-6)
    assert float(affinity_loss(s, t, [])) == 0.0


def _batch_with(labels, instance, vox):
    n = len(labels)
    return Batch(feats=torch.zeros(n, 9), vox=torch.tensor(vox), labels=torch.tensor(labels),
                 instance=torch.tensor(instance), sizes=[n], n_original=[n])


def test_affinity_groups_per_instance_and_per_class():
    # points of two person instances (7, 8) and one car (label 1, not hard), voxel of each point given
    labels = [6, 6, 6, 6, 1, 1]
    instance = [7, 7, 8, 8, 9, 9]
    point_voxel = torch.tensor([0, 1, 2, 2, 3, 3])
    b = _batch_with(labels, instance, [[0, 0, 0, 0]] * 6)
    out = ModelOutput(torch.zeros(6, 20), torch.arange(4), torch.zeros(4, 3), point_voxel)
    hard = (2, 3, 4, 5, 6, 7, 8)
    groups = affinity_groups(b, out, hard, cap=10)
    assert sorted(g.tolist() for g in groups) == [[0, 1], [2]]
    by_class = affinity_groups(b, out, hard, cap=10, level="class")
    assert [g.tolist() for g in by_class] == [[0, 1, 2]]
    capped = affinity_groups(b, out, hard, cap=2, level="class")
    assert len(capped[0]) == 2 and set(capped[0].tolist()) <= {0, 1, 2}
    # a person and a bicycle that share instance id 7 in one scan are two groups, not one
    shared = _batch_with([6, 6, 2, 2], [7, 7, 7, 7], [[0, 0, 0, 0]] * 4)
    out4 = ModelOutput(torch.zeros(4, 20), torch.arange(4), torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]))
    assert sorted(g.tolist() for g in affinity_groups(shared, out4, hard, cap=10)) == [[0, 1], [2, 3]]
    # no hard-class instance: no groups -> L_aff = 0, not NaN
    none = _batch_with([1, 9], [3, 0], [[0, 0, 0, 0]] * 2)
    assert affinity_groups(none, ModelOutput(torch.zeros(2, 20), torch.arange(1), torch.zeros(1, 3),
                                             torch.zeros(2, dtype=torch.long)), hard, cap=10) == []


def test_student_point_index():
    t = Batch(torch.zeros(10, 9), torch.zeros(10, 4, dtype=torch.long), torch.zeros(10, dtype=torch.long),
              torch.zeros(10, dtype=torch.long), sizes=[6, 4], n_original=[4, 3])
    s = Batch(torch.zeros(7, 9), torch.zeros(7, 4, dtype=torch.long), torch.zeros(7, dtype=torch.long),
              torch.zeros(7, dtype=torch.long), sizes=[4, 3], n_original=[4, 3])
    assert student_point_index(t, s).tolist() == [0, 1, 2, 3, 6, 7, 8]


def _views(fused_cache, cfg, keys):
    """(teacher batch, student batch) of the given (scan, augmentation seed) keys."""
    ds = ShardDataset(fused_cache, ("00",), cfg, view="pair")
    return collate("pair")([ds[k] for k in keys])


@pytest.mark.parametrize("model", ["polarnet", "cylinder3d"])
def test_distilling_from_the_fused_view_matches_a_brute_force_join(fused_cache, model):
    """Teacher on the really fused view, student on the single view of the same augmented
    scans: L_feat and L_logit equal a brute-force join that pairs voxels by their (scan,
    rho, phi, z) coordinates in a dict and points by their row within each scan."""
    cfg = tiny_train_config(model, w_feat=1.0)
    fused, single = _views(fused_cache, cfg, [(2, 7), (4, 8)])
    assert sum(fused.sizes) > sum(single.sizes)  # fused points are really there
    torch.manual_seed(0)
    teacher, student = build_model(cfg.model).eval(), build_model(cfg.model).eval()
    with torch.no_grad():
        t_out, s_out = teacher(fused), student(single)
        losses = Distiller(cfg.distill.override(kd_balance="point"), DEFAULT_HARD_CLASSES, student.feature_dim,
                           teacher.feature_dim)(fused, t_out, single, s_out, {"feat": True, "logit": True})
    shape = tuple(cfg.model.grid_shape[:2]) if model == "polarnet" else tuple(cfg.model.grid_shape)
    def voxel_table(batch, out):
        cells = batch.vox[:, : 1 + len(shape)].tolist()
        return {tuple(cells[i]): out.voxel_feats[int(out.point_voxel[i])] for i in range(len(cells))}
    t_vox, s_vox = voxel_table(fused, t_out), voxel_table(single, s_out)
    feat = torch.stack([((s_vox[k] - t_vox[k]) ** 2).mean() for k in s_vox]).mean()
    T = cfg.distill.temperature
    kl, start_t, start_s = [], 0, 0
    for size_t, size_s in zip(fused.sizes, single.sizes, strict=True):
        for i in range(size_s):  # point i of the single scan is point i of the fused one
            pt = torch.softmax(t_out.point_logits[start_t + i] / T, 0)
            ps = torch.softmax(s_out.point_logits[start_s + i] / T, 0)
            kl.append((pt * (pt.clamp_min(1e-30).log() - ps.clamp_min(1e-30).log())).sum())
        start_t, start_s = start_t + size_t, start_s + size_s
    assert float(losses["feat"]) == pytest.approx(float(feat), rel=1e-4)
    assert float(losses["logit"]) == pytest.approx(float(torch.stack(kl).mean()) * T * T, rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("model", ["polarnet", "cylinder3d"])
def test_half_level_features_are_the_decoder_level_before_the_last(fused_cache, model):
    """`feat_level half` (the released code's upBlock2): each point's feature is read from the
    output of the up block before the last (a forward hook) at its voxel's indices halved,
    and L_feat 'released' equals per half-resolution voxel the mean squared difference over
    channels, kept where > 1, averaged, from a brute-force join on those coordinates."""
    cfg = tiny_train_config(model, w_feat=1.0, feat_level="half", feat_variant="released")
    fused, single = _views(fused_cache, cfg, [(2, 7), (4, 8)])
    torch.manual_seed(0)
    teacher, student = build_model(cfg.model).eval(), build_model(cfg.model).eval()
    seen = {}
    for name, net in (("t", teacher), ("s", student)):
        set_feature_level(net, "half")
        level = net.up[2] if model == "cylinder3d" else net.unet.ups[2]
        level.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    with torch.no_grad():  # untrained features are ~0.05: shift the student's so some voxels pass 1
        last_bn = student.up[2].b3 if model == "cylinder3d" else student.unet.ups[2].b2
        last_bn.bias.copy_(torch.linspace(0.0, 2.0, len(last_bn.bias)))
        t_out, s_out = teacher(fused), student(single)
        got = Distiller(cfg.distill, DEFAULT_HARD_CLASSES, student.feature_dim, teacher.feature_dim)(
            fused, t_out, single, s_out, {"feat": True})["feat"]

    def table(batch, out):
        """(the level's voxels: coordinates -> hooked feature; each point's parent coordinates).
        Cylinder3D's level is every site of the strided conv (some hold no point's parent, as
        released); PolarNet's, the dense map at the occupied cells' parents."""
        if model == "cylinder3d":
            coords = torch.cat([batch.vox[:, :1], batch.vox[:, 1:] // 2], dim=1)
            return {tuple(r): f for r, f in zip(out.indices.tolist(), out.features, strict=True)}, coords
        size = torch.tensor(out.shape[2:])
        coords = torch.cat([batch.vox[:, :1], torch.minimum(batch.vox[:, 1:3] // 2, size - 1)], dim=1)
        return {tuple(c): out[c[0], :, c[1], c[2]] for c in coords.unique(dim=0).tolist()}, coords

    t_rows, _ = table(fused, seen["t"])
    s_rows, s_coords = table(single, seen["s"])
    assert torch.equal(s_out.voxel_feats[s_out.point_voxel], torch.stack([s_rows[tuple(c)] for c in s_coords.tolist()]))
    per_voxel = torch.stack([((s_rows[k] - t_rows[k]) ** 2).mean() for k in s_rows])
    assert len(s_rows) == len(s_out.voxel_keys) and int((per_voxel > 1).sum()) > 0  # (the threshold: by hand above)
    assert float(got) == pytest.approx(float(per_voxel[per_voxel > 1].mean()), rel=1e-5)


@pytest.mark.parametrize("model", ["polarnet", "cylinder3d"])
def test_gradients_reach_the_student_never_the_teacher(fused_cache, model):
    cfg = tiny_train_config(model)
    teacher_b, student_b = _views(fused_cache, cfg, [(1, 3), (3, 4)])
    torch.manual_seed(1)
    teacher = build_model(cfg.model).eval().requires_grad_(False)
    student = build_model(cfg.model).train()
    with torch.no_grad():
        t_out = teacher(teacher_b)
    s_out = student(student_b)
    losses = Distiller(cfg.distill, DEFAULT_HARD_CLASSES, student.feature_dim, teacher.feature_dim)(
        teacher_b, t_out, student_b, s_out, {"feat": True, "logit": True, "aff": True})
    assert all(float(v.detach()) > 0 for v in losses.values())  # different networks and views disagree
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


def test_kd_only_where_the_teacher_is_right(fused_cache):
    """`kd_where correct`: L_logit is the plain term over the points whose teacher label is
    the ground truth, picked here by hand from the teacher's argmax, unlabelled ones out."""
    cfg = tiny_train_config("polarnet")
    fused, single = _views(fused_cache, cfg, [(2, 7), (4, 8)])
    torch.manual_seed(0)
    teacher, student = build_model(cfg.model).eval(), build_model(cfg.model).eval()
    with torch.no_grad():
        t_out, s_out = teacher(fused), student(single)
    rows = torch.cat([torch.arange(n) + sum(fused.sizes[:b]) for b, n in enumerate(single.sizes)])
    t_logits = t_out.point_logits[rows]
    right = [i for i in range(len(rows)) if int(t_logits[i].argmax()) == int(single.labels[i]) != 0]
    assert 0 < len(right) < int((single.labels != 0).sum())  # an untrained teacher is right somewhere, not everywhere
    # by hand: KL(p_t || p_s) at T per kept point, times T^2, averaged within each class, then over classes
    T = cfg.distill.temperature
    per_class: dict[int, list[float]] = {}
    for i in right:
        log_pt = torch.log_softmax(t_logits[i].double() / T, 0)  # PolarNet's -1e4 column: p 0, no log(0)
        log_ps = torch.log_softmax(s_out.point_logits[i].double() / T, 0)
        kl = float((log_pt.exp() * (log_pt - log_ps)).sum())
        per_class.setdefault(int(single.labels[i]), []).append(kl * T * T)
    want = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    every = logit_loss(s_out.point_logits, t_logits, cfg.distill.temperature, "kl", single.labels)
    got = Distiller(cfg.distill.override(kd_where="correct"), DEFAULT_HARD_CLASSES, student.feature_dim,
                    teacher.feature_dim)(fused, t_out, single, s_out, {"logit": True})["logit"]
    assert float(got) == pytest.approx(want, rel=1e-4) and float(got) != pytest.approx(float(every), rel=1e-3)


def _dropblock_free_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights with every DropBlock at p 0: what the student computes without its
    regulariser, built by hand (not through `deterministic_forward`)."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, DropBlock2D):
            m.p = 0.0
    return ref


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k}


ALL_TERMS = {"feat": True, "logit": True, "aff": True}


def test_student_distils_the_dropblock_free_forward(fused_cache):
    """`kd_forward clean`: every term equals the terms computed by hand on the same weights
    with DropBlock at p 0; the segmentation loss is the DropBlock forward's (same RNG), and
    BatchNorm's running statistics move as after that forward alone. With `dropped` (how
    runs trained before) the terms differ: the test fails if a term reads a dropped forward."""
    cfg = tiny_train_config("polarnet", w_feat=1.0)
    assert cfg.model.dropout > 0 and cfg.distill.kd_forward == "clean"
    fused, single = _views(fused_cache, cfg, [(2, 7), (4, 8)])
    torch.manual_seed(0)
    teacher = build_model(cfg.model).eval()
    student = build_model(cfg.model).train()
    plain, ref = copy.deepcopy(student), _dropblock_free_copy(student)
    distiller = Distiller(cfg.distill, DEFAULT_HARD_CLASSES, student.feature_dim, teacher.feature_dim,
                          cfg.model.grid_shape)

    def step(net: torch.nn.Module) -> dict[str, float]:
        ctx = StepContext(net, torch.device("cpu"), SegLoss.of(cfg), cfg.distill, teacher, "fused", distiller)
        torch.manual_seed(5)
        losses, _ = student_step(ctx, (fused, single), torch.Generator().manual_seed(3))
        return {k: float(v.detach()) for k, v in losses.items()}

    got = step(Deterministic(student))
    with torch.no_grad():
        t_out = teacher(fused)
        torch.manual_seed(5)  # the same random points per cell (`max_points_per_cell`) as the step drew
        want = distiller(fused, t_out, single, ref(single), ALL_TERMS, torch.Generator().manual_seed(3))
        torch.manual_seed(5)
        dropped_out = plain(single)
    for term in ALL_TERMS:
        assert got[term] == pytest.approx(float(want[term]), rel=1e-5, abs=1e-7), term
    seg_dropped = float(view_segmentation_loss(dropped_out.point_logits, single.vox, single.labels, cfg.optim.seg_on,
                                               tuple(cfg.model.grid_shape), cfg.optim.lovasz_weight))
    assert got["seg"] == pytest.approx(seg_dropped, rel=1e-6)
    for k, v in _bn_buffers(plain).items():
        torch.testing.assert_close(_bn_buffers(student)[k], v, msg=k)
    # the dropped forward's terms are not these (DropBlock zeroes whole blocks of cells)
    old = step(copy.deepcopy(plain))
    assert old["logit"] != pytest.approx(got["logit"], rel=1e-3) and old["feat"] != pytest.approx(got["feat"], rel=1e-3)


def test_online_distils_both_views_dropblock_free(fused_cache):
    """`online` with `kd_forward clean`: the terms compare the DropBlock-free single view with
    the DropBlock-free fused view; the fused view's cross-entropy keeps DropBlock."""
    cfg = tiny_train_config("polarnet", w_feat=1.0, fused_loss="all", max_points_per_cell=0)  # no random points
    fused, single = _views(fused_cache, cfg, [(2, 7), (4, 8)])
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    ref = _dropblock_free_copy(model)
    distiller = Distiller(cfg.distill, DEFAULT_HARD_CLASSES, model.feature_dim, model.feature_dim, cfg.model.grid_shape)
    ctx = StepContext(TwoViews(model, deterministic=True), torch.device("cpu"), SegLoss.of(cfg), cfg.distill,
                      distiller=distiller)
    losses, _ = online_step(ctx, (fused, single), torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = distiller(fused, ref(fused), single, ref(single), ALL_TERMS, torch.Generator().manual_seed(3))
    for term in ALL_TERMS:
        assert float(losses[term].detach()) == pytest.approx(float(want[term]), rel=1e-5, abs=1e-7), term
    assert float(losses["fused"].detach()) > 0


# (term, the knobs that pick its variant): every term and variant the code offers
TERM_CASES = {
    "feat": ("feat", {"w_feat": 1.0}),
    "logit kl": ("logit", {}),
    "logit kl voxel": ("logit", {"logit_on": "voxel"}),
    "logit released": ("logit", {"logit_variant": "released", "kd_balance": "point"}),
    "aff instance": ("aff", {}),
    "aff class": ("aff", {"aff_level": "class"}),
    "aff released": ("aff", {"aff_level": "released"}),
}


@pytest.mark.parametrize("model", ["polarnet", "cylinder3d"])
@pytest.mark.parametrize("case", list(TERM_CASES))
def test_no_distillation_term_is_dead(fused_cache, model, case):
    """Teacher and student of different weights disagree: every term, on both backbones, is
    clearly above 0 and sends the student a gradient. The released affinity on PolarNet's
    20 logits (a constant -1e4 in the unlabelled column makes every logit vector parallel)
    was ~1e-6 with a gradient ~1e-7: the thresholds sit three orders of magnitude above."""
    term, knobs = TERM_CASES[case]
    # BatchNorm on batch statistics (train mode) without DropBlock: untrained networks' outputs
    # of the scale training sees (in eval mode a fresh Cylinder3D's are ~1e-3)
    cfg = tiny_train_config(model, dropout=0.0, max_points_per_cell=0, **knobs)
    fused, single = _views(fused_cache, cfg, [(2, 7), (4, 8)])
    hard = torch.isin(single.labels, torch.tensor(list(class_ids(DEFAULT_HARD_CLASSES))))
    assert int(hard.sum()) > 10  # hard-class voxels for the affinity to group
    torch.manual_seed(0)
    teacher = build_model(cfg.model).train()
    torch.manual_seed(1)
    student = build_model(cfg.model).train()
    with torch.no_grad():
        t_out = teacher(fused)
    loss = Distiller(cfg.distill, DEFAULT_HARD_CLASSES, student.feature_dim, teacher.feature_dim,
                     cfg.model.grid_shape)(fused, t_out, single, student(single), {term: True},
                                           torch.Generator().manual_seed(0))[term]
    loss.backward()
    grad = math.sqrt(sum(float((p.grad**2).sum()) for p in student.parameters() if p.grad is not None))
    assert float(loss.detach()) > 1e-3 and grad > 1e-4, (float(loss.detach()), grad)


def test_logit_term_per_voxel_reads_each_voxels_first_point_and_its_majority_label():
    """`logit_on voxel` (the released level): the term over each single-scan voxel once, at
    its lowest-index point, weighted by the voxel's majority label; worked by hand on five
    points in two voxels, against the per-point term, which counts all five."""
    vox = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    labels = torch.tensor([9, 6, 9, 9, 6])  # voxel A (points 1, 2, 4): 6 twice -> 6; voxel B (0, 3): 9
    batch = Batch(feats=torch.zeros(5, 9), vox=vox, labels=labels, instance=torch.zeros(5, dtype=torch.long),
                  sizes=[5], n_original=[5])
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(5, 20, generator=g), torch.randn(5, 20, generator=g) * 3
    point_voxel = torch.tensor([1, 0, 0, 1, 0])
    s_out = ModelOutput(s_logits, torch.arange(2), torch.zeros(2, 4), point_voxel)
    t_out = ModelOutput(t_logits, torch.arange(2), torch.zeros(2, 4), point_voxel)
    T = 2.0

    def kl(i: int) -> float:  # over the 19 real classes (column 0 is train id 0, never a target)
        log_pt = torch.log_softmax(t_logits[i, 1:].double() / T, 0)
        log_ps = torch.log_softmax(s_logits[i, 1:].double() / T, 0)
        return float((log_pt.exp() * (log_pt - log_ps)).sum()) * T * T

    cfg = tiny_train_config("polarnet").distill
    got = {on: float(Distiller(cfg.override(logit_on=on), DEFAULT_HARD_CLASSES, 4, 4, (2, 1, 1))(
        batch, t_out, batch, s_out, {"logit": True})["logit"]) for on in ("voxel", "point")}
    # per voxel: A's first point is 1 (class 6), B's is 0 (class 9); balanced over the two classes
    assert got["voxel"] == pytest.approx((kl(1) + kl(0)) / 2, rel=1e-5)
    # per point: class 6 = points 1, 4; class 9 = points 0, 2, 3
    assert got["point"] == pytest.approx(((kl(1) + kl(4)) / 2 + (kl(0) + kl(2) + kl(3)) / 3) / 2, rel=1e-5)
