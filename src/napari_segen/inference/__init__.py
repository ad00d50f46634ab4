"""Tiled, blended inference on arrays of any size, dtype and layout."""

from .predict import Prediction, Progress, iter_predict, predict, spatial_layout
from .sliding_window import iter_sliding_window, sliding_window

__all__ = [
    "Prediction",
    "Progress",
    "iter_predict",
    "iter_sliding_window",
    "predict",
    "sliding_window",
    "spatial_layout",
]
