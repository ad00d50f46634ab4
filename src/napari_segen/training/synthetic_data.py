"""Synthetic pairs in a segmentation run: how they are asked for, checked, and joined to it.

Synthetic pairs (e.g. exported by ``napari-segen synth export``) are a training
source of their own, never split and never validated on:

* **Asked for**: :func:`choose_synthetic` turns a form's or a command line's
  settings into a :class:`SyntheticData` (folders, ``share``, ``mode``), or None
  when they are not used; :class:`SyntheticFields` names those settings in its
  messages.
* **Checked before the run** (:func:`check_synthetic`): names paired from the
  listings and a few pairs read, against the classes known before the real
  masks are read (:func:`classes_before_reading`, :class:`KnownClasses`) and the
  real images' kind (:func:`real_colour`), so a wrong folder is one line.
* **Joined to the run** by :func:`~napari_segen.training.assembly.assemble_segmentation`:
  every pair is read and checked, then mixed into the training pairs (at most
  ``share`` of the crops, :func:`~napari_segen.data.mixing.mix_sources`) or
  kept for pre-training (:mod:`napari_segen.training.synthetic_pretrain`).

No Qt, no napari.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import FolderFiles, LabeledImage, pair_folder_files
from ..data.files import list_images
from ..data.image_io import (
    IMAGE_SUFFIXES,
    ImageInfo,
    MaskValuesError,
    check_mask_classes,
    image_info,
    read_mask,
)
from ..data.instances import INSTANCE_CLASS_NAMES
from ..data.layout import spatial_layout
from ..data.sources import (
    ArraySource,
    FolderSource,
    PairsSource,
    Source,
    TiffStackSource,
    VocSource,
)
from ..models.model_file import ModelSpec

#: How synthetic pairs join a segmentation run (see :class:`SyntheticData`).
SYNTHETIC_MODES = ("mix", "pretrain")

#: The largest share of the training crops synthetic pairs may get when mixed in.
MAX_SYNTHETIC_SHARE = 0.5


# --- asked for -------------------------------------------------------------------------------
@dataclass
class SyntheticData:
    """Synthetic pairs for a segmentation run: where they are, and how they join it.

    ``mode`` ``"mix"``: mixed into the training pairs with at most ``share``
    of the crops (0: not used; more than :data:`MAX_SYNTHETIC_SHARE` is refused).
    ``"pretrain"``: trained on first, then the real pairs fine-tune the result
    (``share`` is not used).
    """

    source: Source
    share: float = 0.0
    mode: str = "mix"

    def __post_init__(self) -> None:
        if self.mode not in SYNTHETIC_MODES:
            raise ValueError(
                f"synthetic pairs are used by {' or '.join(SYNTHETIC_MODES)}, not {self.mode!r}"
            )
        if not 0 <= self.share <= MAX_SYNTHETIC_SHARE:
            raise ValueError(
                f"the synthetic share of the training crops must be between 0 and "
                f"{MAX_SYNTHETIC_SHARE}, got {self.share}: more synthetic than real crops "
                "teaches the generator's look rather than the real images'"
            )

    @property
    def used(self) -> bool:
        return self.mode == "pretrain" or self.share > 0


@dataclass(frozen=True)
class SyntheticFields:
    """How a front end names the synthetic-pair settings in its messages."""

    images: str = "--synthetic-images"
    masks: str = "--synthetic-masks"
    share: str = "--synthetic-share"
    pretrain: str = "--synthetic-pretrain"
    classes: str = "--classes"
    where: str = ""  # e.g. " under Advanced settings"


def choose_synthetic(
    images: str | os.PathLike | None,
    masks: str | os.PathLike | None,
    share: float,
    pretrain: bool,
    fields: SyntheticFields = SyntheticFields(),
) -> SyntheticData | None:
    """The synthetic pairs a form or command line asks for, or None when they are not used
    (no folders; or folders with share 0 and no pre-training).

    Raises a ValueError that names the setting (as ``fields`` calls it) and what to do:
    a share or pre-training without both folders, one folder only, a share outside
    0..``MAX_SYNTHETIC_SHARE``, pre-training together with a share.
    """
    images, masks = images or None, masks or None
    f = fields
    if not (images or masks):
        if share or pretrain:
            raise ValueError(
                f"{f.share} and {f.pretrain} need {f.images} and {f.masks}{f.where}: give both, "
                f"or set {f.share} to 0 and leave out {f.pretrain}"
            )
        return None
    if not (images and masks):
        raise ValueError(f"give {f.masks if images else f.images} too{f.where}, or neither folder")
    if not 0 <= share <= MAX_SYNTHETIC_SHARE:
        raise ValueError(
            f"{f.share} {share:g} refused: give 0 to {MAX_SYNTHETIC_SHARE:g} (more synthetic "
            "than real crops trains on the generator's look, not the real images')"
        )
    if pretrain and share:
        raise ValueError(
            f"{f.pretrain} uses the synthetic pairs on their own first: set {f.share} to 0, "
            f"or leave out {f.pretrain} to mix them in"
        )
    if not pretrain and share == 0:
        return None
    return SyntheticData(FolderSource(images, masks), share, "pretrain" if pretrain else "mix")


# --- synthetic pairs: the pre-check ----------------------------------------------------------
#: Synthetic pairs the pre-check reads (masks whole, images by their header): enough to
#: catch a wrong folder, few enough to stay instant on an export of hundreds of pairs.
SYNTHETIC_SAMPLES = 3


@dataclass(frozen=True)
class KnownClasses:
    """The most classes a run can have, known before its data are read, and why (a clause
    for messages, e.g. "the model has 2 classes (0-1)")."""

    count: int
    why: str


def classes_before_reading(
    start: ModelSpec | None,
    names: Sequence[str] | None = None,
    masks_are: str = "auto",
    instance_mode: str = "boundary",
    fields: SyntheticFields = SyntheticFields(),
) -> KnownClasses | None:
    """The most classes a run can have before its masks are read (None: the masks decide).

    Names given are the run's classes; masks said to be instances give their mode's;
    else the start model's, or with ``auto`` (the real masks may turn out to be
    instance label images) the more of those and the mode's. A new model without
    names takes its classes from the real masks, unknown here.
    """
    if names:
        n = len(names)
        return KnownClasses(n, f"{fields.classes}{fields.where} names {n} classes (0-{n - 1})")
    own = len(INSTANCE_CLASS_NAMES[instance_mode])
    if masks_are == "instances":
        return KnownClasses(own, f"instance masks become {own} classes (0-{own - 1})")
    if start is None:
        return None
    n = start.num_classes
    why = _model_classes(n)
    if masks_are == "auto" and own > n:
        return KnownClasses(own, f"{why}, {own} if the real masks are instance label images")
    return KnownClasses(n, why)


def real_colour(sources: Sequence[Source]) -> bool | None:
    """Whether the real images are colour, from one header (or array shape) per source.

    None when unknown (a source of another kind, a folder that cannot be read) or
    mixed: the run then decides from the images themselves.
    """
    kinds = {_source_colour(s) for s in sources}
    return kinds.pop() if len(kinds) == 1 else None


def _source_colour(source: Source) -> bool | None:
    try:
        if isinstance(source, ArraySource):
            return spatial_layout(tuple(source.image.shape), source.rgb)[1]
        if isinstance(source, FolderSource):
            first = next(iter(list_images(source.images)), None)
            return None if first is None else image_info(first).colour
        if isinstance(source, TiffStackSource):
            return image_info(source.image).colour
        if isinstance(source, VocSource):
            return True
        if isinstance(source, PairsSource):
            kinds = {p.is_rgb for p in source.pairs}
            return kinds.pop() if len(kinds) == 1 else None
    except (ValueError, OSError):
        return None  # the run reads this source and says what is wrong with it
    return None


def check_synthetic(
    synthetic: SyntheticData,
    fields: SyntheticFields = SyntheticFields(),
    *,
    classes: KnownClasses | None = None,
    colour: bool | None = None,
    samples: int = SYNTHETIC_SAMPLES,
) -> None:
    """Check synthetic folders before a run starts, quickly; a one-line ValueError names
    what is wrong, what to do and the setting (as ``fields`` calls it).

    The names are paired from the listings (every synthetic image needs its mask);
    then ``samples`` pairs spread over the folder are read (masks whole, images by
    their header): a mask folder holding images, an image and its mask of other
    sizes, images of another kind than the real ones (``colour``: whether those are
    colour, None: unknown), mask values beyond ``classes`` (None: unknown). The run
    checks every pair (:func:`~napari_segen.training.assembly.assemble_segmentation`).
    Only folder sources are checked.
    """
    source = synthetic.source
    if not isinstance(source, FolderSource):
        return
    files = _synthetic_files(source, fields)
    for image, mask in _spread(files.pairs, samples):
        _check_synthetic_pair(image, mask, fields, classes, colour)


def check_synthetic_for_run(
    synthetic: SyntheticData,
    sources: Sequence[Source],
    start: ModelSpec | None,
    names: Sequence[str] | None = None,
    masks_are: str = "auto",
    instance_mode: str = "boundary",
    fields: SyntheticFields = SyntheticFields(),
) -> None:
    """:func:`check_synthetic` against what a run is known to be before it reads its data:
    its most classes (:func:`classes_before_reading`, from the ``start`` model's
    description, the class ``names`` and the mask settings) and the kind of its real
    images (:func:`real_colour` of ``sources``). What both front ends call."""
    classes = classes_before_reading(start, names, masks_are, instance_mode, fields)
    check_synthetic(synthetic, fields, classes=classes, colour=real_colour(sources))


def _synthetic_files(source: FolderSource, f: SyntheticFields) -> FolderFiles:
    """The synthetic folders' files paired by name; a ValueError unless every image has its mask."""
    images, masks = Path(source.images), Path(source.masks)
    again = "choose the folder the synthetic pairs were exported to"
    for setting, folder in ((f.images, images), (f.masks, masks)):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder; {again} ({setting}{f.where})")
    if images.resolve() == masks.resolve():
        raise ValueError(
            f"the synthetic images and masks are the same folder ({images}); choose the images "
            f"and the masks folders the pairs were exported to ({f.images}, {f.masks}{f.where})"
        )
    files = pair_folder_files(images, masks)
    for setting, folder, listed in ((f.images, images, files.images),
                                    (f.masks, masks, files.masks)):  # fmt: skip
        if not listed:
            raise ValueError(
                f"{folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}); {again} "
                f"({setting}{f.where})"
            )
    unpaired, rule = files.unpaired, "a.png pairs with a.png, a.tif or a_mask.png"
    if unpaired:
        some = (
            f"{len(unpaired)} of {len(files.images)} synthetic images in {images} have no mask "
            f"of their name in {masks} (first: {unpaired[0].name}; {rule})"
            if files.pairs
            else f"no synthetic image in {images} has a mask of its name in {masks} ({rule})"
        )
        raise ValueError(
            f"{some}: choose the masks exported with these images ({f.masks}{f.where})"
        )
    return files


