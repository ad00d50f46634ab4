"""Tile layout and blending windows for seamless sliding-window inference.

Each tile's prediction is weighted by a Gaussian window whose outer ``halo``
pixels are zero wherever the tile borders another tile (not at the image
edge). Predictions near a tile border are the ones damaged by zero padding,
so they never reach the output; where tiles overlap beyond the halo the
Gaussian weights blend them smoothly. With a halo at least the model's
receptive-field radius, tiled output equals whole-image output.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
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


@dataclass(frozen=True, eq=False)
class BlendWeights:
    """The blending weights of one tile layout: a window per tile and their sum.

    Tiles with the same borders share one (read-only) window array.
    """

    windows: dict[tuple[int, int], np.ndarray] = field(repr=False)
    norm: np.ndarray = field(repr=False)


@functools.lru_cache(maxsize=16)
def blend_weights(
    layout: TileLayout, shape: tuple[int, int], halo: int, sigma_scale: float = 0.125
) -> BlendWeights:
    """The weights of every tile of ``layout`` over ``shape``, built once per layout.

    Windows differ only by which sides border another tile, so at most nine are
    built; the normalising sum is built with them. A lone tile gets weight 1, so
    a whole-image pass returns the predictor's output unchanged. Cached: the
    slices of a stack share one layout.
    """
    th, tw = layout.tile
    if layout.num_tiles == 1:
        ones = np.ones((th, tw), np.float32)
        ones.flags.writeable = False
        norm = np.zeros(shape, np.float32)
        y, x = layout.tiles()[0]
        norm[y : y + th, x : x + tw] = 1
        norm.flags.writeable = False
        return BlendWeights({(y, x): ones}, norm)
    by_sides: dict[tuple[bool, bool, bool, bool], np.ndarray] = {}
    windows: dict[tuple[int, int], np.ndarray] = {}
    norm = np.zeros(shape, np.float32)
    for y, x in layout.tiles():
        sides = (y == 0, y + th >= shape[0], x == 0, x + tw >= shape[1])
        if sides not in by_sides:
            window = blend_window(layout, y, x, shape, halo, sigma_scale)
            window.flags.writeable = False
            by_sides[sides] = window
        windows[(y, x)] = by_sides[sides]
        norm[y : y + th, x : x + tw] += windows[(y, x)]
    norm.flags.writeable = False
    return BlendWeights(windows, norm)
