"""Segmentation losses: cross-entropy with class weights plus optional soft Dice.

Both terms take optional per-pixel weights (``(B, H, W)``, e.g. 5 on the pixels
a user corrected, see :mod:`napari_segen.data.corrections`):

* cross-entropy becomes the weighted mean ``sum(w c_y CE) / sum(w c_y)`` (``c_y``
  the class weight), the same normalisation torch uses for class weights, so
  all-ones weights give exactly the unweighted loss and a weight only says how
  much a pixel counts relative to the others in the batch;
* soft Dice is weighted too: each pixel's share of the intersection and of the
  sums is multiplied by its weight. A corrected thin structure (a membrane
  the model missed) then counts in the overlap term as much as in the
  cross-entropy, instead of being drowned by the untouched pixels.

Weight 0 is the same as :data:`IGNORE_INDEX`: the pixel does not count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.conventions import IGNORE_INDEX


def auto_class_weights(frequencies: np.ndarray) -> list[float]:
    """Inverse square-root frequency weights, mean 1; thin structures (membranes) weigh more."""
    f = np.clip(np.asarray(frequencies, float), 1e-3, None)
    w = 1 / np.sqrt(f)
    return (w / w.mean()).tolist()


class SegmentationLoss(nn.Module):
    """``CE(weighted) + dice_weight * (1 - soft Dice)``, both ignoring unannotated pixels.

    Call it as ``loss(logits, target)`` or ``loss(logits, target, pixel_weight)``
    (see the module docstring for how the weights enter).
    """

    def __init__(
        self, class_weights: Sequence[float] | None = None, dice_weight: float = 0.0
    ) -> None:
        super().__init__()
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", w, persistent=False)
        self.dice_weight = dice_weight

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = logits.float()
        counted = target != IGNORE_INDEX
        if weight is not None:
            weight = weight.float() * counted
            counted = weight > 0
        if not counted.any():
            return logits.sum() * 0  # nothing annotated in this batch
        if weight is None:
            loss = F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX
            )
        else:
            loss = weighted_cross_entropy(logits, target, weight, self.class_weights)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, weight)
        return loss


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum(w * c_y * CE) / sum(w * c_y)`` over the annotated pixels (``w`` per pixel)."""
    ce = F.cross_entropy(
        logits, target, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="none"
    )  # already c_y * CE, 0 where ignored
    w = weight.float() * (target != IGNORE_INDEX)
    cw = class_weights[target.clamp_min(0)] if class_weights is not None else 1.0
    return (ce * w).sum() / (w * cw).sum().clamp_min(1e-12)


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the annotated pixels.

    With per-pixel ``weight``, every pixel's contribution to the intersection and
    to both sums is multiplied by its weight (weight 0: not counted).
    """
    w = (target != IGNORE_INDEX).float()
    if weight is not None:
        w = w * weight.float()
    w = w.unsqueeze(1)
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target.clamp_min(0), logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (w * probs * onehot).sum(dims)
    truth = (w * onehot).sum(dims)
    denom = (w * probs).sum(dims) + truth
    present = truth > 0
    dice = (2 * inter + 1) / (denom + 1)
    return 1 - dice[present].mean()
