"""Random square crops of (image, mask) pairs, flipped and rotated together.

The one crop sampler of both trainers: the segmentation dataset adds its
intensity and elastic augmentation on top (:mod:`napari_segen.data.augment`),
the pix2pix trainer uses the crops as they come.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

Pair = tuple[torch.Tensor, torch.Tensor]


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

    Args:
        images: float ``(C, H, W)`` tensors.
        masks: int64 ``(H, W)`` tensors, one per image.
        crop_size: square crop edge.
        flips: random horizontal and vertical flips.
        rot90: random multiples of 90-degree rotation.
        weights: how often each image is picked (default: its area).
        mask_fill: mask value of padded pixels (None: mirrored like the image).
        prefer_annotated: retry a few crops that hold no annotated pixel (mask < 0 only).
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
    ) -> None:
        if len(images) != len(masks) or not images:
            raise ValueError("give one mask per image, and at least one image")
        if crop_size < 1:
            raise ValueError(f"the crop size must be at least 1, got {crop_size}")
        self.images, self.masks = list(images), list(masks)
        self.crop_size = crop_size
        self.flips, self.rot90 = flips, rot90
        self.mask_fill = mask_fill
        self.prefer_annotated = prefer_annotated
        w = np.asarray(weights if weights is not None else [m.numel() for m in masks], float)
        self.weights = torch.from_numpy(w / w.sum())

    def __len__(self) -> int:
        return len(self.images)

    def padded(self, i: int) -> Pair:
        """Image and mask ``i``, padded to at least the crop size."""
        x, y = self.images[i], self.masks[i]
        h, w = y.shape
        ph, pw = max(self.crop_size - h, 0), max(self.crop_size - w, 0)
        if not (ph or pw):
            return x, y
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x[None], (0, pw, 0, ph), mode=mode)[0]
        if self.mask_fill is None:
            y = F.pad(y[None, None].float(), (0, pw, 0, ph), mode=mode)[0, 0].long()
        else:
            y = F.pad(y, (0, pw, 0, ph), value=self.mask_fill)
        return x, y

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

    def sample(self, generator: torch.Generator | None = None) -> Pair:
        """One random crop of an image picked by weight, flipped and rotated with its mask."""
        g = generator
        i = int(torch.multinomial(self.weights, 1, generator=g)) if len(self) > 1 else 0
        x, y = self.padded(i)
        s = self.crop_size
        h, w = y.shape
        for _ in range(10 if self.prefer_annotated else 1):
            top = int(torch.randint(0, h - s + 1, (), generator=g))
            left = int(torch.randint(0, w - s + 1, (), generator=g))
            yc = y[top : top + s, left : left + s]
            if (yc >= 0).any():
                break
        x = x[:, top : top + s, left : left + s]
        return flip_rotate(x, yc, self.flips, self.rot90, g)

    def batch(self, n: int, generator: torch.Generator | None = None) -> Pair:
        """``n`` random crops stacked: ``(n, C, s, s)`` images and ``(n, s, s)`` masks."""
        crops = [self.sample(generator) for _ in range(n)]
        xs = torch.stack([c[0] for c in crops]).contiguous()
        return xs, torch.stack([c[1] for c in crops]).contiguous()


def flip_rotate(
    x: torch.Tensor,
    y: torch.Tensor,
    flips: bool = True,
    rot90: bool = True,
    generator: torch.Generator | None = None,
) -> Pair:
    """The same random flips and 90-degree rotation (square crops only) of image and mask."""
    g = generator
    if flips:
        if torch.rand((), generator=g) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if torch.rand((), generator=g) < 0.5:
            x, y = x.flip(-2), y.flip(-2)
    if rot90 and x.shape[-1] == x.shape[-2]:
        k = int(torch.randint(0, 4, (), generator=g))
        if k:
            x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
    return x, y