def _spread(items: Sequence, most: int) -> list:
    """At most ``most`` of ``items``, evenly apart, the first and the last among them."""
    if len(items) <= most:
        return list(items)
    if most <= 0:
        return []
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, most).round().astype(int))]


def _check_synthetic_pair(
    image: Path,
    mask: Path,
    f: SyntheticFields,
    classes: KnownClasses | None,
    colour: bool | None,
) -> None:
    info = _header(image, f.images, f.where)
    if colour is not None and info.colour != colour:
        raise ValueError(f"{_kind_mismatch(str(image), info.colour, colour)} ({f.images}{f.where})")
    wrong = f"choose the masks the pairs were exported with ({f.masks}{f.where})"
    if _header(mask, f.masks, f.where).colour:
        raise ValueError(f"the synthetic masks folder holds images: {mask} is in colour; {wrong}")
    try:
        values = read_mask(mask)
        check_mask_classes(str(mask), values)  # no count: refuses what no class mask holds
    except MaskValuesError as err:
        # The shared message's own advice names the real-data flags; keep what it found.
        found = str(err).split(";")[0]
        raise ValueError(f"the synthetic masks seem to be images: {found}; {wrong}") from err
    except ValueError as err:
        raise ValueError(f"{err} ({f.masks}{f.where})") from err
    planar = info.colour or info.shape[-1:] == (1,)  # a trailing channel axis is not a size
    size = tuple(info.shape[:-1] if planar else info.shape)[-2:]
    if size != tuple(values.shape)[-2:]:
        raise ValueError(
            f"synthetic image {image} is {_size(size)} but its mask {mask} is "
            f"{_size(values.shape)}; {wrong}"
        )
    if classes is not None:
        line = _beyond_classes(str(mask), values, classes.count, classes.why)
        if line:
            raise ValueError(f"{line} ({f.masks}{f.where})")


