"""Helpers shared by the subcommands: model choice, input expansion, progress bars."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.image_io import IMAGE_SUFFIXES


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


def resolve_model_path(name: str) -> Path:
    """'default' -> the bundled model; anything else must be an existing file."""
    from ..models import default_model_path

    if name in ("default", "", None):
        path = Path(str(default_model_path()))
        if not path.is_file():
            raise UserError(
                f"the bundled default model is missing ({path}); reinstall napari-segen"
            )
        return path
    path = Path(name)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
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


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--images/--masks (+ --mask-map, --sparse): folders of images and masks matched by name."""
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--masks", required=True, help="folder of masks named like their images")
    parser.add_argument(
        "--mask-map",
        default=None,
        help="map raw mask values to classes, e.g. '0:1,255:0' for ISBI's membrane=0 masks "
        "(default: 0/255 masks become 0/1, other values are class indices)",
    )
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="masks are sparse strokes: 0 = not annotated (ignored), label k = class k-1",
    )


def load_pairs(args: argparse.Namespace, images: str | None = None, masks: str | None = None):
    """Training pairs from the folder arguments."""
    from ..data.datasets import pairs_from_folders
    from ..data.image_io import parse_value_map

    return pairs_from_folders(
        images or args.images,
        masks or args.masks,
        value_map=parse_value_map(args.mask_map),
        sparse=getattr(args, "sparse", False),
    )
