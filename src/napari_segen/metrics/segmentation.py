"""Segmentation scores from a confusion matrix: per-class IoU and Dice, pixel accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SegmentationScores:
    """Scores accumulated over any number of (prediction, target) pairs.

    Pixels whose target is not a class (unannotated:
    :data:`~napari_segen.data.conventions.IGNORE_INDEX`) are not counted.
    """

    num_classes: int
    confusion: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> SegmentationScores:
        pred = np.asarray(pred).ravel().astype(np.int64)
        target = np.asarray(target).ravel().astype(np.int64)
        if pred.shape != target.shape:
            raise ValueError(f"prediction and target differ in size: {pred.size} vs {target.size}")
        keep = (target >= 0) & (target < self.num_classes)
        idx = target[keep] * self.num_classes + np.clip(pred[keep], 0, self.num_classes - 1)
        self.confusion += np.bincount(idx, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )
        return self

    @property
    def iou(self) -> np.ndarray:
        tp = np.diag(self.confusion).astype(float)
        denom = self.confusion.sum(0) + self.confusion.sum(1) - tp
        return np.divide(tp, denom, out=np.full_like(tp, np.nan), where=denom > 0)

    @property
    def dice(self) -> np.ndarray:
        tp = np.diag(self.confusion).astype(float)
        denom = self.confusion.sum(0) + self.confusion.sum(1)
        return np.divide(2 * tp, denom, out=np.full_like(tp, np.nan), where=denom > 0)

    @property
    def accuracy(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else float("nan")

    def as_dict(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(i) for i in range(self.num_classes)]
        return {
            "pixel_accuracy": self.accuracy,
            "per_class": {
                n: {"iou": float(i), "dice": float(d)}
                for n, i, d in zip(names, self.iou, self.dice, strict=False)
            },
            "mean_iou": float(np.nanmean(self.iou))
            if np.any(~np.isnan(self.iou))
            else float("nan"),
            "mean_dice": float(np.nanmean(self.dice))
            if np.any(~np.isnan(self.dice))
            else float("nan"),
        }


def segmentation_scores(
    pred: np.ndarray, target: np.ndarray, num_classes: int
) -> SegmentationScores:
    """Scores of one prediction against its target."""
    return SegmentationScores(num_classes).update(pred, target)
