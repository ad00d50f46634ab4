"""Random square crops of (image, mask) pairs, flipped and rotated together.

The one crop sampler of both trainers: the segmentation dataset adds its
intensity and elastic augmentation on top (:mod:`napari_segen.data.augment`),
the pix2pix trainer uses the crops as they come. Per-pixel loss weights
(corrections that count more) ride along as one more mask-like plane: cropped,
padded, flipped and rotated exactly as the mask is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Pair = tuple[torch.Tensor, torch.Tensor]
#: ``(image, mask)``, or ``(image, mask, weight)`` from a sampler given pixel weights.
Crop = tuple[torch.Tensor, ...]


def derive_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for draw ``key`` (epoch, index...) of a run seeded with ``seed``.

    Distinct keys give unrelated streams, so a draw depends on (seed, key) only:
    not on which process, loader worker or resumed run makes it.
    """
    words = np.random.SeedSequence([int(seed), *map(int, key)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


def seeded_generator(seed: int | None, *key: int) -> torch.Generator | None:
    """A CPU generator for draw ``key`` of a seeded run (None when unseeded: the global RNG)."""
    if seed is None:
        return None
    return torch.Generator().manual_seed(derive_seed(seed, *key))


class CropSampler:
    """Random ``crop_size`` squares of ``(C, H, W)`` images and their ``(H, W)`` masks.

    Images smaller than a crop are padded at the bottom and right (mirrored,
    or repeated when too small to mirror). Each crop is flipped and rotated
    by a multiple of 90 degrees as a whole, so image and mask stay aligned.

    With ``pixel_weights``, :meth:`sample` and :meth:`batch` give ``(image,
    mask, weight)``: the weight map goes through the same crop, padding (0
    where the mask is padded with ``mask_fill``, else mirrored like it), flips
    and rotation as the mask.

    Args:
        images: float ``(C, H, W)`` tensors.
        masks: int64 ``(H, W)`` tensors, one per image.
        crop_size: square crop edge.
        flips: random horizontal and vertical flips.
        rot90: random multiples of 90-degree rotation.
        weights: how often each image is picked (default: its area).
        mask_fill: mask value of padded pixels (None: mirrored like the image).
        prefer_annotated: retry a few crops that hold no annotated pixel (mask < 0 only).
        pixel_weights: float ``(H, W)`` per-pixel loss weights, one per image
            (None entries: all 1), or None for none.
    """

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        crop_size: int,
        *,
        flips: bool = True,
        rot90: bool = True,
        weights: Sequence[float] | None = None,
        mask_fill: int | None = None,
        prefer_annotated: bool = False,
        pixel_weights: Sequence[torch.Tensor | None] | None = None,
    ) -> None:
        if len(images) != len(masks) or not images:
            raise ValueError("give one mask per image, and at least one image")
        if pixel_weights is not None and len(pixel_weights) != len(masks):
            raise ValueError("give one pixel-weight map (or None) per image")
        if crop_size < 1:
            raise ValueError(f"the crop size must be at least 1, got {crop_size}")
        self.images, self.masks = list(images), list(masks)
        self.crop_size = crop_size
        self.flips, self.rot90 = flips, rot90
        self.mask_fill = mask_fill
        self.prefer_annotated = prefer_annotated
        w = np.asarray(weights if weights is not None else [m.numel() for m in masks], float)
        self.weights = torch.from_numpy(w / w.sum())
        self.pixel_weights: list[torch.Tensor] | None = None
        if pixel_weights is not None:
            self.pixel_weights = [
                torch.ones(m.shape) if pw is None else pw.float()
                for m, pw in zip(self.masks, pixel_weights, strict=True)
            ]
            for m, pw in zip(self.masks, self.pixel_weights, strict=True):
                if tuple(pw.shape) != tuple(m.shape):
                    raise ValueError(
                        f"a pixel-weight map of shape {tuple(pw.shape)} does not match its "
                        f"mask of shape {tuple(m.shape)}"
                    )

    def __len__(self) -> int:
        return len(self.images)

    def padded(self, i: int) -> Pair:
        """Image and mask ``i``, padded to at least the crop size."""
        x, planes = self._padded(i)
        return x, planes[0]

    def _padded(self, i: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Image ``i`` and its mask-like planes (mask, then pixel weight), padded alike."""
        x, y = self.images[i], self.masks[i]
        planes = [y] if self.pixel_weights is None else [y, self.pixel_weights[i]]
        h, w = y.shape
        ph, pw = max(self.crop_size - h, 0), max(self.crop_size - w, 0)
        if not (ph or pw):
            return x, planes
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x[None], (0, pw, 0, ph), mode=mode)[0]
        if self.mask_fill is None:
            planes = [
                F.pad(p[None, None].float(), (0, pw, 0, ph), mode=mode)[0, 0].to(p.dtype)
                for p in planes
            ]
        else:  # padded pixels are unannotated: weight 0 there
            fills = [self.mask_fill, 0.0][: len(planes)]
            planes = [F.pad(p, (0, pw, 0, ph), value=f) for p, f in zip(planes, fills, strict=True)]
        return x, planes

    def center_crop(self, i: int) -> Pair:
        """The middle crop of image ``i`` (previews), neither flipped nor rotated."""
        x, y = self.padded(i)
        s = self.crop_size
        top, left = (y.shape[0] - s) // 2, (y.shape[1] - s) // 2
        return x[:, top : top + s, left : left + s], y[top : top + s, left : left + s]

    def preview(self, n: int) -> Pair:
        """Centre crops of the first ``n`` images, stacked: ``(N, C, s, s)`` and ``(N, s, s)``."""
        crops = [self.center_crop(i) for i in range(min(n, len(self)))]
        return torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops])

    def sample(self, generator: torch.Generator | None = None) -> Crop:
        """One random crop of an image picked by weight, flipped and rotated with its mask.

        ``(image, mask)``, or ``(image, mask, weight)`` when the sampler has pixel weights.
        """
        g = generator
        i = int(torch.multinomial(self.weights, 1, generator=g)) if len(self) > 1 else 0
        x, planes = self._padded(i)
        s = self.crop_size
        h, w = planes[0].shape
        for _ in range(10 if self.prefer_annotated else 1):
            top = int(torch.randint(0, h - s + 1, (), generator=g))
            left = int(torch.randint(0, w - s + 1, (), generator=g))
            yc = planes[0][top : top + s, left : left + s]
            if (yc >= 0).any():
                break
        crops = [x[:, top : top + s, left : left + s]]
        crops += [p[top : top + s, left : left + s] for p in planes]
        return tuple(flip_rotate_all(crops, self.flips, self.rot90, g))

    def batch(self, n: int, generator: torch.Generator | None = None) -> Crop:
        """``n`` random crops stacked: ``(n, C, s, s)`` images and ``(n, s, s)`` masks
        (and ``(n, s, s)`` weights when the sampler has pixel weights)."""
        crops = [self.sample(generator) for _ in range(n)]
        return tuple(torch.stack([c[k] for c in crops]).contiguous() for k in range(len(crops[0])))


def flip_rotate(
    x: torch.Tensor,
    y: torch.Tensor,
    flips: bool = True,
    rot90: bool = True,
    generator: torch.Generator | None = None,
) -> Pair:
    """The same random flips and 90-degree rotation (square crops only) of image and mask."""
    x, y = flip_rotate_all([x, y], flips, rot90, generator)
    return x, y


def flip_rotate_all(
    tensors: Sequence[torch.Tensor],
    flips: bool = True,
    rot90: bool = True,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """The same random flips and 90-degree rotation of several ``(..., H, W)`` tensors
    (an image, its mask, its pixel weights); the draws are those of :func:`flip_rotate`."""
    g = generator
    out = list(tensors)
    if flips:
        if torch.rand((), generator=g) < 0.5:
            out = [t.flip(-1) for t in out]
        if torch.rand((), generator=g) < 0.5:
            out = [t.flip(-2) for t in out]
    if rot90 and out[0].shape[-1] == out[0].shape[-2]:
        k = int(torch.randint(0, 4, (), generator=g))
        if k:
            out = [torch.rot90(t, k, (-2, -1)) for t in out]
    return out
