"""Helpers shared by the subcommands: model choice, input expansion, progress bars."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.conventions import SYNTHETIC_MIXING_NOTE
from ..data.image_io import IMAGE_SUFFIXES

_NO_DATA = "no data: give --images and --masks, --voc DIR, or --stack-image and --stack-labels"


class UserError(Exception):
    """A problem with the user's input, printed as one line."""


def add_model_argument(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument(
        "--model",
        "-m",
        default=None if required else "default",
        required=required,
        help="model file (.safetensors with its .json sidecar), or 'default' for the bundled "
        "ISBI membrane U-Net" + ("" if required else " (default)"),
    )


def resolve_model_path(name: str, *, generator: bool = False) -> Path:
    """'default' -> the bundled model (with ``generator``: the bundled generator); anything
    else must be an existing file."""
    from ..models import default_generator_path, default_model_path

    if name in ("default", "", None):
        path = Path(str(default_generator_path() if generator else default_model_path()))
        if not path.is_file():
            what = "generator" if generator else "default model"
            raise UserError(f"the bundled {what} is missing ({path}); reinstall napari-segen")
        return path
    path = Path(name)
    if not path.is_file():
        raise UserError(f"{'generator ' if generator else ''}model file not found: {path}")
    return path


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            )
            if not found:
                raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"input not found: {p}")
    return out


