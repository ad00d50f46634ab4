"""From raw pixel values to network input: channel layout and intensity normalisation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from .layout import is_rgb_shape

log = logging.getLogger(__name__)


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """The value range of an integer dtype; (0, 1) for floats and bools."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def to_channels_first(image: np.ndarray, in_channels: int, rgb: bool | None = None) -> np.ndarray:
    """Return a ``(C, H, W)`` float32 array with ``in_channels`` channels.

    A 2D image is grayscale; ``(H, W, 3|4)`` is RGB(A) unless ``rgb`` is False
    (:func:`napari_segen.data.layout.is_rgb_shape`).
    Alpha is dropped; RGB becomes grayscale (luminance) for 1-channel models and
    grayscale is repeated for 3-channel models.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        chw = image[None]
    elif image.ndim == 3 and image.shape[-1] in (3, 4) and is_rgb_shape(image.shape, rgb):
        chw = np.moveaxis(image[..., :3], -1, 0)
    else:
        raise ValueError(
            f"expected a 2D grayscale or (H, W, 3/4) colour image, got shape {image.shape}"
        )
    chw = chw.astype(np.float32, copy=False)
    if chw.shape[0] == in_channels:
        return chw
    if in_channels == 1:  # ITU-R 601 luminance, as skimage.color.rgb2gray
        w = np.array([0.299, 0.587, 0.114], np.float32)[:, None, None]
        return (chw * w).sum(0, keepdims=True)
    if chw.shape[0] == 1:
        return np.repeat(chw, in_channels, axis=0)
    raise ValueError(f"cannot feed a {chw.shape[0]}-channel image to a {in_channels}-channel model")


def normalize_image(
    chw: np.ndarray, norm: Mapping[str, Any], source_dtype: np.dtype | None = None
) -> np.ndarray:
    """Scale intensities to about [0, 1] as the model file's ``normalization`` says.

    Modes: ``percentile`` (``low``/``high`` percentiles of the whole image, robust
    to 8/16-bit and float alike), ``range`` (the source dtype's range, or
    ``min``/``max`` given), ``none``.
    Statistics come from the whole image, so tiles of it are normalised alike.

    NaN-safe: files with NaN or infinite pixels are refused when read
    (:func:`napari_segen.data.image_io.read_image`), but an array handed over in
    memory (a napari layer) may hold them; they are left out of the statistics,
    become the image's lowest finite intensity, and a warning says how many there were.
    """
    mode = norm.get("mode", "percentile")
    x = chw.astype(np.float32, copy=False)
    finite: np.ndarray | None = np.isfinite(x)
    if finite.all():
        finite = None
    else:
        x = _without_nonfinite(x, finite)
    if mode == "none":
        return x
    if mode == "percentile":
        q = [float(norm.get("low", 1.0)), float(norm.get("high", 99.8))]
        values = x if finite is None or not finite.any() else x[finite]
        lo, hi = np.percentile(values, q) if values.size else (0.0, 1.0)
    elif mode == "range":
        if "min" in norm and "max" in norm:
            lo, hi = float(norm["min"]), float(norm["max"])
        else:
            lo, hi = dtype_range(source_dtype if source_dtype is not None else x.dtype)
    else:
        raise ValueError(f"unknown normalization mode {mode!r}")
    scale = float(hi - lo) if hi > lo else 1.0
    return ((x - float(lo)) / scale).astype(np.float32, copy=False)


def _without_nonfinite(x: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """``x`` with its NaN/infinite values set to its lowest finite value (0 if none), warned."""
    bad = x.size - int(np.count_nonzero(finite))
    log.warning(
        "%d NaN or infinite pixel value(s) (%.2g%% of the image) have no intensity: they are "
        "treated as the image's lowest intensity, and their labels are guesses",
        bad,
        100 * bad / x.size,
    )
    fill = float(x[finite].min()) if bad < x.size else 0.0
    return np.where(finite, x, np.float32(fill))
