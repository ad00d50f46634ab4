"""npe2 writer: a Labels layer to PNG (2D) or TIFF (any dimensionality), written atomically.

napari's save dialog has already asked before replacing a file, so this writer may overwrite.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer's data to ``path``; returns the written path."""
    from .data.image_io import write_labels as _write

    _write(path, np.asarray(data), overwrite=True)
    return [path]
