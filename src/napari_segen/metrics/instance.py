"""Object-level scores: average precision over IoU-matched objects, and the EM segmentation metrics.

* **Average precision** as the 2018 Data Science Bowl and cellpose report it: at
  an IoU threshold t, objects are matched one to one (Hungarian matching on IoU,
  pairs below t not allowed) and ``AP(t) = TP / (TP + FP + FN)``.
* **Adapted Rand error** and **variation of information** (split + merge), as in
  the ISBI 2012 challenge and the U-Net paper, from :mod:`skimage.metrics`; the
  ground truth's label 0 (membrane / background) is ignored, as there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.metrics import adapted_rand_error, variation_of_information

AP_THRESHOLDS = (0.5, 0.75)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every ground-truth object with every predicted object (0 = background).

    Returns ``(iou, gt_ids, pred_ids)`` with ``iou[i, j]`` for ``gt_ids[i]``, ``pred_ids[j]``.
    """
    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in size: {gt.size} vs {pred.size}")
    gt_ids, gt_inv = np.unique(gt, return_inverse=True)
    pr_ids, pr_inv = np.unique(pred, return_inverse=True)
    inter = np.zeros((gt_ids.size, pr_ids.size), np.int64)
    np.add.at(inter, (gt_inv, pr_inv), 1)
    area_gt = inter.sum(1, keepdims=True)
    area_pr = inter.sum(0, keepdims=True)
    union = area_gt + area_pr - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape, float), where=union > 0)
    keep_gt, keep_pr = gt_ids > 0, pr_ids > 0
    return iou[np.ix_(keep_gt, keep_pr)], gt_ids[keep_gt], pr_ids[keep_pr]


@dataclass
class ObjectScores:
    """Matched objects over any number of images, per IoU threshold."""

    thresholds: Sequence[float] = AP_THRESHOLDS
    tp: dict[float, int] = field(default_factory=dict)
    fp: dict[float, int] = field(default_factory=dict)
    fn: dict[float, int] = field(default_factory=dict)
    n_true: int = 0
    n_pred: int = 0

    def update(self, gt: np.ndarray, pred: np.ndarray) -> ObjectScores:
        """Match the objects of one image (instance labels, 0 = none) and count."""
        iou, gt_ids, pr_ids = iou_matrix(gt, pred)
        self.n_true += gt_ids.size
        self.n_pred += pr_ids.size
        for t in self.thresholds:
            tp = _matches(iou, t)
            self.tp[t] = self.tp.get(t, 0) + tp
            self.fp[t] = self.fp.get(t, 0) + pr_ids.size - tp
            self.fn[t] = self.fn.get(t, 0) + gt_ids.size - tp
        return self

    def average_precision(self, t: float) -> float:
        """``TP / (TP + FP + FN)`` at IoU threshold ``t`` (NaN with no objects at all)."""
        denom = self.tp.get(t, 0) + self.fp.get(t, 0) + self.fn.get(t, 0)
        return self.tp.get(t, 0) / denom if denom else float("nan")

    def as_dict(self) -> dict:
        out: dict = {"objects_true": self.n_true, "objects_predicted": self.n_pred}
        for t in self.thresholds:
            key = f"{t:.2f}".rstrip("0").rstrip(".")
            out[f"ap@{key}"] = self.average_precision(t)
            out[f"tp@{key}"] = self.tp.get(t, 0)
            out[f"fp@{key}"] = self.fp.get(t, 0)
            out[f"fn@{key}"] = self.fn.get(t, 0)
        return out


def _matches(iou: np.ndarray, threshold: float) -> int:
    """Number of one-to-one matches with IoU >= threshold maximising their count."""
    if iou.size == 0:
        return 0
    ok = iou >= threshold
    if threshold > 0.5:
        # Above 0.5 IoU each object can overlap at most one other that well: no choice to make.
        return int(ok.sum())
    rows, cols = linear_sum_assignment(np.where(ok, 1.0 + iou, 0.0), maximize=True)
    return int(ok[rows, cols].sum())


def average_precision(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = AP_THRESHOLDS
) -> dict[float, float]:
    """AP of one image's predicted objects at each IoU threshold."""
    scores = ObjectScores(tuple(thresholds)).update(gt, pred)
    return {t: scores.average_precision(t) for t in thresholds}


@dataclass
class EMScores:
    """Adapted Rand error and variation of information, averaged over images."""

    rand_error: list[float] = field(default_factory=list)
    voi_split: list[float] = field(default_factory=list)
    voi_merge: list[float] = field(default_factory=list)

    def update(self, gt_regions: np.ndarray, pred_regions: np.ndarray) -> EMScores:
        """Score one image's regions (cells) against the ground truth's (label 0 ignored)."""
        gt = np.asarray(gt_regions).astype(np.int64)
        pr = np.asarray(pred_regions).astype(np.int64)
        if gt.shape != pr.shape:
            raise ValueError(
                f"ground truth and prediction differ in shape: {gt.shape} vs {pr.shape}"
            )
        err, _, _ = adapted_rand_error(gt, pr, ignore_labels=(0,))
        split, merge = variation_of_information(gt, pr, ignore_labels=(0,))
        self.rand_error.append(float(err))
        self.voi_split.append(float(split))
        self.voi_merge.append(float(merge))
        return self

    def as_dict(self) -> dict:
        def mean(v: list[float]) -> float:
            return float(np.mean(v)) if v else float("nan")

        return {
            "rand_error": mean(self.rand_error),
            "voi_split": mean(self.voi_split),
            "voi_merge": mean(self.voi_merge),
            "voi": mean(self.voi_split) + mean(self.voi_merge),
        }
