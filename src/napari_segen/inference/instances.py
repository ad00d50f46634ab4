"""Objects from class probabilities: one id per object, by seeded watershed (scikit-image).

Which pixels make an object depends on what the model learned, read from its
class names:

* ``boundary`` models (background, interior, boundary): seeds are the confident
  interiors; the watershed over the boundary probability gives each foreground
  pixel to a seed, so touching objects stay apart.
* ``membrane`` models (cell interior, membrane; the EM sample): the cells are the
  regions enclosed by membrane; seeds are confident interiors, and the membrane
  pixels go to the nearest cell along the membrane probability.
* ``foreground`` models (background + object classes): objects are the
  foreground's connected components, split where the distance transform has
  separate peaks (touching round objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.measure import label as connected_components
from skimage.measure import regionprops_table
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from .predict import class_labels

INSTANCE_METHODS = ("auto", "boundary", "membrane", "foreground")


@dataclass
class Instances:
    """Objects found in one image.

    Attributes:
        labels: ``(H, W)`` int32, 0 = no object, 1..N one id per object.
        method: how they were found (see the module docstring).
        features: napari-style features table: ``label``, ``area``, ``centroid_y``, ``centroid_x``.
    """

    labels: np.ndarray
    method: str
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.labels.max()) if self.labels.size else 0


def instance_method(class_names: Sequence[str]) -> str:
    """The objects rule for a model with these class names (see the module docstring)."""
    names = [n.lower() for n in class_names]
    if len(names) >= 3 and any("boundar" in n or "contour" in n for n in names):
        return "boundary"
    if any("membrane" in n for n in names):
        return "membrane"
    return "foreground"


def find_instances(
    probabilities: np.ndarray,
    class_names: Sequence[str],
    *,
    method: str = "auto",
    min_size: int = 16,
    seed_threshold: float = 0.5,
    min_distance: int = 5,
) -> Instances:
    """Turn ``(K, H, W)`` class probabilities of one image into objects.

    Args:
        probabilities: softmax output, classes first.
        class_names: the model's class names (they choose the rule when ``method="auto"``).
        method: ``auto``, ``boundary``, ``membrane`` or ``foreground``.
        min_size: objects (and seeds) smaller than this many pixels are dropped.
        seed_threshold: interior probability above which a pixel can seed an object.
        min_distance: smallest distance between two object centres (``foreground`` rule).
    """
    p = np.asarray(probabilities, np.float32)
    if p.ndim != 3 or p.shape[0] != len(class_names):
        raise ValueError(
            f"expected probabilities of shape (classes={len(class_names)}, H, W), got {p.shape}"
        )
    if method == "auto":
        method = instance_method(class_names)
    if method not in INSTANCE_METHODS[1:]:
        raise ValueError(f"objects method must be one of {', '.join(INSTANCE_METHODS)}")
    names = [n.lower() for n in class_names]
    if method == "boundary":
        b = class_index(names, ("boundar", "contour"), default=2)
        i = class_index(names, ("interior", "object", "cell", "nucle"), default=1)
        fg = class_labels(torch.from_numpy(p)) != 0
        seeds = _seeds(p[i] > seed_threshold, min_size)
        labels = watershed(p[b], seeds, mask=fg)
    elif method == "membrane":
        m = class_index(names, ("membrane",), default=1)
        interior = 1.0 - p[m]
        seeds = _seeds(interior > max(seed_threshold, 0.5), min_size)
        labels = watershed(p[m], seeds)
    else:
        fg = class_labels(torch.from_numpy(p)) != 0
        fg = remove_small_objects(fg, max_size=max(min_size - 1, 0))
        dist = ndimage.distance_transform_edt(fg)
        comps = connected_components(fg)
        peaks = peak_local_max(dist, min_distance=min_distance, labels=comps, exclude_border=False)
        markers = np.zeros(fg.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-dist, markers, mask=fg)
    labels = _relabel(remove_small_objects(labels.astype(np.int32), max_size=max(min_size - 1, 0)))
    return Instances(labels, method, instance_features(labels))


def instance_features(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-object ``label``, ``area`` and centroid, for a napari Labels layer's features."""
    if not labels.any():
        return {k: np.zeros(0) for k in ("label", "area", "centroid_y", "centroid_x")}
    t = regionprops_table(labels, properties=("label", "area", "centroid"))
    return {
        "label": t["label"],
        "area": t["area"],
        "centroid_y": t["centroid-0"],
        "centroid_x": t["centroid-1"],
    }


def class_index(names: list[str], keys: tuple[str, ...], default: int) -> int:
    """The first class whose (lower-case) name holds one of ``keys``, else ``default``."""
    for j, n in enumerate(names):
        if any(k in n for k in keys):
            return j
    return min(default, len(names) - 1)


def _seeds(mask: np.ndarray, min_size: int) -> np.ndarray:
    return connected_components(remove_small_objects(mask, max_size=max(min_size - 1, 0)))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N in raster order of first appearance."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]
