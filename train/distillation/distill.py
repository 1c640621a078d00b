"""The three M2SKD distillations (docs/method.md, "Distillation"): features, logits, instance-aware affinity.

The student's points are the first n_original points of each teacher sample and both
views are voxelised on the same grid, so every student voxel is also a teacher voxel:
voxels are matched by their int64 grid keys (sorted search, no dense grid) and points by
index.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m2skd.common.labels import IGNORE_INDEX, class_ids

from ..config import DistillConfig
from ..data.batch import Batch
from ..data.voxel_labels import VoxelLabels, voxel_labels
from ..models import ModelOutput
from ..registry import Registry

# The logits' real classes: train id 0 (unlabelled) is never a target, and PolarNet puts a
# constant -1e4 there, which makes every logit vector nearly parallel (the released
# affinity on logits was ~3.5e-6, its gradient ~1.6e-7) and puts a dead class in every
# mean over classes (issue 30). Every term reads these columns only.
REAL = slice(IGNORE_INDEX + 1, None)
RELEASED_SCALE = 0.3  # released code: softmax(logits * 0.3), i.e. T = 1/0.3
RELEASED_THRESHOLD = 0.01  # released code: only voxels whose KD term exceeds this
RELEASED_EPS = 1e-6  # released code: log((p_t + 1e-6) / (p_s + 1e-6))


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
    'released': softmax(0.3 z), per point the mean over classes of
    p_t |log((p_t + 1e-6) / (p_s + 1e-6))| (the released code's line, epsilon included),
    averaged over the points whose term exceeds 0.01.
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
        pt = F.softmax(t_logits * RELEASED_SCALE, dim=1)
        ps = F.softmax(s_logits * RELEASED_SCALE, dim=1)
        # the released line, epsilon included: mean(p_t * |log((p_t + 1e-6) / (p_s + 1e-6))|, dim=1)
        term = (pt * ((pt + RELEASED_EPS).log() - (ps + RELEASED_EPS).log()).abs()).mean(dim=1)
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
    them, pooled into one set; the cosine-similarity matrices of their student and
    teacher logits (the released code's 20; `Pairing` gives the 19 real classes'); mean
    |A_s - A_t| per class, summed over classes, no cap.
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


class Pairing:
    """What the terms read: one (teacher, student) batch pair and their outputs, matched.
    Each join is computed once, when a term first asks for it."""

    def __init__(self, distiller: Distiller, teacher: Batch, t_out: ModelOutput, student: Batch, s_out: ModelOutput,
                 generator: torch.Generator | None) -> None:
        self.cfg, self.hard_ids, self.grid_shape = distiller.cfg, distiller.hard_ids, distiller.grid_shape
        self.adapter = distiller.adapter
        self.teacher, self.t_out, self.student, self.s_out, self.generator = teacher, t_out, student, s_out, generator
        # always: a student voxel missing from the teacher means the views are not the same scans
        self.t_idx = join_voxels(s_out.voxel_keys, t_out.voxel_keys)

    @functools.cached_property
    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(adapted student features, the teacher's at the same voxels)."""
        return self.adapter(self.s_out.voxel_feats), self.t_out.voxel_feats[self.t_idx]

    @functools.cached_property
    def point_logits(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(student logits, teacher logits at the same points, labels) of every student
        point, the 19 real classes' columns (`REAL`)."""
        rows = student_point_index(self.teacher, self.student)
        return self.s_out.point_logits[:, REAL], self.t_out.point_logits[rows][:, REAL], self.student.labels

    @functools.cached_property
    def voxel_logits(self) -> tuple[torch.Tensor, torch.Tensor, VoxelLabels]:
        """The same at each single-scan voxel once (its first point), labelled by majority."""
        s, t, _ = self.point_logits
        v = voxel_labels(self.student.vox, self.student.labels, self.grid_shape)
        return s[v.first], t[v.first], v


def feat_term(v: Pairing) -> torch.Tensor:
    s_feat, t_feat = v.features
    return feature_loss(s_feat, t_feat, v.cfg.feat_variant)


def logit_term(v: Pairing) -> torch.Tensor:
    cfg = v.cfg
    if cfg.logit_on == "voxel":
        s_logits, t_logits, view = v.voxel_logits
        labels = view.labels
    else:
        s_logits, t_logits, labels = v.point_logits
    if cfg.kd_where == "correct":
        right = (t_logits.argmax(1) + REAL.start == labels) & (labels != IGNORE_INDEX)
        s_logits, t_logits, labels = s_logits[right], t_logits[right], labels[right]
    return logit_loss(s_logits, t_logits, cfg.temperature, cfg.logit_variant,
                      labels if cfg.kd_balance == "class" else None)


def aff_term(v: Pairing) -> torch.Tensor:
    cfg = v.cfg
    if cfg.aff_level == "released":
        s_logits, t_logits, view = v.voxel_logits
        return released_affinity_loss(s_logits, t_logits, view.labels, view.sample, v.hard_ids)
    groups = affinity_groups(v.student, v.s_out, v.hard_ids, cfg.aff_cap, cfg.aff_level, v.generator)
    s_feat, t_feat = v.features
    return affinity_loss(s_feat, t_feat, groups)


@dataclass(frozen=True)
class Term:
    fn: Callable[[Pairing], torch.Tensor]
    weight: str  # its weight knob in DistillConfig (0: off)
    # the DistillConfig knobs that shape this term alone: with its weight 0 they change
    # nothing (a term of weight 0 is not computed), so a run may resume with them changed
    knobs: tuple[str, ...] = ()
    # whether the term, so set, reads the voxel features (whose level `feat_level` picks)
    reads_features: Callable[[dict], bool] = lambda distill: False


# The distillation terms, in the order they are computed. A new term: one function of
# `Pairing` and one entry here (and its weight knob in DistillConfig); ablations, the
# trainer's weighting and the logs follow this table.
TERMS: Registry[Term] = Registry("distillation term")
TERMS.add("feat", Term(feat_term, "w_feat", ("feat_variant",), lambda d: True))
TERMS.add("logit", Term(logit_term, "w_logit", ("temperature", "logit_variant", "kd_balance", "kd_where", "logit_on")))
TERMS.add("aff", Term(aff_term, "w_aff", ("aff_level", "aff_cap"), lambda d: d.get("aff_level") != "released"))


def idle_knobs(distill: dict) -> set[str]:
    """The knobs that change nothing in a run distilled as `distill` (a DistillConfig as a
    dict): those of the terms of weight 0, and the feature level when no term on reads
    features (the backbones' levels have one width, so no weights change either)."""
    on = [t for t in TERMS.values() if distill.get(t.weight)]
    idle = {k for t in TERMS.values() if t not in on for k in t.knobs} | (set() if on else {"kd_forward"})
    return idle if any(t.reads_features(distill) for t in on) else idle | {"feat_level"}


def term_weights(cfg: DistillConfig) -> dict[str, float]:
    """Each distillation term's weight (what the warm-up scales)."""
    return {name: getattr(cfg, t.weight) for name, t in TERMS.items()}


def only(*terms: str) -> dict[str, float]:
    """Overrides that switch every term off but `terms` (the ablations of each term alone)."""
    if bad := set(terms) - TERMS.keys():
        raise ValueError(f"unknown distillation term(s) {sorted(bad)}; the terms are {list(TERMS)}")
    return {t.weight: 0.0 for name, t in TERMS.items() if name not in terms}


def step_weights(cfg: DistillConfig, step: int) -> dict[str, float]:
    """Every weighted term's weight at optimiser step `step` (0-based): the distillation
    weights scaled by the warm-up, the online fused-view term as set."""
    ramp = 1.0 if cfg.kd_warmup == 0 else min(1.0, step / cfg.kd_warmup)
    w = {k: ramp * v for k, v in term_weights(cfg).items()}
    w["fused"] = cfg.w_fused if cfg.fused_loss != "off" else 0.0
    return w


class Distiller(nn.Module):
    """Computes the distillation terms (`TERMS`) for one (teacher, student) batch pair.

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
        pairing = Pairing(self, teacher, t_out, student, s_out, generator)
        return {name: term.fn(pairing) for name, term in TERMS.items() if use.get(name)}
