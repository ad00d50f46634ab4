"""Tile layout and blending windows for seamless sliding-window inference.

Each tile's prediction is weighted by a Gaussian window whose outer ``halo``
pixels are zero wherever the tile borders another tile (not at the image
edge). Predictions near a tile border are the ones damaged by zero padding,
so they never reach the output; where tiles overlap beyond the halo the
Gaussian weights blend them smoothly. With a halo at least the model's
receptive-field radius, tiled output equals whole-image output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class TileLayout:
    """Where tiles start along each axis of a padded image, and their size."""

    tile: tuple[int, int]
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]

    @property
    def num_tiles(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    def tiles(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.starts_y for x in self.starts_x]


def axis_starts(size: int, tile: int, stride: int) -> tuple[int, ...]:
    """Tile start positions covering ``[0, size)``; the last tile ends at ``size``."""
    if tile >= size:
        return (0,)
    starts = list(range(0, size - tile, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return tuple(starts)


def plan_tiles(
    shape: tuple[int, int], tile_size: int, overlap: int, halo: int, multiple: int
) -> TileLayout:
    """Plan tiles over a padded image of ``shape`` (both divisible by ``multiple``).

    Tile size and overlap are rounded to ``multiple`` so that every tile sits on
    the model's down-sampling grid; the overlap is widened to exceed ``2 * halo``.
    """
    tile = max(multiple, round_up(tile_size, multiple))
    ov = round_up(max(overlap, 2 * halo + multiple), multiple)
    if ov >= tile and (tile < shape[0] or tile < shape[1]):
        raise ValueError(
            f"tile size {tile_size} is too small for an overlap of {ov} px; "
            "use a larger tile size or a smaller overlap/halo"
        )
    th, tw = min(tile, shape[0]), min(tile, shape[1])
    return TileLayout(
        tile=(th, tw),
        starts_y=axis_starts(shape[0], th, tile - ov),
        starts_x=axis_starts(shape[1], tw, tile - ov),
    )


def _window_1d(n: int, at_start: bool, at_end: bool, halo: int, sigma_scale: float) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) - (n - 1) / 2
    w = np.exp(-0.5 * (t / max(sigma_scale * n, 1e-6)) ** 2)
    w = np.maximum(w / w.max(), 1e-4)
    if not at_start:
        w[:halo] = 0
    if not at_end:
        w[n - halo :] = 0
    return w


def blend_window(
    layout: TileLayout,
    y: int,
    x: int,
    shape: tuple[int, int],
    halo: int,
    sigma_scale: float = 0.125,
) -> np.ndarray:
    """The ``(th, tw)`` blending weight of the tile starting at ``(y, x)``."""
    th, tw = layout.tile
    wy = _window_1d(th, y == 0, y + th >= shape[0], halo, sigma_scale)
    wx = _window_1d(tw, x == 0, x + tw >= shape[1], halo, sigma_scale)
    return np.outer(wy, wx).astype(np.float32)
