"""Segmentation losses: cross-entropy with class weights plus optional soft Dice."""

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
    """``CE(weighted) + dice_weight * (1 - soft Dice)``, both ignoring unannotated pixels."""

    def __init__(
        self, class_weights: Sequence[float] | None = None, dice_weight: float = 0.0
    ) -> None:
        super().__init__()
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", w, persistent=False)
        self.dice_weight = dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not (target != IGNORE_INDEX).any():
            return logits.sum() * 0  # nothing annotated in this batch
        loss = F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target)
        return loss


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the annotated pixels."""
    valid = (target != IGNORE_INDEX).unsqueeze(1).float()
    probs = torch.softmax(logits, 1) * valid
    onehot = F.one_hot(target.clamp_min(0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * inter + 1) / (denom + 1)
    return 1 - dice[present].mean()
