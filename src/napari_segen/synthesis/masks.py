"""New label maps from existing ones: random geometric transforms that keep classes exact.

Every transform resamples nearest-neighbour, so a transformed mask only ever
holds values that were in its source (no blended "in-between" classes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class MaskTransformConfig:
    """Which random transforms make new masks, and how strongly.

    Attributes:
        flips: random horizontal and vertical flips.
        rot90: random multiples of 90 degrees (non-square masks: 0 or 180 only).
        scale_range: (min, max) zoom factor, drawn log-uniformly; (1, 1) turns it off.
        elastic_alpha: elastic displacement magnitude in pixels (0 turns it off).
        elastic_sigma: smoothness (Gaussian sigma, pixels) of the displacement field.
        elastic_p: probability of an elastic deformation.
    """

    flips: bool = True
    rot90: bool = True
    scale_range: tuple[float, float] = (0.8, 1.25)
    elastic_alpha: float = 20.0
    elastic_sigma: float = 8.0
    elastic_p: float = 0.7

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(
                f"scale range must be two positive numbers, smallest first, got {self.scale_range}"
            )


def _fit(mask: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Crop randomly (if larger) or pad by reflection (if smaller) to ``shape``."""
    out = mask
    pads = [(0, 0), (0, 0)]
    for ax in range(2):
        extra = shape[ax] - out.shape[ax]
        if extra > 0:
            before = int(rng.integers(0, extra + 1))
            pads[ax] = (before, extra - before)
    if any(p != (0, 0) for p in pads):
        mode = "symmetric"
        out = np.pad(out, pads, mode=mode)
    top = int(rng.integers(0, out.shape[0] - shape[0] + 1))
    left = int(rng.integers(0, out.shape[1] - shape[1] + 1))
    return out[top : top + shape[0], left : left + shape[1]]


def elastic_deform(
    mask: np.ndarray, alpha: float, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random displacement (Simard et al. 2003), resampled nearest-neighbour."""
    h, w = mask.shape
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect")
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect")
    # Scale so the largest displacement is about ``alpha`` pixels whatever sigma is.
    scale = alpha / max(float(np.abs(np.stack([dy, dx])).max()), 1e-8)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([yy + dy * scale, xx + dx * scale])
    return ndimage.map_coordinates(mask, coords, order=0, mode="mirror")


def random_mask_transform(
    mask: np.ndarray,
    rng: np.random.Generator,
    config: MaskTransformConfig | None = None,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """One random transform of a 2D integer ``mask``; classes stay exactly those of the source.

    Args:
        mask: ``(H, W)`` class indices (negative values, e.g. unannotated, are kept as they are).
        rng: the random generator (pass a seeded one for reproducible masks).
        config: which transforms to apply.
        out_shape: shape of the result (default: the source's shape); scaled
            masks are cropped randomly or padded by mirroring to fit.
    """
    cfg = config or MaskTransformConfig()
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(
            "masks to transform must be 2D integer class maps, "
            f"got {mask.dtype} of shape {mask.shape}"
        )
    shape = tuple(out_shape) if out_shape is not None else mask.shape
    out = mask
    lo, hi = cfg.scale_range
    if hi > lo or lo != 1:
        s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if abs(s - 1) > 1e-3:
            out = ndimage.zoom(out, s, order=0, mode="nearest", grid_mode=True)
    if cfg.rot90:
        k = int(rng.integers(0, 4)) if out.shape[0] == out.shape[1] else 2 * int(rng.integers(0, 2))
        out = np.rot90(out, k)
    if cfg.flips:
        if rng.random() < 0.5:
            out = out[:, ::-1]
        if rng.random() < 0.5:
            out = out[::-1]
    out = _fit(np.ascontiguousarray(out), shape, rng)
    if cfg.elastic_alpha > 0 and rng.random() < cfg.elastic_p:
        out = elastic_deform(out, cfg.elastic_alpha, cfg.elastic_sigma, rng)
    return np.ascontiguousarray(out).astype(mask.dtype, copy=False)


def iter_random_masks(
    masks: Sequence[np.ndarray],
    n: int,
    config: MaskTransformConfig | None = None,
    seed: int | None = 0,
    out_shape: tuple[int, int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """``n`` new masks, each a random transform of a source mask (cycled in order).

    Yields ``(source index, new mask)``.
    """
    if not masks:
        raise ValueError("no masks to transform: give at least one label map")
    if n < 0:
        raise ValueError(f"the number of masks must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    for i in range(n):
        src = i % len(masks)
        yield src, random_mask_transform(masks[src], rng, config, out_shape)
