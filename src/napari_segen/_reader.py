"""npe2 reader: label images (``*_labels.png|tif``, ``*_mask.png|tif``) open as Labels layers."""

from __future__ import annotations

from pathlib import Path

_SUFFIXES = (".png", ".tif", ".tiff")
_MARKERS = ("_labels", "_mask")


def napari_get_reader(path):
    """Return a reader for a label image path, else None (readers never raise)."""
    if isinstance(path, list):
        if not path or not all(_is_label_file(p) for p in path):
            return None
    elif not _is_label_file(path):
        return None
    return read_labels


def _is_label_file(path) -> bool:
    p = Path(str(path))
    return p.suffix.lower() in _SUFFIXES and p.stem.lower().endswith(_MARKERS)


def read_labels(path):
    """Read one or more label images into Labels layer data (0/255 masks become 0/1)."""
    from .data.image_io import read_mask

    paths = path if isinstance(path, list) else [path]
    return [(read_mask(p), {"name": Path(str(p)).stem}, "labels") for p in paths]
