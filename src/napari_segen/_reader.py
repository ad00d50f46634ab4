"""npe2 reader: label images (``*labels.png|tif``, ``*mask.*``, ``*objects.*``) open as Labels.

``cells_labels.png``, ``ISBI EM labels.png`` (napari saves a layer under its own
name), ``x_mask.tif`` and ``x_objects.tif`` (``predict --instances``) all match.

:func:`napari_get_reader` never raises: it claims a path only when it names an
existing file with a label-image name whose header reads (cheap: no pixel is
decoded) and whose size is within the limit; for anything else it returns
None and napari asks another reader.
"""

from __future__ import annotations

import os
from pathlib import Path

_SUFFIXES = (".png", ".tif", ".tiff")
#: How a label image's name ends (after "_", " " or nothing), as the manifest's patterns say.
_MARKERS = ("labels", "mask", "objects")


def napari_get_reader(path):
    """Return a reader for a label image path (or a list of them), else None."""
    paths = path if isinstance(path, list | tuple) else [path]
    if not paths or not all(_is_label_file(p) for p in paths):
        return None
    return read_labels


def _as_path(path) -> Path | None:
    if not isinstance(path, str | os.PathLike):
        return None
    try:
        text = os.fspath(path)
    except TypeError:
        return None
    return Path(text) if isinstance(text, str) and text and "\0" not in text else None


def _is_label_file(path) -> bool:
    """Whether ``path`` is an existing label image whose header reads, without raising."""
    from .data.image_io import ImageReadError, image_info, max_pixels

    p = _as_path(path)
    if p is None or p.suffix.lower() not in _SUFFIXES or not p.stem.lower().endswith(_MARKERS):
        return False
    try:
        if not p.is_file():
            return False
        return image_info(p).pixels <= max_pixels()
    except (ImageReadError, OSError, ValueError):
        return False


def read_labels(path, **kwargs):
    """Read one or more label images into Labels layer data (0/255 masks become 0/1).

    A file damaged past its header gives a one-line ImageReadError napari shows.
    """
    from .data.image_io import read_mask

    paths = path if isinstance(path, list | tuple) else [path]
    return [(read_mask(p), {"name": Path(str(p)).stem}, "labels") for p in paths]
