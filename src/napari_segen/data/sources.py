"""Where training pairs come from: arrays (napari layers), folders, Pascal VOC, TIFF stacks.

Every source returns a list of :class:`~napari_segen.data.datasets.LabeledImage`
whose masks hold class indices, :data:`IGNORE_INDEX` where nothing is annotated.
Two annotation conventions exist for label arrays painted by a user:

* **dense** (correcting a segmentation): the labels hold class indices
  directly, 0 = background; every pixel counts.
* **sparse** (painting a few strokes): label 0 = not annotated, label k =
  class k-1 (the ilastik/APOC convention, :func:`sparse_to_classes`).

Stacks give one pair per slice; slices with nothing painted (all 0) are skipped.
No napari, no Qt: the widget passes ``layer.data``.

A run reads its data through source objects, one per reader (:class:`ArraySource`,
:class:`FolderSource`, :class:`VocSource`, :class:`TiffStackSource`,
:class:`PairsSource`), with :func:`read_sources`; each also describes itself for
the run's provenance (:mod:`napari_segen.training.assembly` assembles the run).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..utils.generators import Progress
from .conventions import IGNORE_INDEX
from .datasets import LabeledImage, pairs_from_folders, sparse_to_classes
from .image_io import ImageReadError, read_image, read_mask
from .layout import spatial_layout

log = logging.getLogger(__name__)

DENSE = "dense"
SPARSE = "sparse"
ANNOTATION_MODES = (DENSE, SPARSE)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_IGNORE_VALUE = 255

__all__ = [
    "ANNOTATION_MODES",
    "DENSE",
    "SPARSE",
    "VOC_CLASSES",
    "ArraySource",
    "FolderSource",
    "PairsSource",
    "Source",
    "SourcePairs",
    "TiffStackSource",
    "VocSource",
    "default_class_names",
    "labels_to_classes",
    "num_classes_in",
    "pairs_from_arrays",
    "pairs_from_folders",
    "pairs_from_tiff_stacks",
    "pairs_from_voc",
    "read_sources",
    "voc_root",
]


def labels_to_classes(labels: np.ndarray, mode: str = DENSE) -> np.ndarray:
    """Painted labels to an int64 class mask under the ``mode`` convention (dense or sparse)."""
    if mode not in ANNOTATION_MODES:
        raise ValueError(
            f"annotation mode must be one of {', '.join(ANNOTATION_MODES)}, not {mode!r}"
        )
    labels = np.asarray(labels)
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise ValueError("labels hold negative values; paint class indices (0, 1, 2, ...)")
    if mode == SPARSE:
        return sparse_to_classes(labels)
    return labels.astype(np.int64)


def pairs_from_arrays(
    image: np.ndarray,
    labels: np.ndarray,
    mode: str = DENSE,
    *,
    name: str = "image",
    rgb: bool | None = None,
    skip_empty: bool = True,
) -> list[LabeledImage]:
    """Training pairs from an image array and a label array painted over it (napari layers).

    Args:
        image: ``(H, W)``, ``(H, W, 3|4)`` or a stack of either (``(Z, H, W)``,
            ``(T, Z, H, W)``...). numpy or dask arrays (read slice by slice).
        labels: class labels with the image's spatial shape (stack axes included).
        mode: ``"dense"`` (class indices, 0 = background) or ``"sparse"``
            (0 = not annotated, k = class k-1).
        name: used to name the pairs (``name[z]`` for slices).
        rgb: whether the image's last axis is colour (napari's ``layer.rgb``);
            guessed from the shape when None.
        skip_empty: skip images/slices whose labels are all 0 (nothing painted).

    Raises:
        ValueError: shapes do not match, or nothing is annotated.
    """
    try:
        leading, is_rgb = spatial_layout(tuple(image.shape), rgb)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
    img_spatial = tuple(image.shape[: len(leading) + 2])
    if tuple(labels.shape) != img_spatial:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match image {name!r} of shape "
            f"{img_spatial}; choose the Labels layer painted over this image"
        )
    pairs: list[LabeledImage] = []
    skipped = 0
    for idx in np.ndindex(*leading) if leading else [()]:
        lab = np.asarray(labels[idx])
        if skip_empty and not lab.any():
            skipped += 1
            continue
        mask = labels_to_classes(lab, mode)
        if not (mask != IGNORE_INDEX).any():
            skipped += 1
            continue
        plane = np.array(image[idx])
        slice_name = f"{name}[{','.join(map(str, idx))}]" if leading else name
        pairs.append(LabeledImage(plane, mask, name=slice_name, rgb=is_rgb))
    if not pairs:
        what = (
            "strokes (sparse mode: label 1 = class 0, label 2 = class 1...)"
            if mode == SPARSE
            else "labels"
        )
        raise ValueError(
            f"nothing is annotated over {name!r}: paint {what} on at least one slice, "
            "then train again"
        )
    if skipped:
        log.info("%s: skipped %d slice(s) without annotation", name, skipped)
    return pairs


def pairs_from_tiff_stacks(
    image_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    mode: str = DENSE,
    value_map: Mapping[int, int] | None = None,
    rgb: bool | None = None,
) -> list[LabeledImage]:
    """Pairs from an image stack TIFF and a label stack TIFF (one pair per annotated slice).

    The label stack is read as in :func:`~napari_segen.data.image_io.read_mask`
    (a 0/255 stack becomes 0/1; ``value_map`` applies to raw values) and
    interpreted under ``mode``; slices with all-0 labels are skipped.
    """
    image = read_image(image_path)
    labels = read_mask(labels_path, value_map)
    try:
        return pairs_from_arrays(image, labels, mode, name=Path(image_path).name, rgb=rgb)
    except ValueError as err:
        raise ImageReadError(f"{Path(image_path).name} + {Path(labels_path).name}: {err}") from err


def voc_root(path: str | os.PathLike) -> Path:
    """The VOC year folder (with ``JPEGImages``, ``SegmentationClass``) at or under ``path``."""
    path = Path(path)
    candidates = [path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"]
    candidates += sorted(path.glob("VOC*")) + sorted(path.glob("VOCdevkit/VOC*"))
    for c in candidates:
        if (c / "JPEGImages").is_dir() and (c / "SegmentationClass").is_dir():
            return c
    raise ImageReadError(
        f"{path} is not a Pascal VOC folder: expected JPEGImages/ and SegmentationClass/ in it "
        "(or in VOC2012/ or VOCdevkit/VOC2012/ below it)"
    )


def voc_split_ids(root: str | os.PathLike, split: str) -> list[str]:
    """Image ids of a VOC split (``ImageSets/Segmentation/<split>.txt``).

    Without split files, ``"train"`` gives every image with a mask and other splits none.
    """
    root = voc_root(root)
    split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if split_file.is_file():
        return [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
    if (root / "ImageSets" / "Segmentation").is_dir():
        raise ImageReadError(f"{split_file} not found; VOC splits are train, val and trainval")
    return (
        sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))
        if split == "train"
        else []
    )


def pairs_from_voc(
    path: str | os.PathLike,
    split: str = "train",
    limit: int | None = None,
) -> list[LabeledImage]:
    """Pairs of a Pascal VOC segmentation split (``JPEGImages`` + ``SegmentationClass``).

    The palette PNGs are read as class indices (:data:`VOC_CLASSES`); the
    255 border/"difficult" value becomes :data:`IGNORE_INDEX`. ``limit`` keeps
    the first ``limit`` ids (for quick runs).
    """
    root = voc_root(path)
    ids = voc_split_ids(root, split)
    if limit is not None:
        ids = ids[:limit]
    pairs: list[LabeledImage] = []
    missing = []
    for i in ids:
        img_path = root / "JPEGImages" / f"{i}.jpg"
        mask_path = root / "SegmentationClass" / f"{i}.png"
        if not img_path.is_file():
            img_path = next((p for p in (root / "JPEGImages").glob(f"{i}.*")), img_path)
        if not (img_path.is_file() and mask_path.is_file()):
            missing.append(i)
            continue
        mask = read_mask(mask_path, {VOC_IGNORE_VALUE: IGNORE_INDEX})
        top = int(mask.max())
        if top >= len(VOC_CLASSES):
            raise ImageReadError(
                f"{mask_path} holds class {top}; VOC masks hold 0-20 and 255 (ignore)"
            )
        pairs.append(LabeledImage(read_image(img_path), mask, name=img_path.name, rgb=True))
    if missing:
        log.warning(
            "VOC %s: %d id(s) without image or mask: %s",
            split,
            len(missing),
            ", ".join(missing[:5]),
        )
    if not pairs and split == "train":
        raise ImageReadError(f"no image/mask pairs found for VOC split {split!r} in {root}")
    return pairs


def num_classes_in(pairs: Sequence[LabeledImage], minimum: int = 2) -> int:
    """Number of classes the masks need (highest class index + 1, at least ``minimum``)."""
    top = max((int(p.mask.max()) for p in pairs), default=0)
    return max(top + 1, minimum)


def default_class_names(num_classes: int) -> list[str]:
    """``background, foreground`` for 2 classes, else ``background, class 1, class 2...``."""
    if num_classes == 2:
        return ["background", "foreground"]
    return ["background"] + [f"class {i}" for i in range(1, num_classes)]


# --- sources ---------------------------------------------------------------------------------
@dataclass
class SourcePairs:
    """What one source gave: its pairs, its own validation pairs, the class names it knows."""

    name: str
    pairs: list[LabeledImage]
    val_pairs: list[LabeledImage] | None = None
    class_names: list[str] | None = None


class Source(Protocol):
    """Anything that reads into :class:`SourcePairs` and describes itself for provenance."""

    def read(self) -> SourcePairs: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class ArraySource:
    """An image array and the labels painted over it (napari layers' data).

    ``mode`` is ``"dense"`` (class indices) or ``"sparse"`` (0 = not annotated,
    k = class k-1); stacks give one pair per painted slice. ``class_names``: the
    names the labels carry (a Labels layer's ``metadata["class_names"]``).
    """

    image: Any
    labels: Any
    mode: str = DENSE
    name: str = "image"
    rgb: bool | None = None
    class_names: Sequence[str] | None = None
    labels_name: str | None = None

    def read(self) -> SourcePairs:
        pairs = pairs_from_arrays(self.image, self.labels, self.mode, name=self.name, rgb=self.rgb)
        names = list(self.class_names) if self.class_names else None
        return SourcePairs(self.name, pairs, class_names=names)

    def describe(self) -> dict[str, Any]:
        return {"layers": [self.name, self.labels_name or f"{self.name} labels"],
                "annotation": self.mode}  # fmt: skip


@dataclass
class FolderSource:
    """A folder of images and a folder of masks named like them."""

    images: str | os.PathLike
    masks: str | os.PathLike
    value_map: Mapping[int, int] | None = None
    sparse: bool = False

    def read(self) -> SourcePairs:
        pairs = pairs_from_folders(self.images, self.masks, self.value_map, self.sparse)
        return SourcePairs(Path(self.images).name, pairs)

    def describe(self) -> dict[str, Any]:
        return {"images": str(self.images), "masks": str(self.masks)}


@dataclass
class VocSource:
    """A Pascal VOC folder: the ``split`` list, and ``val_split``'s list as its validation."""

    root: str | os.PathLike
    split: str = "train"
    limit: int | None = None
    val_split: str | None = "val"

    def read(self) -> SourcePairs:
        pairs = pairs_from_voc(self.root, self.split, self.limit)
        val = pairs_from_voc(self.root, self.val_split, self.limit) if self.val_split else []
        return SourcePairs(f"VOC {self.split}", pairs, val or None, list(VOC_CLASSES))

    def describe(self) -> dict[str, Any]:
        return {"voc": str(self.root)}


@dataclass
class TiffStackSource:
    """An image stack TIFF and its label stack TIFF (one pair per annotated slice)."""

    image: str | os.PathLike
    labels: str | os.PathLike
    mode: str = DENSE
    value_map: Mapping[int, int] | None = None

    def read(self) -> SourcePairs:
        pairs = pairs_from_tiff_stacks(self.image, self.labels, self.mode, self.value_map)
        return SourcePairs(Path(self.image).name, pairs)

    def describe(self) -> dict[str, Any]:
        return {"stack_image": str(self.image), "stack_labels": str(self.labels)}


@dataclass
class PairsSource:
    """Pairs already in memory (tests, scripts)."""

    pairs: Sequence[LabeledImage]
    name: str = "pairs"
    val_pairs: Sequence[LabeledImage] | None = None
    class_names: Sequence[str] | None = None

    def read(self) -> SourcePairs:
        return SourcePairs(
            self.name,
            list(self.pairs),
            list(self.val_pairs) if self.val_pairs is not None else None,
            list(self.class_names) if self.class_names else None,
        )

    def describe(self) -> dict[str, Any]:
        return {"pairs": self.name}


def read_sources(sources: Sequence[Source]) -> Generator[Progress, None, list[SourcePairs]]:
    """Read every source, yielding one :class:`Progress` per source; an empty list is an error."""
    if not sources:
        raise ValueError("no training data: give at least one image with its labels or masks")
    out = []
    for i, source in enumerate(sources):
        yield Progress(i, len(sources), f"reading {_short(source)}")
        out.append(source.read())
    yield Progress(len(sources), len(sources), "data read")
    return out


def _short(source: Source) -> str:
    desc = source.describe()
    return ", ".join(
        f"{k} {Path(str(v)).name if not isinstance(v, list) else '+'.join(map(str, v))}"
        for k, v in desc.items()
        if k != "annotation"
    )
