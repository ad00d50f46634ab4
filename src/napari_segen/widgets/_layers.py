"""Small helpers to put core results into napari layers predictably."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

    from ..models.model_file import ModelSpec


def label_colormap(spec: ModelSpec):
    """A napari label colormap with the model's class colours (class 0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, object] = {0: "transparent", None: "magenta"}
    for i, c in enumerate(spec.class_colors):
        if i and c:
            colors[i] = c
    return DirectLabelColormap(color_dict=colors)


def class_features(spec: ModelSpec) -> dict[str, list]:
    """A Labels ``features`` table so the status bar shows the class name under the cursor."""
    return {"index": list(range(spec.num_classes)), "class": list(spec.class_names)}


def write_labels_layer(
    viewer: napari.Viewer,
    image_layer: Image,
    labels: np.ndarray,
    spec: ModelSpec,
    target: Labels | None = None,
    index: tuple[int, ...] = (),
    full_shape: tuple[int, ...] | None = None,
) -> Labels:
    """Put ``labels`` into ``target`` (undoable) or into ``<image> labels`` (created if absent).

    Only changed pixels are written to an existing layer, through
    ``Labels.data_setitem``, so Ctrl+Z restores the user's previous labels.
    With ``index`` (a stack position) and ``full_shape``, ``labels`` is one slice
    of a stack and only that slice is written.
    """
    from napari.layers import Labels

    name = f"{image_layer.name} labels"
    if index:
        stack = np.zeros(full_shape, labels.dtype)
        stack[index] = labels
        labels = stack
    if target is None and name in viewer.layers and isinstance(viewer.layers[name], Labels):
        target = viewer.layers[name]
    if target is not None and tuple(target.data.shape) == tuple(labels.shape):
        current = np.asarray(target.data[index] if index else target.data)
        new = labels[index] if index else labels
        changed = current != new
        if changed.any():
            where = tuple(np.full(int(changed.sum()), i) for i in index) + np.nonzero(changed)
            target.data_setitem(where, new[changed].astype(target.data.dtype))
        layer = target
    else:
        if target is not None:
            raise ValueError(
                f"layer {target.name!r} has shape {target.data.shape} but the segmentation has "
                f"shape {labels.shape}; choose a matching Labels layer or a new layer"
            )
        layer = viewer.add_labels(
            labels,
            name=name,
            scale=image_layer.scale[-labels.ndim :],
            translate=image_layer.translate[-labels.ndim :],
            opacity=0.6,
        )
    layer.colormap = label_colormap(spec)
    layer.features = class_features(spec)
    layer.metadata["class_names"] = list(spec.class_names)
    return layer
