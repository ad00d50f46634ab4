"""Reading images and masks, writing label images. No napari, no Qt.

Images keep their dtype (8/16-bit, float). Masks become integer class indices:
binary 0/255 masks map to 0/1, palette PNGs (Pascal VOC) give their palette
indices, and any value map can be applied on top.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..utils.atomic import atomic_path
from .layout import is_rgb_shape

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")


class ImageReadError(ValueError):
    """An image or mask file could not be read."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"folder not found: {folder}")
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an array of its own dtype.

    TIFF files may hold stacks (``(Z, H, W)`` or ``(Z, H, W, C)``). Palette
    images are converted to RGB; 16-bit PNGs stay 16-bit.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return np.asarray(im)
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise ImageReadError(f"cannot read {path} as an image ({err})") from err


def read_mask(
    path: str | os.PathLike,
    value_map: Mapping[int, int] | None = None,
) -> np.ndarray:
    """Read a mask file as int64 class indices.

    * Palette PNGs (e.g. Pascal VOC ``SegmentationClass``) give their palette indices.
    * Binary masks holding only 0 and 255 give 0 and 1.
    * Otherwise the values are the classes.
    ``value_map`` (e.g. ``{0: 1, 255: 0}`` for ISBI's inverted masks) is applied to
    the raw values instead of the binary rule.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"mask file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            raw = np.asarray(tifffile.imread(path))
        else:
            with Image.open(path) as im:
                raw = np.asarray(im if im.mode in ("P", "L", "I", "I;16", "1") else im)
    except (OSError, ValueError, tifffile.TiffFileError) as err:
        raise ImageReadError(f"cannot read {path} as a mask ({err})") from err
    if raw.ndim == 3 and is_rgb_shape(raw.shape):
        raise ImageReadError(
            f"{path} is a colour image, not a mask: save masks as single-channel "
            "label images (class index per pixel) or palette PNGs"
        )
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if not np.issubdtype(raw.dtype, np.integer) and not np.all(np.mod(raw, 1) == 0):
        raise ImageReadError(f"{path} holds non-integer values; masks must hold class indices")
    return map_mask_values(raw, value_map)


def map_mask_values(raw: np.ndarray, value_map: Mapping[int, int] | None = None) -> np.ndarray:
    """Apply ``value_map`` to raw mask values, else the binary 0/255 -> 0/1 rule."""
    raw = np.asarray(raw)
    if value_map:
        out = raw.astype(np.int64)
        for src, dst in value_map.items():
            out[raw == src] = dst
        return out
    out = raw.astype(np.int64)
    uniq = np.unique(out)
    if len(uniq) <= 2 and set(uniq.tolist()) <= {0, 255} and 255 in uniq:
        out = (out == 255).astype(np.int64)
    return out


def parse_value_map(text: str | None) -> dict[int, int] | None:
    """Parse ``"0:1,255:0"`` into ``{0: 1, 255: 0}``; None or "" gives None."""
    if not text:
        return None
    out: dict[int, int] = {}
    for part in text.split(","):
        try:
            src, dst = part.split(":")
            out[int(src)] = int(dst)
        except ValueError as err:
            raise ValueError(
                f"bad value map entry {part!r}: write pairs like '0:1,255:0' (raw value:class)"
            ) from err
    return out


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Write a label image atomically as PNG (2D, < 65536 labels) or TIFF (any).

    Refuses to replace an existing file unless ``overwrite`` is True.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise ValueError(f"labels are written as {', '.join(LABEL_SUFFIXES)}, not {path.suffix!r}")
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0):
        raise ValueError("labels must be non-negative to be saved as an image")
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    data = labels.astype(dtype)
    with atomic_path(path, overwrite) as tmp:
        if suffix == ".png":
            if data.ndim != 2 or dtype == np.uint32:
                raise ValueError(
                    "PNG holds 2D labels below 65536; save stacks or larger ids as .tif"
                )
            Image.fromarray(data).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack")
    return path
