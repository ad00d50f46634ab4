"""From data sources to a training run: one set of rules for the widgets and the CLI.

A run is assembled in four steps, the same whoever asks (the Train and
Synthesize widgets, ``napari-segen train`` and ``napari-segen synth train``):

1. **Sources** are read into pairs: painted layers
   (:class:`~napari_segen.data.sources.ArraySource`), image/mask folders
   (:class:`~napari_segen.data.sources.FolderSource`), Pascal VOC
   (:class:`~napari_segen.data.sources.VocSource`), TIFF stacks
   (:class:`~napari_segen.data.sources.TiffStackSource`) or pairs already in memory
   (:class:`~napari_segen.data.sources.PairsSource`). The readers themselves live
   in :mod:`napari_segen.data`.
2. **Split** into training and validation pairs (:func:`split_train_val`):

   * validation pairs given to the run (``--val-images``/``--val-masks``)
     replace all splitting: every source trains;
   * otherwise each source is split on its own, so each one trains and
     validates: a source that brings its own validation pairs (VOC's ``val``
     list) uses them; a source of several images holds out ``val_fraction`` of
     them (seeded, at least one of each kind); a source of **one** image holds
     out the bottom ``val_fraction`` of its rows (:func:`split_one_image`),
     when both parts are at least :data:`MIN_REGION_ROWS` rows and hold
     annotation - else that image only trains.
3. **Instance masks** (:func:`read_masks_as`): masks that look like instance
   label images (one id per object, :func:`~napari_segen.data.instances.detect_mask_kind`),
   or all masks when the user says so (``masks_are="instances"``), become the
   classes of ``instance_mode`` (``boundary``: background, interior, boundary;
   ``binary``: background, object), and the run says so in :attr:`SegmentationRun.notes`.
4. **Classes** (:func:`choose_class_names`): the names given (``--classes``)
   when there are any; else, when fine-tuning or resuming, the start model's
   classes (the masks must fit them); for a new model, the names the data
   carries (VOC's 21, a Labels layer's ``class_names``; extended to cover the
   masks), else :func:`~napari_segen.data.sources.default_class_names` of the
   highest class in the masks + 1 (at least 2: ``background, foreground``).
   Instance masks bring their mode's names.
5. **Start model** (:func:`load_start`): ``"default"`` (the bundled model),
   a model file, a loaded model or spec (resume), or :class:`NewModel` (a
   U-Net or FCN built for the classes of step 4). A model fine-tuned on other
   classes than its own is changed by :func:`~napari_segen.models.heads.with_classes`:
   same count, other names = renamed; another count = a new final layer, the
   rest kept. A resumed run keeps its classes.

**Synthetic pairs** (:class:`~napari_segen.training.synthetic_data.SyntheticData`,
e.g. exported by ``napari-segen synth export``) are a training source of their
own, never split and never validated on: ``"mix"`` lists them beside the real
training pairs so they get at most ``share`` of the crops
(:func:`~napari_segen.data.mixing.mix_sources`, the rule replay uses);
``"pretrain"`` hands them to the run as :attr:`SegmentationRun.pretrain`, to train
on before the real pairs. Their masks must fit the run's classes and their images
be of the real images' kind (grey or colour). The front ends check the folders
first with :func:`~napari_segen.training.synthetic_data.check_synthetic` (names
paired from the listings, a few pairs read), so a wrong folder is one line before
the run starts; the run checks every pair.

No Qt, no napari: the widgets run these generators in a worker thread, the CLI
drives them with :func:`~napari_segen.utils.generators.drive`.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.conventions import IGNORE_INDEX
from ..data.datasets import LabeledImage, image_channels, split_pairs
from ..data.image_io import check_mask_classes
from ..data.instances import (
    INSTANCE_CLASS_NAMES,
    INSTANCE_MODES,
    detect_mask_kind,
    instances_to_classes,
)
from ..data.sources import Source, SourcePairs, _short, default_class_names, read_sources
from ..models.heads import check_segmentation_model, class_change, with_classes
from ..models.model_file import LoadedModel, ModelFileError, ModelSpec
from ..utils.generators import Progress
from .synthetic_data import SyntheticData, _add_synthetic, _read_synthetic

#: Fewest rows each part of a single image split by region may have (see :func:`split_one_image`).
MIN_REGION_ROWS = 32

#: Start-model value meaning the bundled default model.
DEFAULT_START = "default"


# --- split -----------------------------------------------------------------------------------
def split_one_image(
    pair: LabeledImage, val_fraction: float, min_rows: int = MIN_REGION_ROWS
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Hold out the bottom ``val_fraction`` of one image's rows for validation.

    Returns ``([top], [bottom])``, or ``([pair], [])`` when the fraction is 0,
    either part would be thinner than ``min_rows`` rows, or either part holds
    no annotated pixel.
    """
    h = pair.mask.shape[0]
    n_val = int(round(h * val_fraction))
    if val_fraction <= 0 or n_val < min_rows or h - n_val < min_rows:
        return [pair], []
    cut = h - n_val
    top_mask, bottom_mask = pair.mask[:cut], pair.mask[cut:]
    if not ((top_mask != IGNORE_INDEX).any() and (bottom_mask != IGNORE_INDEX).any()):
        return [pair], []
    name = pair.name or "image"
    train = pair.rows(0, cut, f"{name} (top {cut} rows)")  # pixel weights, if any, go along
    val = pair.rows(cut, h, f"{name} (bottom {n_val} rows)")
    return [train], [val]