def progress_bar(total: int | None, desc: str, disable: bool = False):
    """A tqdm bar on stderr."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="step", disable=disable, leave=False, dynamic_ncols=True
    )


def follow(bar) -> Callable[[Any], None]:
    """An ``on_event`` for :func:`~napari_segen.utils.generators.drive` that moves ``bar``
    to each event's ``done`` of ``total`` (a total of 0 means unknown: left as it is)."""

    def update(event) -> None:
        if event.total:
            bar.total = event.total
        bar.n = event.done
        bar.refresh()

    return update


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Data-source options shared by ``train``, ``evaluate`` and ``synth``."""
    g = p.add_argument_group("data (give at least one source)")
    g.add_argument("--images", help="folder of images")
    g.add_argument("--masks", help="folder of masks named like their images")
    g.add_argument(
        "--voc",
        metavar="DIR",
        help="Pascal VOC folder (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/)",
    )
    g.add_argument(
        "--voc-split",
        default=None,
        help="VOC split to use (default: train for training with val for validation, "
        "val for evaluate)",
    )
    g.add_argument("--voc-limit", type=int, default=None, help="use only the first N VOC images")
    g.add_argument("--stack-image", metavar="TIF", help="image stack TIFF (Z, H, W[, C])")
    g.add_argument(
        "--stack-labels",
        metavar="TIF",
        help="label stack TIFF matching --stack-image; all-0 slices are skipped",
    )
    g.add_argument(
        "--mask-map",
        default=None,
        help="map raw mask values to classes, e.g. '0:1,255:0' for ISBI's membrane=0 masks "
        "(default: 0/255 masks become 0/1, other values are class indices)",
    )
    g.add_argument(
        "--sparse",
        action="store_true",
        help="masks/labels are sparse strokes: 0 = not annotated (ignored), label k = class k-1",
    )  # fmt: skip
    g.add_argument(
        "--masks-are",
        choices=["auto", "classes", "instances"],
        default="auto",
        help="what the masks hold: class indices, or instance label images (one id per "
        "object, as cellpose/StarDist write them); auto detects it and says so (default: auto)",
    )
    g.add_argument(
        "--instance-mode",
        choices=["boundary", "binary"],
        default="boundary",
        help="the classes instance masks become: boundary = background, interior, boundary "
        "(keeps touching objects apart), binary = background, object (default: boundary)",
    )


def sources_from_args(args: argparse.Namespace, split: str) -> list:
    """The data sources the arguments name (:mod:`napari_segen.data.sources` sources).

    ``split`` is the VOC list to read when ``--voc-split`` is not given; for
    ``"train"`` VOC's ``val`` list becomes that source's validation data.
    """
    from ..data.image_io import parse_value_map
    from ..data.sources import DENSE, SPARSE, FolderSource, TiffStackSource, VocSource

    mode = SPARSE if args.sparse else DENSE
    value_map = parse_value_map(args.mask_map)
    if bool(args.images) != bool(args.masks):
        raise UserError("give both --images and --masks (folders of images and of their masks)")
    if bool(args.stack_image) != bool(args.stack_labels):
        raise UserError("give both --stack-image and --stack-labels")
    sources: list = []
    if args.images:
        sources.append(FolderSource(args.images, args.masks, value_map, args.sparse))
    if args.stack_image:
        sources.append(TiffStackSource(args.stack_image, args.stack_labels, mode, value_map))
    if args.voc:
        own_val = "val" if split == "train" and args.voc_split is None else None
        sources.append(VocSource(args.voc, args.voc_split or split, args.voc_limit, own_val))
    if not sources:
        raise UserError(_NO_DATA)
    return sources


def validation_sources(args: argparse.Namespace) -> list:
    """``--val-images``/``--val-masks`` as a validation source list (empty when not given)."""
    from ..data.image_io import parse_value_map
    from ..data.sources import FolderSource

    if not (args.val_images or args.val_masks):
        return []
    if not (args.val_images and args.val_masks):
        raise UserError("give both --val-images and --val-masks")
    value_map = parse_value_map(args.mask_map)
    return [FolderSource(args.val_images, args.val_masks, value_map, args.sparse)]


def load_source_pairs(args: argparse.Namespace, split: str) -> tuple[list, list | None, list]:
    """``(pairs, the sources' own validation pairs or None, class_names_hint)`` of the arguments."""
    from ..data.sources import read_sources
    from ..utils.generators import drive

    read = drive(read_sources(sources_from_args(args, split)))
    pairs = [p for s in read for p in s.pairs]
    val = [p for s in read for p in (s.val_pairs or [])]
    names = next((s.class_names for s in read if s.class_names), [])
    if not pairs:
        raise UserError(_NO_DATA)
    return pairs, val or None, list(names)


#: Why ``--synthetic-share`` is 0 unless asked for (docs/benchmarks.md, "Synthesis").
SYNTHETIC_OFF = (
    f"{SYNTHETIC_MIXING_NOTE}; give --synthetic-share (at most 0.5) or --synthetic-pretrain "
    "to use them"
)


def add_synthetic_arguments(p: argparse.ArgumentParser) -> None:
    """``--synthetic-images/--synthetic-masks/--synthetic-share/--synthetic-pretrain``."""
    g = p.add_argument_group("synthetic pairs (training only, never validated on)")
    g.add_argument(
        "--synthetic-images", metavar="DIR", help="folder of synthetic images (synth export)"
    )
    g.add_argument("--synthetic-masks", metavar="DIR", help="folder of their masks")
    g.add_argument(
        "--synthetic-share",
        type=float,
        default=0.0,
        help="most of the training crops the synthetic pairs may get, 0 to 0.5 (default: 0 = "
        "not used). On ISBI, pairs from an 'augment'-recipe generator capped at a third of the "
        "crops gave +0.020 Dice, beyond the seeds' spread (docs/benchmarks.md, Synthesis)",
    )
    g.add_argument(
        "--synthetic-pretrain",
        action="store_true",
        help="train on the synthetic pairs first, then fine-tune on the real ones (two runs; "
        "the first's best model is written to <out>.pretrain.safetensors)",
    )


def synthetic_from_args(args: argparse.Namespace, say=None):
    """The run's :class:`~napari_segen.training.synthetic_data.SyntheticData`, or None when
    unused."""
    from ..training.synthetic_data import choose_synthetic

    images = getattr(args, "synthetic_images", None)
    masks = getattr(args, "synthetic_masks", None)
    share = getattr(args, "synthetic_share", 0.0)
    pretrain = getattr(args, "synthetic_pretrain", False)
    try:
        chosen = choose_synthetic(images, masks, share, pretrain)
    except ValueError as err:
        raise UserError(str(err)) from err
    if chosen is None and images and say is not None:
        say(SYNTHETIC_OFF)
    return chosen
