"""Training pairs from arrays and folders, and the torch Dataset that crops and augments them."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import AugmentConfig, deform_and_jitter
from .conventions import IGNORE_INDEX
from .files import list_images
from .image_io import ImageReadError, read_image, read_mask
from .layout import is_rgb_shape
from .normalize import normalize_image, to_channels_first
from .sampler import CropSampler, derive_seed

log = logging.getLogger(__name__)

#: How a mask may be named after its image ``a.png``: ``a.*``, ``a_mask.*`` or ``a_labels.*``,
#: in that order.
MASK_NAME_ENDINGS = ("", "_mask", "_labels")


@dataclass
class LabeledImage:
    """One training pair: a raw image and its class-index mask.

    ``mask`` holds class indices, :data:`IGNORE_INDEX` where nothing is annotated.
    ``weight`` (optional) is a float per-pixel loss weight of the mask's shape
    (None: every pixel 1), e.g. more for the pixels a user corrected
    (:func:`~napari_segen.data.corrections.correction_pair`).
    """

    image: np.ndarray
    mask: np.ndarray
    name: str = ""
    rgb: bool | None = None
    weight: np.ndarray | None = None

    def __post_init__(self) -> None:
        spatial = self.image.shape[:2] if self.is_rgb else self.image.shape[-2:]
        if self.image.ndim not in (2, 3) or tuple(self.mask.shape) != tuple(spatial):
            raise ValueError(
                f"{self.name or 'image'}: mask shape {self.mask.shape} does not match "
                f"image shape {self.image.shape}; each mask must cover its image pixel for pixel"
            )
        w = self.weight
        if w is not None and (
            tuple(w.shape) != tuple(self.mask.shape) or not np.all(np.isfinite(w) & (w >= 0))
        ):
            raise ValueError(
                f"{self.name or 'image'}: the pixel weights must be finite, >= 0 and of the "
                f"mask's shape {self.mask.shape} (got shape {w.shape})"
            )

    def rows(self, start: int, stop: int, name: str) -> LabeledImage:
        """Rows ``start:stop`` of the image, mask and pixel weights, as a pair named ``name``."""
        w = None if self.weight is None else self.weight[start:stop]
        return replace(
            self, image=self.image[start:stop], mask=self.mask[start:stop], weight=w, name=name
        )

    @property
    def is_rgb(self) -> bool:
        """Whether the image's last axis is colour (``rgb`` as given, else from its shape)."""
        return is_rgb_shape(self.image.shape, self.rgb)


def image_channels(pairs: Sequence[LabeledImage]) -> int:
    """Channels a model for ``pairs`` takes: 3 when any image is colour, else 1.

    Grey images widen to 3 channels losslessly, colour ones do not narrow to 1.
    """
    return 3 if any(p.is_rgb for p in pairs) else 1


def sparse_to_classes(labels: np.ndarray) -> np.ndarray:
    """Sparse annotation convention: label 0 = not annotated, label k = class k-1."""
    labels = np.asarray(labels).astype(np.int64)
    return np.where(labels == 0, IGNORE_INDEX, labels - 1)


@dataclass(frozen=True)
class FolderFiles:
    """An image folder and a mask folder paired by name, from their listings alone.

    ``pairs``: ``(image, mask)`` files in image order; ``images`` and ``masks``:
    every image file listed in each folder.
    """

    pairs: list[tuple[Path, Path]]
    images: list[Path]
    masks: list[Path]

    @property
    def unpaired(self) -> list[Path]:
        """The images without a mask of their name."""
        paired = {img for img, _ in self.pairs}
        return [p for p in self.images if p not in paired]


def pair_folder_files(images_dir: str | os.PathLike, masks_dir: str | os.PathLike) -> FolderFiles:
    """Pair the files of an image and a mask folder by name, reading no pixel.

    ``a.png`` pairs with the mask ``a.*``, ``a_mask.*`` or ``a_labels.*``
    (:data:`MASK_NAME_ENDINGS`). Raises :class:`ImageReadError` for a missing folder.
    """
    images, masks = list_images(images_dir), list_images(masks_dir)
    by_stem = {p.stem: p for p in masks}
    pairs = []
    for img in images:
        stems = (f"{img.stem}{end}" for end in MASK_NAME_ENDINGS)
        mask = next((by_stem[s] for s in stems if s in by_stem), None)
        if mask is not None:
            pairs.append((img, mask))
    return FolderFiles(pairs, images, masks)


