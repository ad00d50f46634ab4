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
        crop_p: probability of a multi-scale crop: a random window covering a
            fraction of the mask's edge drawn from ``crop_scales``, resized back
            to the full size (nearest-neighbour), so structures appear larger
            than in any real mask. 0 turns it off.
        crop_scales: the edge fractions a multi-scale crop picks from.
        cutpaste_p: probability of a cut-and-paste: a random rectangle of
            another source mask pasted into this one, so layouts that no single
            real mask has appear. 0 turns it off (it needs several source masks).
        cutpaste_size: (min, max) edge of the pasted rectangle as a fraction of
            the mask's edge.

    The mixing options (``crop_p``, ``cutpaste_p``) are off by default, so a
    seed gives the same masks it gave before they existed.
    """

    flips: bool = True
    rot90: bool = True
    scale_range: tuple[float, float] = (0.8, 1.25)
    elastic_alpha: float = 20.0
    elastic_sigma: float = 8.0
    elastic_p: float = 0.7
    crop_p: float = 0.0
    crop_scales: tuple[float, ...] = (0.5, 0.75)
    cutpaste_p: float = 0.0
    cutpaste_size: tuple[float, float] = (0.2, 0.5)

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(
                f"scale range must be two positive numbers, smallest first, got {self.scale_range}"
            )
        for name in ("elastic_p", "crop_p", "cutpaste_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability (0 to 1), got {getattr(self, name)}")
        if not self.crop_scales or not all(0 < c <= 1 for c in self.crop_scales):
            raise ValueError(
                f"crop scales are fractions of the mask's edge (0 < c <= 1), got {self.crop_scales}"
            )
        lo, hi = self.cutpaste_size
        if not 0 < lo <= hi <= 1:
            raise ValueError(
                "the cut-and-paste size is two fractions of the mask's edge, smallest first "
                f"(0 < min <= max <= 1), got {self.cutpaste_size}"
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


def multiscale_crop(
    mask: np.ndarray, rng: np.random.Generator, scales: Sequence[float] = (0.5, 0.75)
) -> np.ndarray:
    """A random window of edge ``scale * edge`` (scale picked from ``scales``), resized back.

    Nearest-neighbour, so the result holds only the source's values.
    """
    h, w = mask.shape
    scale = float(scales[int(rng.integers(0, len(scales)))])
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = mask[top : top + ch, left : left + cw]
    rows = np.minimum((np.arange(h) * ch) // h, ch - 1)
    cols = np.minimum((np.arange(w) * cw) // w, cw - 1)
    return np.ascontiguousarray(crop[rows[:, None], cols[None, :]])


def cut_paste(
    mask: np.ndarray,
    donor: np.ndarray,
    rng: np.random.Generator,
    size: tuple[float, float] = (0.2, 0.5),
) -> np.ndarray:
    """``mask`` with a random rectangle of ``donor`` pasted in (both 2D class maps).

    The rectangle's edges are fractions (drawn from ``size``) of the smaller of
    the two masks' edges; it is taken from a random place in ``donor`` and put at
    a random place in ``mask``.
    """
    out = np.array(mask, copy=True)
    hh, ww = min(mask.shape[0], donor.shape[0]), min(mask.shape[1], donor.shape[1])
    ph = max(1, round(hh * rng.uniform(*size)))
    pw = max(1, round(ww * rng.uniform(*size)))
    sy = int(rng.integers(0, donor.shape[0] - ph + 1))
    sx = int(rng.integers(0, donor.shape[1] - pw + 1))
    ty = int(rng.integers(0, mask.shape[0] - ph + 1))
    tx = int(rng.integers(0, mask.shape[1] - pw + 1))
    out[ty : ty + ph, tx : tx + pw] = donor[sy : sy + ph, sx : sx + pw]
    return out


def random_mask_transform(
    mask: np.ndarray,
    rng: np.random.Generator,
    config: MaskTransformConfig | None = None,
    out_shape: tuple[int, int] | None = None,
    donor: np.ndarray | None = None,
) -> np.ndarray:
    """One random transform of a 2D integer ``mask``; classes stay exactly those of the source.

    With ``donor`` (another source mask) and ``config.cutpaste_p > 0`` the
    result may also hold a rectangle of the donor's classes.

    Args:
        mask: ``(H, W)`` class indices (negative values, e.g. unannotated, are kept as they are).
        rng: the random generator (pass a seeded one for reproducible masks).
        config: which transforms to apply.
        out_shape: shape of the result (default: the source's shape); scaled
            masks are cropped randomly or padded by mirroring to fit.
        donor: another mask for cut-and-paste (see :class:`MaskTransformConfig`).
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
    # Mixing first, so the geometric transforms below also apply to the mixed layout.
    # Random numbers are drawn only for options that are on (old seeds, same masks).
    if cfg.cutpaste_p > 0 and donor is not None and rng.random() < cfg.cutpaste_p:
        donor = np.asarray(donor)
        if donor.ndim != 2:
            raise ValueError(f"the donor mask must be a 2D class map, got shape {donor.shape}")
        out = cut_paste(out, donor.astype(mask.dtype, copy=False), rng, cfg.cutpaste_size)
    if cfg.crop_p > 0 and rng.random() < cfg.crop_p:
        out = multiscale_crop(out, rng, cfg.crop_scales)
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

    Yields ``(source index, new mask)``. With ``config.cutpaste_p > 0`` and
    several masks, each transform gets a random other source mask as its donor.
    """
    if not masks:
        raise ValueError("no masks to transform: give at least one label map")
    if n < 0:
        raise ValueError(f"the number of masks must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    mixing = config is not None and config.cutpaste_p > 0 and len(masks) > 1
    for i in range(n):
        src = i % len(masks)
        donor = None
        if mixing:
            other = int(rng.integers(0, len(masks) - 1))
            donor = masks[other + (other >= src)]
        yield src, random_mask_transform(masks[src], rng, config, out_shape, donor)
