"""Segmentation loss: cross-entropy + Lovasz-softmax (Berman et al., CVPR 2018), as
PolarSeg and Cylinder3D train. Train id 0 (unlabelled) is ignored by both."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from m2skd.common.labels import IGNORE_INDEX as IGNORE

from ..data.voxel_labels import VoxelLabels, changed_targets, voxel_labels


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. errors sorted descending."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if len(jaccard) > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore: int = IGNORE) -> torch.Tensor:
    """Mean over classes present in `labels` of the Lovasz hinge on (N, C) probabilities."""
    valid = labels != ignore
    probs, labels = probs[valid], labels[valid]
    if len(labels) == 0:
        return probs.sum() * 0.0
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, lovasz_weight: float = 1.0) -> torch.Tensor:
    """CE + w * Lovasz on per-point logits; 0 (not NaN) when no point is labelled."""
    if not bool((labels != IGNORE).any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)
    if lovasz_weight == 0:
        return ce
    return ce + lovasz_weight * lovasz_softmax(F.softmax(logits.float(), dim=1), labels)


def view_segmentation_loss(logits: torch.Tensor, vox: torch.Tensor, labels: torch.Tensor, seg_on: str,
                           shape: tuple[int, ...], lovasz_weight: float = 1.0) -> torch.Tensor:
    """The segmentation loss of one view: per point, or per voxel on majority labels
    (`voxel_labels.py`), as PolarSeg and Cylinder3D train."""
    if seg_on == "point":
        return segmentation_loss(logits, labels, lovasz_weight)
    v = voxel_labels(vox, labels, shape)
    return segmentation_loss(logits[v.first], v.labels, lovasz_weight)


def fused_view_loss(fused_logits: torch.Tensor, fused: VoxelLabels, single: VoxelLabels, mode: str) -> torch.Tensor:
    """`online`'s cross-entropy on the fused view's voxels: 'changed' (released: only where
    the fused points changed a voxel's label, `changed_targets`) or 'all' voxels. Plain
    cross-entropy, no Lovasz term (the released line has it commented out); 0 when no voxel
    is a target."""
    target = changed_targets(fused, single) if mode == "changed" else fused.labels
    logits = fused_logits[fused.first]
    if not bool((target != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)
