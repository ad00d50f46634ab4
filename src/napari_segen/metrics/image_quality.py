"""SSIM and PSNR between paired images, the variants everyone else reports (no Qt, no napari).

Both functions wrap :mod:`skimage.metrics` with explicit settings, so the numbers
do not depend on library defaults:

* SSIM is Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, the
  population (not sample) covariance, K1 = 0.01, K2 = 0.03; RGB images are
  scored per channel and averaged.
* PSNR is ``10 * log10(R**2 / MSE)``.

``R``, the data range, is (:func:`data_range_of`, the one rule for the CLI, the
widgets and the synthesis readout):

* as given, when given (``"given"``);
* for integer images, the dtype's range (255 for 8-bit, 65535 for 16-bit;
  ``"dtype"``), unless both images use less than :data:`OBSERVED_FRACTION` of
  it (e.g. values 0-235 stored as uint16): then the range found in the pair,
  max - min over both images (``"observed"``), so SSIM is not silently near 1;
* float images have none: it must be given.

Results state the R used (``data_range``, ``data_range_source``) and say so
in ``data_range_note`` when it was found in the data.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ..utils.generators import Progress, drive

SSIM_HELP = (
    "SSIM (structural similarity, 1 = identical, 0 = unrelated) compares local means, "
    "contrasts and correlations of two images of the same scene. Variant: Wang et al. 2004 "
    "- 11x11 Gaussian window, sigma 1.5, population covariance, K1=0.01, K2=0.03, data range "
    "R = the dtype's range for integer images (255 for 8-bit, 65535 for 16-bit) - unless both "
    "images use less than 1/8 of it (e.g. 0-235 stored as 16-bit): then the range found in the "
    "pair (max - min), stated with the result - or as given (required for float images); "
    "colour images are averaged over channels. Computed with "
    "skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, "
    "use_sample_covariance=False). Other tools give other numbers: skimage's default is a 7x7 "
    "uniform window with sample covariance, torchmetrics infers R from the data unless told, "
    "and Wang's MATLAB ssim.m also downsamples images larger than 256 pixels first."
)
PSNR_HELP = (
    "PSNR (peak signal-to-noise ratio, in dB, higher is better, infinite for identical "
    "images) = 10*log10(R^2 / MSE) with R the data range (as for SSIM: the dtype's range for "
    "integer images, or the range found in the pair when they use less than 1/8 of it; as "
    "given for float images). Each pair is scored on its own; the set value is "
    "the mean over pairs (not the PSNR of the pooled MSE)."
)


def dtype_data_range(dtype: np.dtype) -> float:
    """The data range R of an integer (or bool) dtype: max - min, e.g. 255 for uint8."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return 1.0
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.max) - float(info.min)
    raise ValueError(
        f"images of dtype {dtype} have no fixed range: give the data range explicitly, e.g. "
        "data_range=1.0 for images in [0, 1] or 2.0 for images in [-1, 1]"
    )


#: Integer images whose values all lie within this share of the dtype's range (largest
#: magnitude below ``OBSERVED_FRACTION * dtype max``) are scored on the range found in them.
OBSERVED_FRACTION = 1 / 8


