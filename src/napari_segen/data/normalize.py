"""From raw pixel values to network input: channel layout and intensity normalisation."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class NormStats:
    """The whole-image statistics :func:`normalize_image` needs, computed once.

    ``lo``/``hi`` map to 0/1; ``fill`` replaces NaN/infinite pixels (the image's
    lowest finite intensity). Block-wise prediction computes them over the whole
    image (:func:`stats_from_counts`) and normalises every block with them, so a
    block equals the same pixels normalised in memory.
    """

    lo: float
    hi: float
    fill: float = 0.0


def normalize_image(
    chw: np.ndarray,
    norm: Mapping[str, Any],
    source_dtype: np.dtype | None = None,
    stats: NormStats | None = None,
) -> np.ndarray:
    """Scale intensities to about [0, 1] as the model file's ``normalization`` says.

    Modes: ``percentile`` (``low``/``high`` percentiles of the whole image, robust
    to 8/16-bit and float alike), ``range`` (the source dtype's range, or
    ``min``/``max`` given), ``none``.
    Statistics come from the whole image, so tiles of it are normalised alike;
    ``stats`` gives them precomputed (a block of a bigger image), and then only
    the arithmetic runs on ``chw``.

    NaN-safe: files with NaN or infinite pixels are refused when read
    (:func:`napari_segen.data.image_io.read_image`), but an array handed over in
    memory (a napari layer) may hold them; they are left out of the statistics,
    become the image's lowest finite intensity, and a warning says how many there were.
    """
    mode = norm.get("mode", "percentile")
    if mode not in ("none", "percentile", "range"):
        raise ValueError(f"unknown normalization mode {mode!r}")
    x = chw.astype(np.float32, copy=False)
    finite: np.ndarray | None = np.isfinite(x)
    if finite.all():
        finite = None
    elif stats is not None:
        x = np.where(finite, x, np.float32(stats.fill))
    else:
        x = _without_nonfinite(x, finite)
    if mode == "none":
        return x
    if stats is None:
        stats = normalization_stats(x, norm, source_dtype, finite)
    lo, hi = stats.lo, stats.hi
    scale = float(hi - lo) if hi > lo else 1.0
    return ((x - float(lo)) / scale).astype(np.float32, copy=False)


def normalization_stats(
    x: np.ndarray,
    norm: Mapping[str, Any],
    source_dtype: np.dtype | None = None,
    finite: np.ndarray | None = None,
) -> NormStats:
    """The statistics of a whole float32 image ``x`` (``finite``: its finite pixels, None = all)."""
    mode = norm.get("mode", "percentile")
    values = x if finite is None or not finite.any() else x[finite]
    fill = float(values.min()) if values.size and finite is not None and finite.any() else 0.0
    if mode == "percentile":
        lo, hi = np.percentile(values, percentiles(norm)) if values.size else (0.0, 1.0)
    elif mode == "range":
        lo, hi = value_range(norm, source_dtype if source_dtype is not None else x.dtype)
    else:
        lo, hi = 0.0, 1.0
    return NormStats(float(lo), float(hi), fill)


def percentiles(norm: Mapping[str, Any]) -> list[float]:
    """The ``[low, high]`` percentiles of a ``percentile`` normalisation."""
    return [float(norm.get("low", 1.0)), float(norm.get("high", 99.8))]


def value_range(norm: Mapping[str, Any], source_dtype: np.dtype) -> tuple[float, float]:
    """``lo``/``hi`` of a ``range`` normalisation: given ``min``/``max``, else the dtype's range."""
    if "min" in norm and "max" in norm:
        return float(norm["min"]), float(norm["max"])
    return dtype_range(source_dtype)


def stats_from_counts(
    values: np.ndarray,
    counts: np.ndarray,
    norm: Mapping[str, Any],
    source_dtype: np.dtype,
    fill: float = 0.0,
) -> NormStats:
    """The statistics of an image given as a histogram: sorted distinct finite float32
    ``values`` and how often each occurs (over all channels).

    Percentiles follow ``np.percentile``'s default (linear) rule step by step, so an
    integer image counted block by block gets the very ``lo``/``hi`` it gets in memory.
    """
    mode = norm.get("mode", "percentile")
    if mode == "range":
        return NormStats(*value_range(norm, source_dtype), fill)
    if mode != "percentile" or not len(values):
        return NormStats(0.0, 1.0, fill)
    values = np.asarray(values, np.float32)
    cum = np.cumsum(np.asarray(counts, np.int64))
    n = int(cum[-1])
    q = np.true_divide(np.asarray(percentiles(norm), np.float64), 100)
    virtual = (n - 1) * q  # numpy's default ('linear') method
    prev = np.floor(virtual)
    nxt = prev + 1
    prev[virtual >= n - 1] = n - 1
    nxt[virtual >= n - 1] = n - 1
    prev[virtual < 0] = 0
    nxt[virtual < 0] = 0
    gamma = virtual - prev
    a = values[np.searchsorted(cum, prev.astype(np.int64), side="right")]
    b = values[np.searchsorted(cum, nxt.astype(np.int64), side="right")]
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return NormStats(float(out[0]), float(out[1]), fill)


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
