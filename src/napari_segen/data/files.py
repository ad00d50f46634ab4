"""Image files as data: listing a folder, reading files lazily, pairing two folders by name.

No napari, no Qt. The metrics, the CLI and the widgets read image folders through these.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .image_io import IMAGE_SUFFIXES, ImageReadError, read_image

__all__ = ["ImageFiles", "list_images", "pair_files_by_name"]


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


class ImageFiles(Sequence):
    """Image files read lazily, one at a time, in the given order (a sized iterable)."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int | slice) -> np.ndarray | ImageFiles:  # type: ignore[override]
        if isinstance(i, slice):
            return ImageFiles(self.paths[i])
        return read_image(self.paths[i])


def pair_files_by_name(
    reals: Sequence[str | os.PathLike], fakes: Sequence[str | os.PathLike]
) -> list[tuple[Path, Path]]:
    """Pairs of files with the same name stem (``01.png`` matches ``01.tif``), in real order.

    Raises:
        ValueError: two files of one list share a stem.
    """
    fake_by_stem = _by_stem(fakes, "synthetic")
    return [(r, fake_by_stem[s]) for s, r in _by_stem(reals, "real").items() if s in fake_by_stem]


def _by_stem(files: Sequence[str | os.PathLike], what: str) -> dict[str, Path]:
    """``files`` by name stem, in order; two files of one stem are an error."""
    by_stem: dict[str, Path] = {}
    for f in map(Path, files):
        if f.stem in by_stem:
            raise ValueError(
                f"two {what} images are named {f.stem!r} ({by_stem[f.stem].name}, {f.name}); "
                "names must be unique to pair images"
            )
        by_stem[f.stem] = f
    return by_stem
