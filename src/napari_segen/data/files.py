"""Image files as data: listing a folder, reading files lazily, pairing two folders by name.

No napari, no Qt. The metrics, the CLI and the widgets read image folders through these.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .image_io import list_images, read_image

__all__ = ["ImageFiles", "list_images", "pair_files_by_name"]


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
    by_stem: dict[str, Path] = {}
    for f in map(Path, fakes):
        if f.stem in by_stem:
            raise ValueError(
                f"two synthetic images are named {f.stem!r} ({by_stem[f.stem].name}, {f.name}); "
                "names must be unique to pair images"
            )
        by_stem[f.stem] = f
    seen: dict[str, Path] = {}
    pairs = []
    for r in map(Path, reals):
        if r.stem in seen:
            raise ValueError(
                f"two real images are named {r.stem!r} ({seen[r.stem].name}, {r.name}); "
                "names must be unique to pair images"
            )
        seen[r.stem] = r
        if r.stem in by_stem:
            pairs.append((r, by_stem[r.stem]))
    return pairs
