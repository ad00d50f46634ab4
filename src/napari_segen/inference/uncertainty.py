"""Where the model is unsure: test-time augmentation, entropy maps, and regions to correct first.

Test-time augmentation (TTA) runs the model on the 8 flips/90-degree rotations
of each tile and averages the class probabilities after undoing the transform;
the average is usually a little more accurate than one pass, and the entropy of
the averaged probabilities marks the pixels the model gets wrong (it is high
where the views disagree or where each view is unsure).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .sliding_window import Predictor

#: The 8 symmetries of the square: (number of 90-degree turns, flip left-right first).
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral_tta(predictor: Predictor) -> Predictor:
    """Wrap a ``(B, C, H, W) -> (B, K, H, W)`` probability predictor into its 8-view average."""

    def averaged(batch: torch.Tensor) -> torch.Tensor:
        total = None
        for k, flip in DIHEDRAL:
            x = batch.flip(-1) if flip else batch
            y = predictor(torch.rot90(x, k, (-2, -1)))
            y = torch.rot90(y, -k, (-2, -1))
            y = y.flip(-1) if flip else y
            total = y.float() if total is None else total + y.float()
        return total / len(DIHEDRAL)

    return averaged


def entropy_map(probabilities: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-pixel entropy of ``(..., K, H, W)`` probabilities, scaled to [0, 1] by ``log K``."""
    p = torch.as_tensor(probabilities, dtype=torch.float32)
    k = p.shape[-3]
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(-3)
    return (h / np.log(max(k, 2))).clamp_(0, 1).numpy()


@dataclass(frozen=True)
class Region:
    """A square tile of the image, ``(y, x)`` its top-left corner, with its mean uncertainty."""

    y: int
    x: int
    size: int
    score: float

    def corners(self) -> np.ndarray:
        """The 4 corners as ``(y, x)`` rows, for a napari Shapes rectangle."""
        y, x, s = self.y, self.x, self.size
        return np.array([[y, x], [y, x + s], [y + s, x + s], [y + s, x]], float)


def rank_regions(uncertainty: np.ndarray, size: int = 128) -> list[Region]:
    """Tiles of ``size`` px covering the image, most uncertain first (edge tiles are clipped)."""
    u = np.asarray(uncertainty, np.float64)
    if u.ndim != 2:
        raise ValueError(f"expected a 2D uncertainty map, got shape {u.shape}")
    if size < 1:
        raise ValueError(f"the region size must be at least 1 px, got {size}")
    regions = []
    for y in range(0, u.shape[0], size):
        for x in range(0, u.shape[1], size):
            tile = u[y : y + size, x : x + size]
            regions.append(Region(y, x, size, float(tile.mean())))
    return sorted(regions, key=lambda r: (-r.score, r.y, r.x))


def next_region(ranked: Iterable[Region], done: Iterable[tuple[int, int]]) -> Region | None:
    """The most uncertain region whose corner is not in ``done`` (None when all are done)."""
    seen = set(done)
    for r in ranked:
        if (r.y, r.x) not in seen:
            return r
    return None


def error_auroc(uncertainty: np.ndarray, wrong: np.ndarray) -> float:
    """How well uncertainty detects wrong pixels: the area under the ROC curve (0.5 = chance).

    Computed from ranks (Mann-Whitney U), so ties count half; NaN when every pixel
    is right or every pixel is wrong.
    """
    u = np.asarray(uncertainty, np.float64).ravel()
    w = np.asarray(wrong, bool).ravel()
    n_pos, n_neg = int(w.sum()), int((~w).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(u)
    return float((ranks[w].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
