"""Tiled, blended inference on arrays of any size, dtype and layout."""

from .predict import Prediction, Progress, iter_predict, predict, spatial_layout

__all__ = ["Prediction", "Progress", "iter_predict", "predict", "spatial_layout"]
