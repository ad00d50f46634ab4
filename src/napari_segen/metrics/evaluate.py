"""Scoring a model, or any segmenter, on held-out image/mask pairs (the trainer's validation too).

:func:`score_segmenter` takes any function that turns an image into labels;
:func:`evaluate_model` binds a model's tiled prediction to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..data.datasets import LabeledImage
from ..inference.predict import predict
from ..models.model_file import LoadedModel
from ..utils.devices import resolve_device
from .segmentation import SegmentationScores

#: ``segment(image, rgb) -> labels``: class index per pixel of the image's spatial shape.
Segmenter = Callable[[np.ndarray, bool], np.ndarray]


def score_segmenter(
    segment: Segmenter, pairs: Sequence[LabeledImage], num_classes: int
) -> SegmentationScores:
    """Segment each pair's image with ``segment`` and score it against the pair's mask."""
    scores = SegmentationScores(num_classes)
    for p in pairs:
        scores.update(segment(p.image, p.is_rgb), p.mask)
    return scores


def fg_dice(scores: SegmentationScores) -> float:
    """Mean Dice over the foreground classes (all classes but 0); the model-selection score."""
    d = scores.dice[1:] if scores.num_classes > 1 else scores.dice
    return float(np.nanmean(d)) if np.any(~np.isnan(d)) else float("nan")


def inverted_masks_warning(
    scores: SegmentationScores, class_names: Sequence[str] | None = None
) -> str | None:
    """A sentence when a two-class model's prediction matches the *swapped* masks far better.

    The usual cause is a mask convention opposite to the model's: ISBI 2012 masks are
    0 = membrane, 255 = interior, while the default model's class 1 is membrane (and a
    plain 0/255 mask reads as 255 -> class 1). The swapped score comes from the same
    confusion matrix (its true-class rows exchanged), so nothing is segmented again.
    Returns None when the masks look right, or for models with other than two classes.
    """
    cm = scores.confusion
    if scores.num_classes != 2 or cm.sum() == 0:
        return None

    def dice1(m: np.ndarray) -> float:
        denom = m[:, 1].sum() + m[1, :].sum()
        return float(2 * m[1, 1] / denom) if denom else float("nan")

    as_given, swapped = dice1(cm), dice1(cm[::-1, :])
    if not np.isfinite(swapped) or swapped < 0.5:
        return None
    if np.isfinite(as_given) and swapped < max(2 * as_given, as_given + 0.3):
        return None
    name = class_names[1] if class_names and len(class_names) > 1 else "class 1"
    return (
        f"the masks look inverted against the model's classes: its {name!r} matches the "
        f"masks' class 0 (Dice {swapped:.3f}) far better than their class 1 "
        f"(Dice {as_given:.3f}); if the masks mark {name} with 0 and the rest with 255, "
        "add --mask-map 0:1,255:0"
    )


def scores_to_metrics(scores: SegmentationScores, class_names: Sequence[str]) -> dict[str, Any]:
    """The scores as a dict (per class, means, accuracy) plus ``foreground_dice``."""
    m = scores.as_dict(list(class_names))
    m["foreground_dice"] = fg_dice(scores)
    return m


def evaluate_model(
    model: LoadedModel, pairs: Sequence[LabeledImage], tile_size: int = 512, device: str = "auto"
) -> SegmentationScores:
    """Segment each pair's image with ``model`` (tiled) and score it against its mask."""
    dev = resolve_device(device)

    def segment(image: np.ndarray, rgb: bool) -> np.ndarray:
        return predict(model, image, rgb=rgb, tile_size=tile_size, device=dev).labels

    return score_segmenter(segment, pairs, model.spec.num_classes)