def pairs_from_folders(
    images_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    value_map: Mapping[int, int] | None = None,
    sparse: bool = False,
) -> list[LabeledImage]:
    """Pair images and masks by name (:func:`pair_folder_files`) and read them.

    Images without a mask are skipped with a warning; no pair at all is an error.
    """
    files = pair_folder_files(images_dir, masks_dir)
    pairs = []
    for img_path, mask_path in files.pairs:
        mask = read_mask(mask_path, value_map)
        if sparse:
            mask = sparse_to_classes(mask)
        pairs.append(LabeledImage(read_image(img_path), mask, name=img_path.name))
    skipped = [p.name for p in files.unpaired]
    if skipped:
        log.warning("no mask found for %d image(s): %s", len(skipped), ", ".join(skipped[:5]))
    if not pairs:
        raise ImageReadError(
            f"no image in {images_dir} has a mask of the same name in {masks_dir}; "
            "name masks like their images (a.png -> a.png, a.tif or a_mask.png)"
        )
    return pairs


def split_pairs(
    pairs: Sequence[LabeledImage], val_fraction: float, seed: int = 0
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Split into (train, validation); at least one of each when there are two or more pairs."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {val_fraction}")
    n = len(pairs)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = [pairs[i] for i in sorted(order[:n_val])]
    train = [pairs[i] for i in sorted(order[n_val:])]
    return train, val


def class_frequencies(pairs: Sequence[LabeledImage], num_classes: int) -> np.ndarray:
    """Fraction of annotated pixels of each class."""
    counts = np.zeros(num_classes, np.int64)
    for p in pairs:
        m = p.mask[(p.mask >= 0) & (p.mask < num_classes)]
        counts += np.bincount(m.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1)


class SegmentationDataset(Dataset):
    """Random crops of normalised training pairs, augmented, as ``(x, y)`` tensors
    (``(x, y, weight)`` when any pair has pixel weights; the others weigh 1).

    Crops, flips and rotations come from :class:`~napari_segen.data.sampler.CropSampler`
    (images are picked in proportion to their annotated pixels, crops with
    annotation are preferred, padding is unannotated); elastic deformation and
    intensity jitter from :mod:`napari_segen.data.augment` go on top.

    Args:
        pairs: the training pairs.
        in_channels: channels the model takes.
        normalization: the model's intensity normalisation (see ``normalize_image``).
        crop_size: square crop edge; smaller images are padded (mask padding is ignored).
        samples_per_epoch: dataset length (crops are random, so this sets epoch size).
        augment: augmentation settings, or None for plain crops.
        seed: when given, sample ``index`` of epoch ``e`` is drawn from its own
            generator seeded by ``(seed, e, index)``: crops do not depend on
            which process or loader worker draws them, so a ``DistributedSampler``
            splits an epoch between ranks and a resumed run repeats the same
            crops. None: the global torch RNG.
    """

    def __init__(
        self,
        pairs: Sequence[LabeledImage],
        in_channels: int,
        normalization: Mapping[str, Any],
        crop_size: int = 256,
        samples_per_epoch: int | None = None,
        augment: AugmentConfig | None = None,
        seed: int | None = None,
    ) -> None:
        if not pairs:
            raise ValueError("no training pairs given")
        self.crop_size = crop_size
        self.augment = augment
        self.samples_per_epoch = samples_per_epoch or len(pairs)
        self.seed = seed
        self.epoch = 0
        images, masks, weights = [], [], []
        # A pair listed several times (to be sampled more often) is normalised once.
        made: dict[tuple[int, int, int], tuple] = {}
        for p in pairs:
            key = (id(p.image), id(p.mask), id(p.weight))
            if key not in made:
                chw = to_channels_first(p.image, in_channels, rgb=p.is_rgb)
                chw = normalize_image(chw, normalization, source_dtype=p.image.dtype)
                w = p.weight
                made[key] = (
                    torch.from_numpy(np.ascontiguousarray(chw)),
                    torch.from_numpy(np.asarray(p.mask, np.int64)),
                    None if w is None else torch.from_numpy(np.asarray(w, np.float32)),
                )
            image, mask, weight = made[key]
            images.append(image)
            masks.append(mask)
            weights.append(weight)
        self.weighted = any(w is not None for w in weights)
        # Sample images in proportion to their annotated pixels (sparse strokes weigh less).
        annotated = [max(int((m >= 0).sum()), 1) for m in masks]
        self.sampler = CropSampler(
            images,
            masks,
            crop_size,
            flips=augment is not None and augment.flips,
            rot90=augment is not None and augment.rot90,
            weights=annotated,
            mask_fill=IGNORE_INDEX,
            prefer_annotated=True,
            pixel_weights=weights if self.weighted else None,
        )

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops are drawn (with ``seed``: each epoch its own crops)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if self.seed is None:
            return self._sample()
        # The elastic and intensity augmentation draw from the global RNG: fork it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, self.epoch, index))
            return self._sample()

    def _sample(self) -> tuple[torch.Tensor, ...]:
        crop = self.sampler.sample()
        if self.augment is not None:
            crop = deform_and_jitter(*crop[:2], self.augment, *crop[2:])
        return tuple(t.contiguous() for t in crop)