def _header(path: Path, setting: str, where: str) -> ImageInfo:
    try:
        return image_info(path)
    except ValueError as err:
        raise ValueError(f"{err} ({setting}{where})") from err


def _size(shape: Sequence[int]) -> str:
    return " x ".join(str(int(n)) for n in shape)


def _model_classes(count: int) -> str:
    return f"the model has {count} classes (0-{count - 1})"


def _kind_mismatch(name: str, synthetic_colour: bool, real_colour: bool) -> str:
    """The line refusing a synthetic image of another kind (grey, colour) than the real ones."""
    kind = {True: "colour", False: "grey"}
    return (
        f"synthetic image {name} is {kind[synthetic_colour]} but the real images are "
        f"{kind[real_colour]}: export the pairs with a generator trained on these images"
    )


def _beyond_classes(name: str, mask: np.ndarray, count: int, why: str) -> str:
    """The line refusing a synthetic mask with values of ``count`` or more ("" when it fits)."""
    m = np.asarray(mask)
    odd = np.unique(m[m >= count])
    if not odd.size:
        return ""
    shown = ", ".join(str(int(v)) for v in odd[:5]) + (", ..." if odd.size > 5 else "")
    return (
        f"synthetic mask {name} has the value{'s' if odd.size > 1 else ''} {shown}, but {why}: "
        "export the pairs with a generator trained on these classes"
    )


