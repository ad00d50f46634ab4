"""How realistic a generator's images are: SSIM/PSNR against the real images of the same
masks, FID/KID between the generated and real sets.

The metrics themselves live in :mod:`napari_segen.metrics` (imported lazily).
SSIM and PSNR score the images as a user has them, so ``synth evaluate``, the
Synthesize widget and ``napari-segen metrics`` on the written files give one
number for one pair: the real image as read, the generated one in the training
images' dtype and range (what ``synth generate`` writes), the data range by
:func:`~napari_segen.metrics.image_quality.data_range_of`. (They used to score
both on the generator's [0, 1] scale - the real image percentile-clipped - which
gave another SSIM than ``metrics`` on the same files.) FID/KID compare the sets
on the generator's [0, 1] scale.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.datasets import LabeledImage
from ..data.normalize import normalize_image, to_channels_first
from ..models.model_file import LoadedModel
from ..utils.devices import resolve_device
from .generate import seeded_series, to_output_image, to_unit

log = logging.getLogger(__name__)


def real_to_unit(image: np.ndarray, model: LoadedModel, rgb: bool | None = None) -> np.ndarray:
    """A real image on the generator's [0, 1] scale, ``(H, W)`` or ``(H, W, 3)`` float32."""
    chw = to_channels_first(image, model.spec.in_channels, rgb=rgb)
    chw = np.clip(normalize_image(chw, model.spec.normalization), 0, 1)
    return chw[0] if chw.shape[0] == 1 else np.moveaxis(chw, 0, -1)


def image_quality(
    reals: Sequence[np.ndarray],
    fakes: Sequence[np.ndarray],
    *,
    fid: bool = True,
    data_range: float | None = 1.0,
    device: str | torch.device = "auto",
    extractor: Any = None,
    paired: tuple[Sequence[np.ndarray], Sequence[np.ndarray], float | None] | None = None,
) -> dict[str, Any]:
    """SSIM, PSNR (paired) and FID/KID (sets) of ``fakes`` against ``reals``.

    ``paired``: ``(reals, fakes, data_range)`` to score SSIM/PSNR on instead
    (the images as stored, see the module docstring).

    Returns a flat dict: ``ssim`` and ``psnr`` (each ``{"mean", "std", "n"}``),
    the set-distance fields (``fid``, ``kid_mean``, ``kid_std``, ``feature``...)
    and a ``message``. When the metrics package is missing, only a ``message`` saying so.
    ``extractor`` is passed to :func:`napari_segen.metrics.fid.set_distance`
    (None: Inception when its weights are installed, else a labelled feature distance).
    """
    try:
        from ..metrics.image_quality import paired_quality
    except ImportError as err:
        return {"message": f"image-quality metrics are not available ({err})"}
    a, b, r = paired if paired is not None else (reals, fakes, data_range)
    out: dict[str, Any] = dict(paired_quality(a, b, data_range=r))
    out["n_images"] = len(reals)
    messages = []
    if fid:
        try:
            from ..metrics.fid import set_distance
        except ImportError as err:
            messages.append(f"FID/KID not available ({err})")
        else:
            dist = set_distance(
                reals, fakes, device=device, extractor=extractor, data_range=data_range
            )
            out.update({k: v for k, v in dist.items() if k not in ("ssim", "psnr")})
            if dist.get("message"):
                messages.append(str(dist["message"]))
    ssim, psnr = out["ssim"], out["psnr"]
    head = f"SSIM {ssim['mean']:.3f}, PSNR {psnr['mean']:.2f} dB over {ssim['n']} image(s)"
    out["message"] = "; ".join([head, *messages])
    return out


def evaluate_generator(
    model: LoadedModel,
    pairs: Sequence[LabeledImage],
    *,
    device: str | torch.device = "auto",
    fid: bool = True,
    stochastic: bool = False,
    seed: int | None = 0,
    tile_size: int | None = None,
    extractor: Any = None,
    noise_strength: float | None = None,
) -> dict[str, Any]:
    """Generate an image for each pair's mask and score it against the pair's real image.

    Use held-out pairs (not seen in training) for an honest readout. Mask ``i`` gets
    seed ``seed + i``; ``noise_strength`` scales a noise generator's texture (None: the
    strength calibrated when it was trained, else 1).
    """
    if not pairs:
        raise ValueError("no image/mask pairs to evaluate the generator on")
    dev = resolve_device(device)
    generate_nth = seeded_series(
        model, device=dev, seed=seed, stochastic=stochastic, tile_size=tile_size,
        noise_strength=noise_strength,
    )  # fmt: skip
    reals, fakes, stored_reals, stored_fakes = [], [], [], []
    for i, p in enumerate(pairs):
        fake = generate_nth(i, np.where(np.asarray(p.mask) < 0, 0, p.mask))
        fakes.append(to_unit(fake))
        reals.append(real_to_unit(p.image, model, rgb=p.is_rgb))
        stored_fakes.append(to_output_image(fake, model))
        stored_reals.append(real_as_stored(p.image, model, rgb=p.is_rgb))
    paired = stored_pairs(stored_reals, stored_fakes, reals, fakes, model)
    return image_quality(reals, fakes, fid=fid, device=dev, extractor=extractor, paired=paired)


def real_as_stored(image: np.ndarray, model: LoadedModel, rgb: bool | None = None) -> np.ndarray:
    """The real image in its own dtype, gray or colour as the generator makes them."""
    x = np.asarray(image)
    colour = x.ndim == 3
    if colour == (model.spec.in_channels == 3):
        return x[..., :3] if colour else x
    chw = to_channels_first(x, model.spec.in_channels, rgb=rgb)  # luminance, or gray repeated
    out = chw[0] if chw.shape[0] == 1 else np.moveaxis(chw, 0, -1)
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        return np.clip(np.round(out), info.min, info.max).astype(x.dtype)
    return out.astype(x.dtype)


def stored_pairs(
    stored_reals: list[np.ndarray],
    stored_fakes: list[np.ndarray],
    unit_reals: list[np.ndarray],
    unit_fakes: list[np.ndarray],
    model: LoadedModel,
) -> tuple[list[np.ndarray], list[np.ndarray], float | None]:
    """What SSIM/PSNR score: the stored images with the shared data-range rule (None), float
    ones with the generator's intensity range as R; the [0, 1] images (R = 1) when the real
    images' dtype is not the generator's."""
    dtypes = {a.dtype for a in stored_reals} | {b.dtype for b in stored_fakes}
    if len(dtypes) != 1:
        return unit_reals, unit_fakes, 1.0
    if np.issubdtype(dtypes.pop(), np.integer):
        return stored_reals, stored_fakes, None
    norm = model.spec.normalization
    span = float(norm.get("max", 1.0)) - float(norm.get("min", 0.0))
    return stored_reals, stored_fakes, span if span > 0 else 1.0
