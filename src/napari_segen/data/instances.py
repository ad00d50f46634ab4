"""Instance label images (one id per object) and the semantic masks a network learns from them.

Cellpose- and StarDist-style annotations give each nucleus or cell its own id.
A segmentation network learns classes, not ids, so such a mask is turned into
either ``binary`` classes (0 background, 1 object) or the ``boundary`` classes
(0 background, 1 interior, 2 boundary) that let touching objects be separated
again afterwards (:mod:`napari_segen.inference.instances`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from .conventions import IGNORE_INDEX

#: How an instance mask becomes classes.
INSTANCE_MODES = ("binary", "boundary")
#: Class names of each mode.
INSTANCE_CLASS_NAMES = {
    "binary": ["background", "object"],
    "boundary": ["background", "interior", "boundary"],
}
#: A mask with more distinct non-zero ids than this is read as instances when not told.
MIN_INSTANCE_IDS = 8


@dataclass(frozen=True)
class MaskKind:
    """What a mask looks like: ``"classes"`` or ``"instances"``, and why."""

    kind: str
    reason: str
    num_ids: int = 0


def detect_mask_kind(mask: np.ndarray, num_classes: int | None = None) -> MaskKind:
    """Tell a class-index mask from an instance label image (one id per object).

    A mask is read as instances when it holds more than :data:`MIN_INSTANCE_IDS`
    distinct non-zero ids, more than the ``num_classes`` a model expects (when
    given), and most ids form one connected region each (classes spread over
    many regions; objects do not).
    """
    m = np.asarray(mask)
    valid = m[m != IGNORE_INDEX] if np.issubdtype(m.dtype, np.signedinteger) else m.ravel()
    ids = np.unique(valid)
    ids = ids[ids > 0]
    n = int(ids.size)
    if n <= MIN_INSTANCE_IDS or (num_classes is not None and n < num_classes):
        return MaskKind("classes", f"{n} distinct non-zero value(s)", n)
    objects = ndimage.find_objects(np.where(m > 0, m, 0).astype(np.int64))
    single = 0
    checked = 0
    for i, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        checked += 1
        _, count = ndimage.label(m[sl] == i)
        single += count == 1
    if checked and single / checked >= 0.8:
        return MaskKind(
            "instances",
            f"{n} distinct ids, {single} of {checked} forming one connected region each",
            n,
        )
    return MaskKind("classes", f"{n} distinct values spread over several regions each", n)


def instances_to_classes(instances: np.ndarray, mode: str = "boundary") -> np.ndarray:
    """Turn an instance label image into int64 classes for training.

    ``binary``: 0 background, 1 object. ``boundary``: 0 background, 1 interior,
    2 the objects' inner boundary pixels, so two touching objects stay apart.
    Negative values (unannotated) stay :data:`IGNORE_INDEX`.
    """
    if mode not in INSTANCE_MODES:
        raise ValueError(f"instance mode must be one of {', '.join(INSTANCE_MODES)}, not {mode!r}")
    inst = np.asarray(instances)
    unannotated = inst < 0 if np.issubdtype(inst.dtype, np.signedinteger) else None
    ids = np.where(inst > 0, inst, 0).astype(np.int64)
    out = (ids > 0).astype(np.int64)
    if mode == "boundary":
        out[find_boundaries(ids, mode="inner") & (ids > 0)] = 2
    if unannotated is not None:
        out[unannotated] = IGNORE_INDEX
    return out
