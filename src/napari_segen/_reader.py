"""npe2 reader: label images (``*labels.png|tif``, ``*mask.*``, ``*objects.*``) open as Labels.

``cells_labels.png`` (``predict`` output), ``ISBI EM labels.png`` (napari saves
a layer under its own name), ``x_mask.tif`` and ``x_objects.tif`` (``predict
--instances``) all match. A ``NAME.zarr`` store written by block-wise
``predict`` opens lazily (dask) as a Labels layer, with its uncertainty and
probabilities as image layers when the store holds them.

:func:`napari_get_reader` never raises: it claims a path only when it names an
existing file with a label-image name whose header reads (cheap: no pixel is
decoded) and whose size is within the limit, or a zarr store whose attributes
say ``predict`` wrote it; for anything else it returns None and napari asks
another reader.
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
    if len(paths) == 1 and _is_label_store(paths[0]):
        return read_label_store
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


def _is_label_store(path) -> bool:
    """Whether ``path`` is a ``.zarr`` store that block-wise ``predict`` wrote, without raising."""
    p = _as_path(path)
    if p is None or p.suffix.lower() != ".zarr":
        return False
    try:
        if not p.is_dir():
            return False
        import zarr

        group = zarr.open_group(str(p), mode="r")
        return "napari_segen" in group.attrs and "labels" in group
    except Exception:  # zarr raises many kinds for what is not a store  # noqa: BLE001
        return False


def read_label_store(path, **kwargs):
    """A block-wise ``predict`` store as lazy layers: labels, then uncertainty, probabilities."""
    import dask.array as da
    import zarr

    path = path[0] if isinstance(path, list | tuple) else path
    p = Path(str(path))
    group = zarr.open_group(str(p), mode="r")
    classes = list(dict(group.attrs["napari_segen"]).get("classes") or [])
    name = p.stem
    labels = da.from_zarr(str(p), component="labels")
    layers = [(labels, {"name": f"{name} labels", "metadata": {"class_names": classes}}, "labels")]
    if "uncertainty" in group:
        unsure = da.from_zarr(str(p), component="uncertainty")
        meta = {"name": f"{name} uncertainty", "colormap": "magma", "contrast_limits": [0, 1],
                "visible": False}  # fmt: skip
        layers.append((unsure, meta, "image"))
    if "probabilities" in group:
        probs = da.from_zarr(str(p), component="probabilities")
        k = probs.shape[-3]
        names = classes if len(classes) == k else [str(c) for c in range(k)]
        meta = {"name": [f"{name} P({c})" for c in names], "channel_axis": probs.ndim - 3,
                "colormap": "magma", "contrast_limits": [0, 1], "visible": False}  # fmt: skip
        layers.append((probs, meta, "image"))
    return layers


def read_labels(path, **kwargs):
    """Read one or more label images into Labels layer data (0/255 masks become 0/1).

    A file damaged past its header gives a one-line ImageReadError napari shows.
    """
    from .data.image_io import read_mask

    paths = path if isinstance(path, list | tuple) else [path]
    return [(read_mask(p), {"name": Path(str(p)).stem}, "labels") for p in paths]