# --- in the run ------------------------------------------------------------------------------
def _read_synthetic(source: Source) -> list[LabeledImage]:
    """The synthetic pairs; a reading error says it was about them (and where they are)."""
    try:
        return source.read().pairs
    except ValueError as err:
        where = " and ".join(map(str, source.describe().values()))
        raise ValueError(f"reading the synthetic pairs of {where}: {err}") from err


def _check_synthetic_pairs(
    real: Sequence[LabeledImage], synth: Sequence[LabeledImage], num_classes: int, source: Source
) -> None:
    """Every synthetic pair fits the run: its mask the classes, its image the real images' kind."""
    desc = source.describe()
    images, masks = desc.get("images"), desc.get("masks")
    kinds = {p.is_rgb for p in real}
    for p in synth:
        name = p.name or "pair"
        line = _beyond_classes(
            f"for {name}" + (f" in {masks}" if masks else ""), p.mask, num_classes,
            _model_classes(num_classes),
        )  # fmt: skip
        if line:
            raise ValueError(line)
        if len(kinds) == 1 and p.is_rgb not in kinds:
            where = f"{name} in {images}" if images else name
            raise ValueError(_kind_mismatch(where, p.is_rgb, not p.is_rgb))


def _add_synthetic(
    train: list[LabeledImage],
    synth: list[LabeledImage],
    synthetic: SyntheticData,
    num_classes: int,
    provenance: dict[str, Any],
) -> tuple[list[LabeledImage], list[LabeledImage], str]:
    """(training pairs, pre-training pairs, a line for the user); records the provenance."""
    from ..data.mixing import SYNTHETIC_MAX_REPEAT as most
    from ..data.mixing import mix_sources, mixed_share

    _check_synthetic_pairs(train, synth, num_classes, synthetic.source)
    facts: dict[str, Any] = {**synthetic.source.describe(), "mode": synthetic.mode,
                             "count": len(synth)}  # fmt: skip
    if synthetic.mode == "pretrain":
        provenance["synthetic"] = facts
        note = (
            f"pre-training on {len(synth)} synthetic pair(s), then fine-tuning on "
            f"{len(train)} real one(s); measured on ISBI this cost 0.041 Dice against real "
            "only, where mixing them in at a third of the crops gained 0.020 "
            "(docs/benchmarks.md)"
        )
        return train, synth, note
    got = mixed_share(train, synth, synthetic.share, most, at_most=True)
    provenance["synthetic"] = {**facts, "share": synthetic.share, "crop_share": round(got, 4)}
    mixed = mix_sources(train, synth, synthetic.share, most, at_most=True)
    note = (
        f"mixing {len(synth)} synthetic pair(s) into the training crops: "
        f"~{got:.0%} of them (at most {synthetic.share:.0%}); never validated on"
    )
    return mixed, [], note
