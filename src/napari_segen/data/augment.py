"""Joint image + mask augmentation for segmentation training.

Geometric transforms (flips, 90-degree rotations, elastic deformation) move
image and mask together (flips and rotations are the crop sampler's, see
:func:`napari_segen.data.sampler.flip_rotate`); the mask is resampled
nearest-neighbour and pixels that come from outside the image become
"unannotated". Intensity jitter touches the image only. Elastic deformation is torchvision's
``transforms.v2.ElasticTransform``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .conventions import IGNORE_INDEX


@dataclass
class AugmentConfig:
    """Which augmentations to apply and how strongly.

    Attributes:
        flips: random horizontal and vertical flips.
        rot90: random multiples of 90-degree rotation (square crops only).
        intensity: strength of brightness/contrast/gamma jitter (0 turns it off).
        elastic_p: probability of an elastic deformation per sample.
        elastic_alpha: displacement magnitude in pixels.
        elastic_sigma: smoothness of the displacement field.
    """

    flips: bool = True
    rot90: bool = True
    intensity: float = 0.1
    elastic_p: float = 0.3
    elastic_alpha: float = 30.0
    elastic_sigma: float = 5.0


def deform_and_jitter(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """The elastic deformation (image and mask) and intensity jitter (image) of ``cfg``.

    With a per-pixel ``weight`` map, it is deformed with the mask (nearest
    neighbour, 0 where the mask becomes unannotated) and ``(x, y, weight)`` is returned.
    """
    side = min(x.shape[-2:])
    if cfg.elastic_p > 0 and side >= 8 and torch.rand(()) < cfg.elastic_p:
        # torchvision blurs the displacement with a (8 sigma + 1) px kernel padded by
        # reflection, which needs 4 sigma < the crop side: small crops get a smaller sigma.
        sigma = min(cfg.elastic_sigma, (side - 1) / 4.5)
        t = v2.ElasticTransform(
            alpha=cfg.elastic_alpha * sigma / cfg.elastic_sigma,
            sigma=sigma,
            fill={tv_tensors.Image: 0.0, tv_tensors.Mask: IGNORE_INDEX},
        )
        if weight is None:
            x, y = t(tv_tensors.Image(x), tv_tensors.Mask(y))
        else:
            x, y, weight = t(tv_tensors.Image(x), tv_tensors.Mask(y), tv_tensors.Mask(weight))
            weight = torch.where(y == IGNORE_INDEX, 0.0, weight.as_subclass(torch.Tensor))
        x, y = x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)
    if cfg.intensity > 0:
        s = cfg.intensity
        contrast = 1 + (torch.rand(()) * 2 - 1) * s
        brightness = (torch.rand(()) * 2 - 1) * s
        gamma = torch.exp((torch.rand(()) * 2 - 1) * s)
        mean = x.mean()
        x = (x - mean) * contrast + mean + brightness
        x = x.clamp_min(0) ** gamma
    if weight is not None:
        return x.contiguous(), y.contiguous(), weight.contiguous()
    return x.contiguous(), y.contiguous()