def resolve_data_range(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """The data range R to score ``a`` against ``b`` (see :func:`data_range_of`)."""
    return data_range_of(a, b, data_range)[0]


def data_range_of(
    a: np.ndarray, b: np.ndarray, data_range: float | None = None
) -> tuple[float, str]:
    """``(R, source)`` to score ``a`` against ``b``; source: ``given``, ``dtype`` or ``observed``.

    As given; else the common integer dtype's range, unless both images use less
    than :data:`OBSERVED_FRACTION` of it: then max - min over both images.

    Raises:
        ValueError: for float images without ``data_range``, for integer images of
            different dtypes without ``data_range``, or for a non-positive range.
    """
    if data_range is not None:
        r = float(data_range)
        if not math.isfinite(r) or r <= 0:
            raise ValueError(f"the data range must be a positive number, got {data_range!r}")
        return r, "given"
    for x in (a, b):
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
            raise ValueError(
                f"float images (dtype {x.dtype}) need an explicit data range: give "
                "data_range=1.0 for images in [0, 1], 2.0 for [-1, 1], 255.0 for 0-255 floats"
            )
    if a.dtype != b.dtype:
        raise ValueError(
            f"the images have different dtypes ({a.dtype} and {b.dtype}), so their ranges differ: "
            "convert them to one dtype or give the data range explicitly"
        )
    full = dtype_data_range(a.dtype)
    if a.dtype == bool or not a.size:
        return full, "dtype"
    lo = float(min(a.min(), b.min()))
    hi = float(max(a.max(), b.max()))
    if hi > lo and max(abs(lo), abs(hi)) < OBSERVED_FRACTION * float(np.iinfo(a.dtype).max):
        return hi - lo, "observed"
    return full, "dtype"


def _check_pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Both images as arrays of one shape; returns them and the channel axis (None = gray)."""
    a, b = _as_image(a, "first"), _as_image(b, "second")
    if a.shape != b.shape:
        raise ValueError(
            f"the images differ in shape ({a.shape} and {b.shape}); SSIM and PSNR compare "
            "images of the same scene pixel by pixel, so crop or resize one of them first"
        )
    if min(a.shape[:2]) < 11:
        raise ValueError(
            f"images of {a.shape[0]}x{a.shape[1]} pixels are too small for SSIM's 11x11 "
            "window; use images of at least 11x11 pixels"
        )
    return a, b, (-1 if a.ndim == 3 else None)


def _as_image(x: Any, which: str = "") -> np.ndarray:
    """A 2D grayscale or ``(H, W, 3)`` colour image; ``(H, W, 1)`` is squeezed, alpha dropped."""
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    elif x.ndim == 3 and x.shape[-1] == 4:
        x = x[..., :3]
    if x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3):
        if x.dtype == bool:
            x = x.astype(np.uint8)
        if np.iscomplexobj(x):
            raise ValueError(f"the {which} image is complex-valued; give real-valued images")
        return x
    label = f"the {which} image" if which else "an image"
    raise ValueError(
        f"{label} has shape {x.shape}; expected a 2D grayscale (H, W) or colour (H, W, 3) "
        "image (split stacks into single images first)"
    )


def ssim(a: Any, b: Any, data_range: float | None = None) -> float:
    """SSIM of two images (Wang et al. 2004 settings; see :data:`SSIM_HELP`).

    Args:
        a, b: images of the same shape, ``(H, W)`` grayscale or ``(H, W, 3)`` colour
            (``(H, W, 4)`` loses its alpha), any dtype.
        data_range: R; defaults to the dtype's range for integer images and must be
            given for float images.

    Returns:
        The mean SSIM, at most 1.0 (identical images).
    """
    a, b, channel_axis = _check_pair(a, b)
    r = resolve_data_range(a, b, data_range)
    value = structural_similarity(
        a.astype(np.float64),
        b.astype(np.float64),
        data_range=r,
        channel_axis=channel_axis,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return float(value)


def psnr(a: Any, b: Any, data_range: float | None = None) -> float:
    """PSNR in dB of ``b`` against the reference ``a``: ``10*log10(R^2/MSE)`` (inf if identical).

    Args:
        a, b: images of the same shape, ``(H, W)`` or ``(H, W, 3)``, any dtype.
        data_range: R; defaults to the dtype's range for integer images and must be
            given for float images.
    """
    a, b, _ = _check_pair(a, b)
    r = resolve_data_range(a, b, data_range)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if np.array_equal(a64, b64):
        return math.inf
    return float(peak_signal_noise_ratio(a64, b64, data_range=r))


def split_planes(image: Any) -> list[np.ndarray]:
    """The 2D (or 2D colour) images in ``image``: itself, or the planes of a stack.

    ``(H, W)`` and ``(H, W, 1|3|4)`` are single images; ``(N, H, W)`` and
    ``(N, H, W, 1|3|4)`` are stacks of N images.
    """
    x = np.asarray(image)
    if x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3, 4)):
        return [x]
    if x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3, 4)):
        return [x[i] for i in range(x.shape[0])]
    raise ValueError(
        f"cannot read an array of shape {x.shape} as images: expected (H, W), (H, W, 3), "
        "or a stack (N, H, W) / (N, H, W, 3)"
    )


def iter_planes(images: Iterable[Any]) -> Iterator[np.ndarray]:
    """Every single image of an iterable of images and stacks, lazily."""
    for item in images:
        yield from split_planes(item)


def summarize(values: list[float]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` of per-pair values (population std; inf if any value is inf)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(values, np.float64)
    if np.isinf(arr).any():  # identical pairs have an infinite PSNR
        all_inf = bool(np.isinf(arr).all())
        return {"mean": math.inf, "std": 0.0 if all_inf else math.nan, "n": n}
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": n}


def iter_paired_quality(
    reals: Iterable[Any],
    fakes: Iterable[Any],
    data_range: float | None = None,
    total: int | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Generator version of :func:`paired_quality`: yields :class:`Progress`, returns the result.

    ``total`` (the number of pairs, for the progress bar) is taken from
    ``len(reals)`` when it has one.
    """
    if total is None:
        total = len(reals) if hasattr(reals, "__len__") else 0  # type: ignore[arg-type]
    ssims: list[float] = []
    psnrs: list[float] = []
    ranges: list[tuple[float, str, np.dtype, float]] = []
    real_it, fake_it = iter(reals), iter(fakes)
    done = 0
    while True:
        real = next(real_it, None)
        fake = next(fake_it, None)
        if real is None or fake is None:
            if real is not None or fake is not None:
                raise ValueError(
                    f"the sets differ in length: {'more' if real is not None else 'fewer'} "
                    f"real than synthetic images after {done} pair(s); SSIM and PSNR need one "
                    "synthetic image per real image"
                )
            break
        real_planes, fake_planes = split_planes(real), split_planes(fake)
        if len(real_planes) != len(fake_planes):
            raise ValueError(
                f"pair {done + 1}: a stack of {len(real_planes)} image(s) against one of "
                f"{len(fake_planes)}; paired stacks need the same number of images"
            )
        for a, b in zip(real_planes, fake_planes, strict=True):
            try:
                a, b, _ = _check_pair(a, b)
                r, source = data_range_of(a, b, data_range)
                ssims.append(ssim(a, b, r))
                psnrs.append(psnr(a, b, r))
            except ValueError as err:
                raise ValueError(f"pair {done + 1}: {err}") from err
            peak = float(max(np.abs(a).max(), np.abs(b).max())) if source == "observed" else 0.0
            ranges.append((r, source, a.dtype, peak))
        done += 1
        yield Progress(done, max(total, done), f"scored {done} pair(s)")
    if not ssims:
        raise ValueError("no image pairs to score: give at least one real and one synthetic image")
    return {"ssim": summarize(ssims), "psnr": summarize(psnrs), **describe_ranges(ranges)}


def describe_ranges(ranges: list[tuple[float, str, np.dtype, float]]) -> dict[str, Any]:
    """``data_range``, ``data_range_source`` (and ``data_range_note``) of the pairs' ``(R,
    source, dtype, peak)``: one R, or ``{"min", "max"}`` when pairs differ; source
    ``"mixed"`` when they differ in it too."""
    values = sorted({r for r, *_ in ranges})
    sources = sorted({src for _, src, *_ in ranges})
    out: dict[str, Any] = {
        "data_range": values[0] if len(values) == 1 else {"min": values[0], "max": values[-1]},
        "data_range_source": sources[0] if len(sources) == 1 else "mixed",
    }
    observed = [(r, dt, peak) for r, src, dt, peak in ranges if src == "observed"]
    if observed:
        dtype = observed[0][1]
        full = dtype_data_range(dtype)
        peak = max(p for _, _, p in observed)
        found = sorted({r for r, _, _ in observed})
        r_text = f"{found[0]:g}" if len(found) == 1 else f"{found[0]:g} to {found[-1]:g}"
        each = "the pair" if len(ranges) == 1 else "each pair"
        out["data_range_note"] = (
            f"{len(observed)} of {len(ranges)} pair(s) use a small part of the {dtype} range "
            f"(largest value {peak:g} of {full:g}): SSIM and PSNR use the range found in {each} "
            f"(max - min, R = {r_text}), not {full:g}; give a data range to choose another"
        )
    return out


def paired_quality(
    reals: Iterable[Any], fakes: Iterable[Any], data_range: float | None = None
) -> dict[str, Any]:
    """SSIM and PSNR over pairs ``(reals[i], fakes[i])``, as mean, std and count.

    Args:
        reals, fakes: iterables of images (``(H, W)`` or ``(H, W, 3)``, any dtype),
            read lazily, paired in order; stacks ``(N, H, W[, 3])`` count as N pairs.
        data_range: R for every pair; defaults to the integer dtype's range, required
            for float images.

    Returns:
        ``{"ssim": {"mean", "std", "n"}, "psnr": {"mean", "std", "n"}}`` (std is the
        population standard deviation over pairs).
    """
    gen = iter_paired_quality(reals, fakes, data_range)
    return drive(gen)
