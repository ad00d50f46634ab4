"""How realistic a generator's images are: SSIM/PSNR against the real images of the same
masks, FID/KID between the generated and real sets.

The metrics themselves live in :mod:`napari_segen.metrics` (imported lazily);
this module only generates the images and compares them on one intensity
scale: both real and generated images are mapped to [0, 1] with the
generator's own normalisation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.datasets import LabeledImage
from ..data.layout import is_rgb_shape
from ..data.normalize import normalize_image, to_channels_first
from ..models.model_file import LoadedModel
from ..utils.devices import resolve_device
from .generate import generate_tensor, to_unit

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
) -> dict[str, Any]:
    """SSIM, PSNR (paired) and FID/KID (sets) of ``fakes`` against ``reals``.

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
    out: dict[str, Any] = dict(paired_quality(reals, fakes, data_range=data_range))
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
) -> dict[str, Any]:
    """Generate an image for each pair's mask and score it against the pair's real image.

    Use held-out pairs (not seen in training) for an honest readout.
    """
    if not pairs:
        raise ValueError("no image/mask pairs to evaluate the generator on")
    dev = resolve_device(device)
    reals, fakes = [], []
    for i, p in enumerate(pairs):
        mask = np.where(np.asarray(p.mask) < 0, 0, p.mask)
        fake = generate_tensor(
            model,
            mask,
            device=dev,
            stochastic=stochastic,
            tile_size=tile_size,
            seed=None if seed is None else seed + i,
        )
        fakes.append(to_unit(fake))
        reals.append(real_to_unit(p.image, model, rgb=is_rgb_shape(p.image.shape, p.rgb)))
    return image_quality(reals, fakes, fid=fid, device=dev, extractor=extractor)


def format_quality(q: dict[str, Any]) -> str:
    """A few lines for people: SSIM, PSNR, then FID/KID or the labelled feature distance."""
    if "ssim" not in q:
        return q.get("message", "no quality figures")
    s, p = q["ssim"], q["psnr"]
    lines = [
        f"SSIM  {s['mean']:.4f} +/- {s['std']:.4f}  (n={s['n']}, 1 = identical)",
        f"PSNR  {p['mean']:.2f} +/- {p['std']:.2f} dB  (higher is closer)",
    ]
    if q.get("fid") is not None:
        lines.append(f"FID   {q['fid']:.2f}  (lower is better)")
        if q.get("kid_mean") is not None:
            lines.append(f"KID   {q['kid_mean']:.4f} +/- {q['kid_std']:.4f}")
    elif q.get("feature_distance") is not None:
        lines.append(f"{q.get('feature', 'feature distance')}: {q['feature_distance']:.4f}")
        lines.append("      (not FID: comparable only with runs using the same features)")
    for w in q.get("warnings", []) or []:
        lines.append(f"note: {w}")
    return "\n".join(lines)
