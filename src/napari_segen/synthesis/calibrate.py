"""Calibrate a noise generator's texture strength against a flat painting of the mask.

A generator trained with per-layer noise draws its images at a texture strength
(:func:`~napari_segen.synthesis.generate.generate_tensor`'s ``noise_strength``):
1 is the noise as trained, 0 its noise-free drawing. Less noise gives a higher
SSIM against the real image, more noise a more realistic texture. The honest
bar for both is the trivial mapping that paints each class with its mean
intensity: a generator worth using beats it on SSIM *and* on a set distance
(FID, or the labelled feature distance without the Inception weights).

:func:`iter_calibrate_noise_strength` scores a grid of strengths on held-out
pairs against that painting and chooses the strength with the widest margin
over it on the worse of the two scores (a strength at the edge of the winning
range is the first to lose on new images); :func:`recommended_noise_strength`
reads the choice recorded in a generator file, which generation uses when no
strength is given.

No Qt, no napari.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.datasets import LabeledImage
from ..models.model_file import LoadedModel, ModelFileError, ModelSpec, read_spec
from ..utils.devices import resolve_device
from ..utils.generators import Progress
from ..utils.jsonsafe import json_safe

__all__ = [
    "MAX_RECOMMENDED_STRENGTH",
    "STRENGTH_GRID",
    "NoiseCalibration",
    "class_mean_painting",
    "file_noise_strength",
    "half_crops",
    "has_noise_maps",
    "iter_calibrate_noise_strength",
    "recommended_noise_strength",
    "score_images",
    "worst_margin",
]

#: The texture strengths tried: 0 to 1 in steps of 1/16.
STRENGTH_GRID: tuple[float, ...] = tuple(i / 16 for i in range(17))
#: Largest texture strength: given to generation, or recorded in a model file (a larger
#: recorded one reads as 1).
MAX_RECOMMENDED_STRENGTH = 4.0


def has_noise_maps(model: LoadedModel) -> bool:
    """Whether ``model`` is a generator with per-layer noise maps (a texture strength)."""
    noise = getattr(model.module, "noise", None)
    if isinstance(noise, bool):
        return noise
    return model.spec.arch_kwargs.get("noise") is True


def class_mean_painting(
    fit_pairs: Sequence[LabeledImage], masks: Sequence[np.ndarray], model: LoadedModel
) -> list[np.ndarray]:
    """Each mask painted with its classes' mean intensities over ``fit_pairs``.

    Intensities are on the generator's [0, 1] scale
    (:func:`~napari_segen.synthesis.quality.real_to_unit`); unannotated (negative)
    pixels of ``fit_pairs`` are ignored, those of ``masks`` painted as class 0.
    Returns float32 ``(H, W)`` images, ``(H, W, 3)`` for a colour generator.
    """
    from .quality import real_to_unit

    k = model.spec.num_classes
    channels = model.spec.in_channels
    sums, counts = np.zeros((k, channels)), np.zeros(k)
    for p in fit_pairs:
        unit = real_to_unit(p.image, model, rgb=p.is_rgb)
        planes = [unit] if unit.ndim == 2 else [unit[..., ch] for ch in range(unit.shape[-1])]
        mask = np.asarray(p.mask)
        for c in range(k):
            sel = mask == c
            for ch, plane in enumerate(planes):
                sums[c, ch] += plane[sel].sum()
            counts[c] += sel.sum()
    means = sums / np.maximum(counts, 1)[:, None]
    if channels == 1:
        means = means[:, 0]
    return [means[np.clip(np.asarray(m), 0, k - 1)].astype(np.float32) for m in masks]


def half_crops(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The four half-size quarter crops of each image (a set distance needs more samples
    than a few whole images give)."""
    out = []
    for im in images:
        h, w = im.shape[:2]
        for y in (0, h // 2):
            for x in (0, w // 2):
                out.append(im[y : y + h // 2, x : x + w // 2])
    return out


def score_images(
    reals: Sequence[np.ndarray],
    fakes: Sequence[np.ndarray],
    *,
    device: str | torch.device = "auto",
    extractor: Any = None,
) -> dict[str, Any]:
    """Paired SSIM/PSNR (data range 1) and the set distance of the half crops of two
    [0, 1] image lists; ``distance`` is FID when the Inception weights are installed,
    else the labelled feature distance (``feature`` names it)."""
    from ..metrics.fid import set_distance
    from ..metrics.image_quality import paired_quality

    q = paired_quality(reals, fakes, data_range=1.0)
    d = set_distance(
        half_crops(reals), half_crops(fakes), device=device, extractor=extractor, data_range=1.0
    )
    out = {
        "ssim": q["ssim"]["mean"],
        "ssim_std": q["ssim"]["std"],
        "psnr": q["psnr"]["mean"],
        "psnr_std": q["psnr"]["std"],
        "fid": d.get("fid"),
        "kid_mean": d.get("kid_mean"),
        "feature": d.get("feature"),
        "feature_distance": d.get("feature_distance"),
        "feature_kid_mean": d.get("feature_kid_mean"),
    }
    out["distance"] = out["fid"] if out["fid"] is not None else out["feature_distance"]
    return out


@dataclass
class NoiseCalibration:
    """The texture strength chosen for a noise generator, and the scores behind it.

    Attributes:
        chosen: the recommended strength (1.0, the generator as trained, when no
            strength beats the flat painting on both scores).
        reason: why, in words.
        painted: the class-mean painting's scores (``ssim``, ``distance``...).
        rows: each strength's scores, the same keys.
        distance_name: ``"FID"`` or ``"feature distance"``.
        pairs: the names of the held-out pairs scored.
    """

    chosen: float
    reason: str
    painted: dict[str, Any]
    rows: dict[float, dict[str, Any]] = field(default_factory=dict)
    distance_name: str = "feature distance"
    pairs: list[str] = field(default_factory=list)

    @property
    def beats_painting(self) -> bool:
        """Whether the chosen strength beats the painting on SSIM and the distance."""
        row = self.rows.get(self.chosen)
        return row is not None and _beats(row, self.painted)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (what a model file records as ``noise_calibration``)."""
        return json_safe(
            {
                "chosen": self.chosen,
                "reason": self.reason,
                "painted": self.painted,
                "rows": {f"{k:g}": v for k, v in self.rows.items()},
                "distance_name": self.distance_name,
                "pairs": list(self.pairs),
            }
        )

    def summary(self) -> str:
        """One line: the chosen strength and how it compares with the flat painting."""
        n = f"on {len(self.pairs)} held-out pair{'s' if len(self.pairs) != 1 else ''}"
        p, name = self.painted, self.distance_name
        row = self.rows.get(self.chosen)
        if row is not None and self.beats_painting:
            return (
                f"texture strength x{_short(self.chosen)}: beats the flat painting on SSIM "
                f"({row['ssim']:.3f} vs {p['ssim']:.3f}) and {name} "
                f"({row['distance']:.3g} vs {p['distance']:.3g}) {n}"
            )
        shown = (
            f" (SSIM {row['ssim']:.3f} vs {p['ssim']:.3f}, {name} "
            f"{row['distance']:.3g} vs {p['distance']:.3g})"
            if row is not None
            else ""
        )
        return (
            f"texture strength x{_short(self.chosen)}, the closest: no strength beats the flat "
            f"painting on both SSIM and {name} {n}{shown}"
        )


def _short(strength: float) -> str:
    return f"{round(strength, 2):g}"


def _beats(row: dict[str, Any], painted: dict[str, Any]) -> bool:
    return worst_margin(row, painted) > 0


def worst_margin(row: dict[str, Any], painted: dict[str, Any]) -> float:
    """The smaller of a strength's two relative margins over the painting: SSIM gained and
    distance saved, each as a fraction of the painting's (> 0: it beats it on both)."""
    ssim = (row["ssim"] - painted["ssim"]) / max(abs(painted["ssim"]), 1e-12)
    distance = (painted["distance"] - row["distance"]) / max(abs(painted["distance"]), 1e-12)
    return float(min(ssim, distance))


def iter_calibrate_noise_strength(
    model: LoadedModel,
    fit_pairs: Sequence[LabeledImage],
    held_pairs: Sequence[LabeledImage],
    *,
    strengths: Sequence[float] = STRENGTH_GRID,
    device: str | torch.device = "auto",
    seed: int = 0,
    extractor: Any = None,
) -> Generator[Progress, None, NoiseCalibration]:
    """Choose a noise generator's texture strength on held-out pairs.

    For each strength, held-out mask ``i`` is generated with seed ``seed + i`` (as
    :func:`~napari_segen.synthesis.quality.evaluate_generator` does) and the images
    are scored against the real ones (:func:`score_images`), as is the class-mean
    painting of the same masks (means over ``fit_pairs``,
    :func:`class_mean_painting`). The chosen strength has the widest
    :func:`worst_margin` over the painting on SSIM (higher) and the set distance
    (lower): inside the range that beats it on both when there is one, else the
    one that misses by the least. One :class:`Progress` per strength; stop
    iterating to cancel.

    Raises:
        ValueError: ``model`` has no noise maps, or a set of pairs is empty.
    """
    from .generate import check_generator, check_noise_strength, generate_tensor, to_unit
    from .quality import real_to_unit

    check_generator(model)
    if not has_noise_maps(model):
        raise ValueError(
            f"{model.name} has no noise maps, so it has no texture strength to calibrate"
        )
    if not fit_pairs or not held_pairs:
        raise ValueError("calibrating the texture strength needs training and held-out pairs")
    grid = sorted({check_noise_strength(float(s)) for s in strengths})
    if not grid:
        raise ValueError("give at least one texture strength to calibrate")
    dev = resolve_device(device)
    masks = [np.where(np.asarray(p.mask) < 0, 0, p.mask) for p in held_pairs]
    reals = [real_to_unit(p.image, model, rgb=p.is_rgb) for p in held_pairs]
    painted = score_images(
        reals, class_mean_painting(fit_pairs, masks, model), device=dev, extractor=extractor
    )
    rows: dict[float, dict[str, Any]] = {}
    for n, strength in enumerate(grid, 1):
        fakes = [
            to_unit(generate_tensor(model, m, device=dev, seed=seed + i, noise_strength=strength))
            for i, m in enumerate(masks)
        ]
        rows[strength] = score_images(reals, fakes, device=dev, extractor=extractor)
        yield Progress(n, len(grid), f"texture strength x{strength:g} scored ({n} of {len(grid)})")
    name = "FID" if painted["fid"] is not None else "feature distance"
    # ties go to the stronger texture
    chosen = max(rows, key=lambda s: (worst_margin(rows[s], painted), s))
    if _beats(rows[chosen], painted):
        reason = f"the widest margin over the flat painting on both SSIM and {name}"
    else:
        reason = (
            f"no strength beats the flat painting on both SSIM and {name}; this one misses "
            "by the least"
        )
    return NoiseCalibration(
        chosen=chosen, reason=reason, painted=painted, rows=rows, distance_name=name,
        pairs=[p.name for p in held_pairs],
    )  # fmt: skip


def _valid_strength(value: Any) -> float | None:
    """``value`` if it is a strength generation accepts, else None."""
    from .generate import check_noise_strength

    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return check_noise_strength(float(value))
    except ValueError:
        return None


def _recorded(provenance: Any) -> float:
    """The chosen strength in a provenance dict, checked (model files are untrusted)."""
    if not isinstance(provenance, dict):
        return 1.0
    calibration = provenance.get("noise_calibration")
    if not isinstance(calibration, dict):
        return 1.0
    chosen = _valid_strength(calibration.get("chosen"))
    return 1.0 if chosen is None else chosen


def recommended_noise_strength(model: LoadedModel | ModelSpec) -> float:
    """The texture strength recorded when the generator was trained (its
    ``noise_calibration``), else 1.0; a value that is not a number in [0, 4] reads as 1.0."""
    spec = model.spec if isinstance(model, LoadedModel) else model
    return _recorded(getattr(spec, "provenance", None))


def file_noise_strength(path: str | os.PathLike | None) -> float:
    """:func:`recommended_noise_strength` of a generator file, from its description only
    (:func:`~napari_segen.models.model_file.read_spec`: no weights read, cheap enough for a
    GUI thread); 1.0 when there is none or it cannot be read."""
    if path is None or str(path) in ("", "."):
        return 1.0
    try:
        spec = read_spec(path)
    except ModelFileError:
        return 1.0
    return recommended_noise_strength(spec)
