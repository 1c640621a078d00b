"""Confusion matrix and IoU, with the conventions of the official SemanticKITTI evaluator
(`semantic-kitti-api`, `auxiliary/np_ioueval.py`): rows are predictions, columns ground
truth; points whose ground truth is 0 are dropped; IoU_c = TP / (TP + FP + FN + 1e-15);
mIoU is the mean over the 19 classes (a class absent from both counts as 0, as there)."""

from __future__ import annotations

import numpy as np
import torch

from m2skd.common.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, class_ids


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Arg-max over the 19 real classes: 'unlabelled' (train id 0) is never a useful prediction."""
    return logits[:, IGNORE_INDEX + 1:].argmax(dim=1) + IGNORE_INDEX + 1


class Confusion:
    def __init__(self, n_classes: int = NUM_CLASSES) -> None:
        self.n = n_classes
        self.matrix = np.zeros((n_classes, n_classes), np.int64)

    def add(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        pred = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred, np.int64).ravel()
        gt = np.asarray(gt.cpu() if isinstance(gt, torch.Tensor) else gt, np.int64).ravel()
        if pred.shape != gt.shape:
            raise ValueError(f"{len(pred)} predictions for {len(gt)} labels")
        self.matrix += np.bincount(pred * self.n + gt, minlength=self.n * self.n).reshape(self.n, self.n)

    def iou(self) -> np.ndarray:
        conf = self.matrix.copy()
        conf[:, IGNORE_INDEX] = 0
        tp = np.diag(conf).astype(np.float64)
        fp = conf.sum(axis=1) - tp
        fn = conf.sum(axis=0) - tp
        return tp / (tp + fp + fn + 1e-15)

    def summary(self, hard_classes: tuple[str, ...]) -> dict:
        iou = self.iou()
        hard = list(class_ids(hard_classes))
        scored = [c for c in range(self.n) if c != IGNORE_INDEX]
        return {
            "miou": float(iou[scored].mean()),
            "hard_miou": float(iou[hard].mean()),
            "iou": {CLASS_NAMES[c]: float(iou[c]) for c in scored},
            "points": int(self.matrix[:, scored].sum()),
        }