def split_source(
    pairs: Sequence[LabeledImage], val_fraction: float, seed: int = 0
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """One source's split: by region for a single image, else by image (seeded)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    if len(pairs) == 1:
        return split_one_image(pairs[0], val_fraction)
    return split_pairs(pairs, val_fraction, seed=seed)


def split_train_val(
    read: Sequence[SourcePairs],
    val_fraction: float,
    seed: int = 0,
    val_pairs: Sequence[LabeledImage] | None = None,
) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """Training and validation pairs of the sources, by the rules in the module docstring."""
    if val_pairs:
        return [p for s in read for p in s.pairs], list(val_pairs)
    train: list[LabeledImage] = []
    val: list[LabeledImage] = []
    for s in read:
        if s.val_pairs:
            tr, va = list(s.pairs), list(s.val_pairs)
        else:
            tr, va = split_source(s.pairs, val_fraction, seed)
        train += tr
        val += va
    return train, val


# --- instance masks --------------------------------------------------------------------------
#: What masks hold: ``auto`` (detect), ``classes`` (indices) or ``instances`` (one id per object).
MASKS_ARE = ("auto", "classes", "instances")


@dataclass(frozen=True)
class MaskReading:
    """How a run reads its masks: ``kind`` (``"classes"`` or ``"instances"``), the
    ``class_names`` instance masks become (None for class masks) and a one-line
    ``note`` for the user ("" when there is nothing to say)."""

    kind: str
    class_names: list[str] | None = None
    note: str = ""


def read_masks_as(
    pairs: Sequence[LabeledImage],
    masks_are: str = "auto",
    instance_mode: str = "boundary",
    num_classes: int | None = None,
) -> MaskReading:
    """Whether the masks of ``pairs`` are instance label images, by the user's word or detection.

    ``auto`` reads them as instances when most annotated masks look like
    instance label images (:func:`~napari_segen.data.instances.detect_mask_kind`;
    ``num_classes``: the classes a model expects, when known).
    """
    if masks_are not in MASKS_ARE:
        raise ValueError(f"masks are one of {', '.join(MASKS_ARE)}, not {masks_are!r}")
    if instance_mode not in INSTANCE_MODES:
        raise ValueError(
            f"the instance mode is one of {', '.join(INSTANCE_MODES)}, not {instance_mode!r}"
        )
    if masks_are == "classes":
        return MaskReading("classes")
    names = list(INSTANCE_CLASS_NAMES[instance_mode])
    becomes = f"trained as {instance_mode} classes ({', '.join(names)})"
    if masks_are == "instances":
        return MaskReading("instances", names, f"masks read as instance label images: {becomes}")
    kinds = [detect_mask_kind(p.mask, num_classes) for p in pairs]
    annotated = [k for k in kinds if k.num_ids > 0]
    found = [k for k in annotated if k.kind == "instances"]
    if found and 2 * len(found) > len(annotated):
        return MaskReading(
            "instances",
            names,
            f"masks look like instance label images ({len(found)} of {len(annotated)} masks; "
            f"first: {found[0].reason}): {becomes}",
        )
    if found:
        return MaskReading(
            "classes",
            note=f"{len(found)} of {len(annotated)} masks look like instance label images, the "
            "rest like class masks: all are read as classes (say 'instances' to convert them)",
        )
    return MaskReading("classes")


def masks_to_classes(
    pairs: Sequence[LabeledImage], reading: MaskReading, instance_mode: str = "boundary"
) -> list[LabeledImage]:
    """``pairs`` with their instance masks turned into classes (as they are for class masks)."""
    if reading.kind != "instances":
        return list(pairs)
    return [
        LabeledImage(p.image, instances_to_classes(p.mask, instance_mode), p.name, p.rgb)
        for p in pairs
    ]


# --- classes ---------------------------------------------------------------------------------
def highest_class(pairs: Sequence[LabeledImage]) -> int:
    """The highest class index in the masks (0 when nothing but background is annotated)."""
    return max((int(np.max(p.mask)) for p in pairs if p.mask.size), default=0)


def choose_class_names(
    pairs: Sequence[LabeledImage],
    *,
    start: LoadedModel | ModelSpec | None = None,
    names: Sequence[str] | None = None,
    hint: Sequence[str] | None = None,
) -> list[str]:
    """The class names of a run (see the module docstring); ValueError when the masks do not fit.

    Args:
        pairs: every pair of the run (training and validation).
        start: the model fine-tuned or resumed; without ``names`` its classes are the run's.
        names: names the user gave: a new model's, or the start model's new classes
            (see :func:`~napari_segen.models.heads.with_classes`).
        hint: names the data carries (VOC, a layer's ``class_names``), used for a new model.
    """
    top = highest_class(pairs)
    if start is not None and not names:
        spec = start.spec if isinstance(start, LoadedModel) else start
        own = list(spec.class_names)
        if top >= len(own):
            raise ValueError(
                f"the masks hold class {top} but the start model has {len(own)} classes "
                f"({', '.join(own)}); name all {top + 1} classes, class 0 first (--classes), "
                "to give it a new final layer, or fix the masks"
            )
        return own
    if names:
        names = [str(n) for n in names]
        if top >= len(names):
            _check_classes(pairs, len(names))  # names the mask and its values
            raise ValueError(
                f"the masks hold class {top} but only {len(names)} class names were given "
                f"({', '.join(names)}); name every class, class 0 first"
            )
        return names
    if hint:
        hint = [str(n) for n in hint]
        if top >= len(hint):
            _check_classes(pairs)
        return hint + [f"class {i}" for i in range(len(hint), top + 1)]
    _check_classes(pairs)
    return default_class_names(max(top, 1) + 1)


def _check_classes(pairs: Sequence[LabeledImage], num_classes: int | None = None) -> None:
    """Each mask must fit ``num_classes`` or, when None (no classes declared), look like a
    class mask; else a sentence naming the mask and its odd values."""
    for p in pairs:
        check_mask_classes(p.name or "a mask", p.mask, num_classes)


# --- start model -----------------------------------------------------------------------------
@dataclass
class NewModel:
    """A model trained from scratch.

    Attributes:
        architecture: ``"unet"`` or ``"fcn_resnet50"``.
        depth: U-Net depth.
        base_channels: U-Net width of the first level.
        in_channels: image channels (None: 3 when any training image is colour, else 1).
        pretrained: a local torchvision weights file for ``fcn_resnet50`` (nothing is downloaded).
    """

    architecture: str = "unet"
    depth: int = 4
    base_channels: int = 16
    in_channels: int | None = None
    pretrained: str | os.PathLike | None = None


StartModel = str | os.PathLike | NewModel | LoadedModel | ModelSpec


def load_start(start: StartModel) -> LoadedModel | ModelSpec | NewModel:
    """Load the start model a run fine-tunes: ``"default"`` or a path gives a loaded model."""
    if isinstance(start, LoadedModel | ModelSpec | NewModel):
        return start
    from ..models import default_model_path, load_model

    path = Path(str(default_model_path())) if str(start) == DEFAULT_START else Path(start)
    if not path.is_file():
        raise ModelFileError(
            f"the start model {path} is missing; choose another model or train from scratch"
        )
    return load_model(path)


def start_spec(start: StartModel) -> ModelSpec | None:
    """The start model's description, its weights not loaded (None for a new model)."""
    if isinstance(start, NewModel):
        return None
    if isinstance(start, LoadedModel):
        return start.spec
    if isinstance(start, ModelSpec):
        return start
    from ..models import default_model_path, read_spec

    return read_spec(Path(str(default_model_path() if str(start) == DEFAULT_START else start)))


def build_new_model(
    new: NewModel, pairs: Sequence[LabeledImage], class_names: Sequence[str]
) -> ModelSpec | LoadedModel:
    """The spec of a fresh model for ``class_names`` (a loaded model with pretrained weights)."""
    if new.pretrained is not None and new.architecture != "fcn_resnet50":
        raise ValueError("pretrained weights apply to a new fcn_resnet50 only")
    # Colour when any image is: grey images widen to 3 channels losslessly, not the reverse.
    in_ch = new.in_channels or image_channels(pairs)
    kwargs: dict[str, Any] = {"in_channels": in_ch, "num_classes": len(class_names)}
    if new.architecture == "unet":
        kwargs.update(depth=new.depth, base_channels=new.base_channels)
    spec = ModelSpec(
        architecture=new.architecture,
        arch_kwargs=kwargs,
        in_channels=in_ch,
        class_names=list(class_names),
    )
    if new.pretrained is None:
        return spec
    from ..models import build_model

    module = build_model(spec.architecture, **spec.arch_kwargs)
    module.load_pretrained(new.pretrained)
    return LoadedModel(module, spec)


# --- runs ------------------------------------------------------------------------------------
@dataclass
class SegmentationRun:
    """What :func:`~napari_segen.training.train_segmentation` needs, assembled."""

    train: list[LabeledImage]
    val: list[LabeledImage]
    start: LoadedModel | ModelSpec
    class_names: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    #: One line each for the user: instance masks detected, classes renamed or a new head.
    notes: list[str] = field(default_factory=list)
    #: Synthetic pairs to train on before ``train`` (``SyntheticData`` mode ``"pretrain"``).
    pretrain: list[LabeledImage] = field(default_factory=list)


@dataclass
class SynthRun:
    """What :func:`~napari_segen.synthesis.train_pix2pix` needs, assembled."""

    train: list[LabeledImage]
    val: list[LabeledImage]
    class_names: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    #: One line each for the user (instance masks detected).
    notes: list[str] = field(default_factory=list)


def _read_and_split(
    sources: Sequence[Source],
    val_sources: Sequence[Source],
    val_fraction: float,
    seed: int,
) -> Generator[Progress, None, tuple[list[SourcePairs], list, list, dict[str, Any]]]:
    read = yield from read_sources(sources)
    explicit = []
    for source in val_sources:
        yield Progress(0, 0, f"reading validation {_short(source)}")
        explicit += source.read().pairs
    train, val = split_train_val(read, val_fraction, seed, explicit or None)
    provenance: dict[str, Any] = {}
    for source in sources:
        provenance.update(source.describe())
    for source in val_sources:
        provenance.update({f"val_{k}": v for k, v in source.describe().items()})
    return read, train, val, provenance


def _whole(
    read: Sequence[SourcePairs], val: list[LabeledImage], val_sources: Sequence[Source]
) -> list[LabeledImage]:
    """Every pair as read, before any split (explicit validation pairs included)."""
    return [p for s in read for p in [*s.pairs, *(s.val_pairs or [])]] + (
        list(val) if val_sources else []
    )


def _hint(read: Sequence[SourcePairs]) -> list[str] | None:
    return next((s.class_names for s in read if s.class_names), None)


def _convert_masks(
    whole: list[LabeledImage],
    train: list[LabeledImage],
    val: list[LabeledImage],
    masks_are: str,
    instance_mode: str,
    names: Sequence[str] | None,
    num_classes: int | None,
) -> tuple[list[LabeledImage], list[LabeledImage], list[str] | None, list[str]]:
    """Instance masks become classes (step 3): ``(train, val, class names, notes)``.

    What the masks are is read from the ``whole`` masks (before a split by
    region, which leaves fewer objects in each part).
    """
    reading = read_masks_as(whole, masks_are, instance_mode, num_classes)
    notes = [reading.note] if reading.note else []
    if reading.kind != "instances":
        return train, val, list(names) if names else None, notes
    own = reading.class_names or []
    if names and len(names) != len(own):
        raise ValueError(
            f"instance masks become {len(own)} classes in {instance_mode} mode "
            f"({', '.join(own)}), but {len(names)} class names were given; give {len(own)} "
            "names or leave them out"
        )
    train = masks_to_classes(train, reading, instance_mode)
    val = masks_to_classes(val, reading, instance_mode)
    return train, val, [str(n) for n in names] if names else own, notes


def assemble_segmentation(
    sources: Sequence[Source],
    *,
    start: StartModel,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_sources: Sequence[Source] = (),
    class_names: Sequence[str] | None = None,
    masks_are: str = "auto",
    instance_mode: str = "boundary",
    synthetic: SyntheticData | None = None,
) -> Generator[Progress, None, SegmentationRun]:
    """Read, split, name the classes and load or build the start model of a segmentation run.

    Yields :class:`~napari_segen.utils.generators.Progress` while reading (and
    one per note: instance masks, changed classes); raises ValueError (a
    sentence) for data or models that do not fit.

    Args:
        sources: where the training pairs come from.
        start: ``"default"``, a model file, a loaded model / spec (resume) or a :class:`NewModel`.
        val_fraction: share held out of each source (see :func:`split_train_val`).
        seed: seed of the split (and of a new final layer).
        val_sources: explicit validation data (then no source is split).
        class_names: class names, class 0 first: a new model's, or new classes for the
            start model (renamed, or a new final layer).
        masks_are: ``auto``, ``classes`` or ``instances`` (see :func:`read_masks_as`).
        instance_mode: ``boundary`` or ``binary``: the classes instance masks become.
        synthetic: synthetic pairs (training only), mixed in or for pre-training.
    """
    read, train, val, provenance = yield from _read_and_split(
        sources, val_sources, val_fraction, seed
    )
    synth: list[LabeledImage] = []
    if synthetic is not None and synthetic.used:
        yield Progress(0, 0, f"reading synthetic {_short(synthetic.source)}")
        synth = _read_synthetic(synthetic.source)
    yield Progress(0, 0, "preparing the start model")
    loaded = load_start(start)
    if not isinstance(loaded, NewModel):
        check_segmentation_model(loaded)
    known = loaded.spec if isinstance(loaded, LoadedModel) else loaded
    count = len(class_names) if class_names else None
    if count is None and isinstance(known, ModelSpec):
        count = known.num_classes
    train, val, wanted, notes = _convert_masks(
        _whole(read, val, val_sources), train, val, masks_are, instance_mode, class_names, count
    )
    if isinstance(loaded, NewModel):
        names = choose_class_names(train + val, names=wanted, hint=_hint(read))
        model = build_new_model(loaded, train + val, names)
    else:
        names = choose_class_names(train + val, start=loaded, names=wanted)
        model, note = _fit_classes(loaded, names, seed)
        if note:
            notes.append(note)
            provenance["classes_changed_from"] = list(known.class_names)
    pretrain: list[LabeledImage] = []
    if synth:
        train, pretrain, note = _add_synthetic(train, synth, synthetic, len(names), provenance)
        notes.append(note)
    for note in notes:
        yield Progress(0, 0, note)
    return SegmentationRun(train, val, model, names, provenance, notes, pretrain)


def _fit_classes(
    start: LoadedModel | ModelSpec, names: list[str], seed: int
) -> tuple[LoadedModel | ModelSpec, str]:
    """The start model with the run's classes, and a line saying what changed ("" if nothing)."""
    spec = start.spec if isinstance(start, LoadedModel) else start
    old = list(spec.class_names)
    change = class_change(old, names)
    if change == "same":
        return start, ""
    if not isinstance(start, LoadedModel):
        raise ValueError(
            f"a resumed run keeps its classes ({', '.join(old)}); leave the class names out"
        )
    changed = with_classes(start, names, seed=seed)
    if change == "rename":
        pairs = ", ".join(f"{a} -> {b}" for a, b in zip(old, names, strict=True) if a != b)
        return changed, f"classes renamed ({pairs}); {start.name}'s weights are all kept"
    return changed, (
        f"{start.name} has {len(old)} classes ({', '.join(old)}), this run {len(names)} "
        f"({', '.join(names)}): its final layer is replaced by a new one, the rest is kept"
    )


def assemble_pix2pix(
    sources: Sequence[Source],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_sources: Sequence[Source] = (),
    class_names: Sequence[str] | None = None,
    masks_are: str = "auto",
    instance_mode: str = "boundary",
) -> Generator[Progress, None, SynthRun]:
    """Read, split and name the classes of a pix2pix run (same rules as segmentation).

    A pix2pix generator always starts new (or resumes its own file, whose
    classes the trainer keeps), so the class names follow the masks; instance
    masks become ``instance_mode`` classes, as for segmentation.
    """
    read, train, val, provenance = yield from _read_and_split(
        sources, val_sources, val_fraction, seed
    )
    count = len(class_names) if class_names else None
    train, val, wanted, notes = _convert_masks(
        _whole(read, val, val_sources), train, val, masks_are, instance_mode, class_names, count
    )
    names = choose_class_names(train + val, names=wanted, hint=_hint(read))
    for note in notes:
        yield Progress(0, 0, note)
    return SynthRun(train, val, names, provenance, notes)
