"""The three M2SKD distillations (docs/method.md, "Distillation"): features, logits, instance-aware affinity.

The student's points are the first n_original points of each teacher sample and both
views are voxelised on the same grid, so every student voxel is also a teacher voxel:
voxels are matched by their int64 grid keys (sorted search, no dense grid) and points by
index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2skd.common.labels import IGNORE_INDEX, class_ids

from .batch import Batch
from .config import DistillConfig
from .models import ModelOutput
from .voxel_labels import voxel_view

RELEASED_SCALE = 0.3  # released code: softmax(logits * 0.3), i.e. T = 1/0.3
RELEASED_THRESHOLD = 0.01  # released code: only voxels whose KD term exceeds this


def join_voxels(student_keys: torch.Tensor, teacher_keys: torch.Tensor) -> torch.Tensor:
    """For each student voxel key, the index of the same key among the (sorted, unique)
    teacher keys. Raises if a student voxel has no teacher voxel: the views did not come
    from the same scans and augmentation."""
    pos = torch.searchsorted(teacher_keys, student_keys).clamp_(max=max(len(teacher_keys) - 1, 0))
    if len(student_keys) and (len(teacher_keys) == 0 or not bool((teacher_keys[pos] == student_keys).all())):
        missing = int((teacher_keys[pos] != student_keys).sum()) if len(teacher_keys) else len(student_keys)
        raise ValueError(f"{missing} student voxels are not teacher voxels: the two views are not the same "
                         "scans with the same augmentation")
    return pos


def student_point_index(teacher: Batch, student: Batch) -> torch.Tensor:
    """Teacher row of every student point (the first n_original rows of each teacher sample)."""
    starts = torch.tensor([0, *teacher.sizes[:-1]]).cumsum(0).tolist()
    idx = [torch.arange(s, s + n) for s, n in zip(starts, student.sizes, strict=True)]
    return torch.cat(idx).to(teacher.labels.device)


RELEASED_FEAT_THRESHOLD = 1.0  # released code: only voxels whose mean squared difference exceeds this


def feature_loss(s_feat: torch.Tensor, t_feat: torch.Tensor, variant: str = "mse") -> torch.Tensor:
    """Between matched (already adapted) student and teacher voxel features. 'mse': the mean
    squared difference over voxels and channels. 'released': per voxel the mean over
    channels, kept where it exceeds 1, averaged (0 when none is kept). The released code
    takes the mean over the fused view's voxels; those the single view lacks carry no
    gradient, but count in the mean when their term exceeds 1: here they are left out."""
    if len(s_feat) == 0:
        return s_feat.sum() * 0.0
    s_feat, t_feat = s_feat.float(), t_feat.float().detach()
    if variant == "mse":
        return F.mse_loss(s_feat, t_feat)
    if variant == "released":
        per_voxel = ((s_feat - t_feat) ** 2).mean(dim=1)
        kept = per_voxel[per_voxel > RELEASED_FEAT_THRESHOLD]
        return kept.mean() if len(kept) else s_feat.sum() * 0.0
    raise ValueError(f"unknown feature distillation variant {variant!r}")


def class_balanced_mean(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of `values` within each label, then over the labels present (each equal).
    Unlabelled points (train id 0) are left out, as the segmentation loss leaves them out."""
    labelled = labels != IGNORE_INDEX
    values, labels = values[labelled], labels[labelled]
    if len(labels) == 0:
        return values.sum() * 0.0
    n = int(labels.max()) + 1
    sums = values.new_zeros(n).index_add(0, labels, values)
    counts = torch.bincount(labels, minlength=n)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


def logit_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 2.0,
               variant: str = "kl", labels: torch.Tensor | None = None) -> torch.Tensor:
    """'kl': mean over points of KL(p_t || p_s) at temperature T, times T^2 (Hinton et al.).
    'released': softmax(0.3 z), per point the mean over classes of p_t |log p_t - log p_s|
    (the released code's `torch.mean(p_t * |log(p_t / p_s)|, dim=1)`), averaged over the
    points whose term exceeds 0.01.
    With `labels` (ground truth per point) the mean is taken per class, then over classes."""
    if len(s_logits) == 0:
        return s_logits.sum() * 0.0
    t_logits = t_logits.detach().float()
    s_logits = s_logits.float()

    def mean(term: torch.Tensor, lab: torch.Tensor | None) -> torch.Tensor:
        return term.mean() if lab is None else class_balanced_mean(term, lab)

    if variant == "kl":
        log_ps = F.log_softmax(s_logits / temperature, dim=1)
        log_pt = F.log_softmax(t_logits / temperature, dim=1)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
        return mean(kl, labels) * temperature**2
    if variant == "released":
        log_ps = F.log_softmax(s_logits * RELEASED_SCALE, dim=1)
        log_pt = F.log_softmax(t_logits * RELEASED_SCALE, dim=1)
        term = (log_pt.exp() * (log_pt - log_ps).abs()).mean(dim=1)
        keep = term > RELEASED_THRESHOLD
        if not bool(keep.any()):
            return term.sum() * 0.0
        return mean(term[keep], None if labels is None else labels[keep])
    raise ValueError(f"unknown logit distillation variant {variant!r}")


def cosine_affinity(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.float(), dim=1, eps=1e-8)
    return x @ x.T


