"""Small constructed images of objects, shared by the object tests (not a test module)."""

from __future__ import annotations

import numpy as np


def touching_discs(size: int = 96, seed: int = 0, dtype=np.uint16) -> np.ndarray:
    """An instance label image of 9 discs in a 3 x 3 grid, neighbours touching.

    ``seed`` jitters each centre by up to one pixel, so different seeds give
    different but equally hard layouts.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), dtype)
    r = size // 6
    k = 0
    for cy in (r, 3 * r, 5 * r):
        for cx in (r, 3 * r, 5 * r):
            k += 1
            jy, jx = rng.integers(-1, 2, 2)
            inst[((yy - cy - jy) ** 2 + (xx - cx - jx) ** 2 <= (r + 1) ** 2) & (inst == 0)] = k
    return inst