def affinity_loss(s_feat: torch.Tensor, t_feat: torch.Tensor, groups: list[torch.Tensor]) -> torch.Tensor:
    """Mean over groups (instances) of mean |A_s - A_t|, A the cosine-similarity matrix of
    the group's voxel features. Groups of fewer than 2 voxels carry no affinity and are
    skipped; no group at all gives 0."""
    losses = [(cosine_affinity(s_feat[g]) - cosine_affinity(t_feat[g].detach())).abs().mean()
              for g in groups if len(g) >= 2]
    if not losses:
        return s_feat.sum() * 0.0
    return torch.stack(losses).mean()


def affinity_groups(student: Batch, out: ModelOutput, hard_ids: tuple[int, ...], cap: int, level: str = "instance",
                    generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Voxel index sets of each hard-class instance (keyed by scan, class and instance id, as
    fusion keys instances) or of each hard class per scan, each capped at `cap` voxels by a
    random subset."""
    labels, inst = student.labels, student.instance
    is_hard = torch.isin(labels, torch.tensor(hard_ids, device=labels.device))
    if level == "instance":
        is_hard &= inst > 0
    if not bool(is_hard.any()):
        return []
    sample = torch.repeat_interleave(torch.arange(student.batch_size, device=labels.device),
                                     torch.tensor(student.sizes, device=labels.device))
    cols = [sample, labels, inst] if level == "instance" else [sample, labels]
    # one id per (scan, class, instance) or (scan, class); voxels of the group = voxels of its points
    gid = torch.unique(torch.stack([c[is_hard] for c in cols], dim=1), dim=0, return_inverse=True)[1]
    vox = out.point_voxel[is_hard]
    pairs = torch.unique(torch.stack([gid, vox], dim=1), dim=0)  # sorted by group, then voxel
    _, counts = torch.unique_consecutive(pairs[:, 0], return_counts=True)
    groups = []
    for g in torch.split(pairs[:, 1], counts.tolist()):
        if len(g) > cap:
            g = g[torch.randperm(len(g), generator=generator, device=g.device)[:cap]]
        groups.append(g)
    return groups


def released_affinity_loss(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor,
                           sample: torch.Tensor, hard_ids: tuple[int, ...]) -> torch.Tensor:
    """The released code's affinity term, on single-scan voxels: for each hard class, the
    voxels of that (majority) label in every scan of the batch that has at least two of
    them, pooled into one set; the cosine-similarity matrices of their 20 student and
    teacher logits; mean |A_s - A_t| per class, summed over classes, no cap.
    (Released: two scans hard-coded, and a scan with exactly one such voxel before one with
    more keeps the class out; here any batch size, and a one-voxel scan is left out.)"""
    total = s_logits.sum() * 0.0
    for c in hard_ids:
        mine = labels == c
        if int(mine.sum()) < 2:
            continue
        per_scan = torch.bincount(sample[mine], minlength=int(sample.max()) + 1)
        keep = mine & (per_scan[sample] >= 2)
        if int(keep.sum()) < 2:
            continue
        total = total + (cosine_affinity(s_logits[keep]) - cosine_affinity(t_logits[keep].detach())).abs().mean()
    return total


class Distiller(nn.Module):
    """Computes L_feat, L_logit and L_aff for one (teacher, student) batch pair.

    Holds the 1x1 adapter (a Linear on voxel features) when the widths differ; with the
    same backbone on both sides it is the identity and has no weights.
    """

    def __init__(self, cfg: DistillConfig, hard_classes: tuple[str, ...], student_dim: int, teacher_dim: int,
                 grid_shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid_shape = tuple(grid_shape)  # the logits' voxels (logit_on voxel, aff_level released)
        self.hard_ids = tuple(class_ids(hard_classes))
        self.adapter = nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim)

    def forward(self, teacher: Batch, t_out: ModelOutput, student: Batch, s_out: ModelOutput,
                use: dict[str, bool], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        losses: dict[str, torch.Tensor] = {}
        t_idx = join_voxels(s_out.voxel_keys, t_out.voxel_keys)
        s_feat = self.adapter(s_out.voxel_feats)
        t_feat = t_out.voxel_feats[t_idx]
        if use.get("feat"):
            losses["feat"] = feature_loss(s_feat, t_feat, cfg.feat_variant)
        need_vox = (use.get("logit") and cfg.logit_on == "voxel") or (use.get("aff") and cfg.aff_level == "released")
        if use.get("logit") or need_vox:
            rows = student_point_index(teacher, student)
            s_logits, t_logits, labels = s_out.point_logits, t_out.point_logits[rows], student.labels
        if need_vox:  # each single-scan voxel once, labelled by its points' majority
            v = voxel_view(student.vox, student.labels, self.grid_shape)
            sv_logits, tv_logits = s_logits[v.first], t_logits[v.first]
        if use.get("logit"):
            if cfg.logit_on == "voxel":
                s_logits, t_logits, labels = sv_logits, tv_logits, v.labels
            if cfg.kd_where == "correct":
                right = (t_logits.argmax(1) == labels) & (labels != IGNORE_INDEX)
                s_logits, t_logits, labels = s_logits[right], t_logits[right], labels[right]
            losses["logit"] = logit_loss(s_logits, t_logits, cfg.temperature, cfg.logit_variant,
                                         labels if cfg.kd_balance == "class" else None)
        if use.get("aff"):
            if cfg.aff_level == "released":
                losses["aff"] = released_affinity_loss(sv_logits, tv_logits, v.labels, v.sample, self.hard_ids)
            else:
                groups = affinity_groups(student, s_out, self.hard_ids, cfg.aff_cap, cfg.aff_level, generator)
                losses["aff"] = affinity_loss(s_feat, t_feat, groups)
        return losses
