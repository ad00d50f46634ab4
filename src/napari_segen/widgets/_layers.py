"""Small helpers to put core results into napari layers predictably."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

    from ..models.model_file import ModelSpec

#: Labels-layer metadata: the classes the model predicted, as segmented (a private copy,
#: so painting the layer leaves it as it was), and which stack slices were segmented.
#: Training compares the layer with it to find the pixels the user corrected.
PREDICTION_KEY = "napari_segen_prediction"
PREDICTED_KEY = "napari_segen_predicted"


def viewer_camera(viewer: napari.Viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def canvas_size(viewer: napari.Viewer) -> tuple[int, int]:
    """The canvas's ``(height, width)`` in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) or getattr(viewer, "_canvas_size", (600, 800))
    return int(size[0]), int(size[1])


def preferred_labels(viewer: napari.Viewer, image_name: str | None = None) -> Labels | None:
    """The Labels layer a form should offer first for ``image_name``.

    ``<image> labels`` when it is visible (what Segment writes and the user
    corrects), else a visible layer Segment wrote, else the first visible
    Labels layer, else ``<image> labels``, else the first Labels layer: a
    hidden layer (often the ground truth kept for scoring) is never preferred
    over a visible one.
    """
    from napari.layers import Labels

    layers = [layer for layer in viewer.layers if isinstance(layer, Labels)]
    if not layers:
        return None
    named = [ly for ly in layers if image_name and ly.name == f"{image_name} labels"]
    visible = [ly for ly in layers if ly.visible]
    predicted = [ly for ly in visible if PREDICTION_KEY in ly.metadata]
    for group in ([ly for ly in named if ly.visible], predicted, visible, named, layers):
        if group:
            return group[0]
    return None


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
    remember_prediction(layer, labels[index] if index else labels, index)
    return layer


def remember_prediction(layer: Labels, labels: np.ndarray, index: tuple[int, ...] = ()) -> None:
    """Keep a copy of the model's ``labels`` (one slice at ``index``) in the layer's metadata.

    ``metadata[PREDICTION_KEY]`` has the layer's shape; ``metadata[PREDICTED_KEY]``
    is a bool array over the stack axes (a 0-d array for one image) marking the
    slices that hold a prediction.
    """
    shape = tuple(layer.data.shape)
    leading = shape[: len(shape) - 2]
    meta = layer.metadata
    if not index:
        meta[PREDICTION_KEY] = np.array(labels, copy=True)
        meta[PREDICTED_KEY] = np.ones(leading, bool)
        return
    pred, done = meta.get(PREDICTION_KEY), meta.get(PREDICTED_KEY)
    if pred is None or tuple(pred.shape) != shape or done is None or done.shape != leading:
        pred, done = np.zeros(shape, labels.dtype), np.zeros(leading, bool)
    pred[index] = labels  # in place: the Train widget takes its own copy
    done[index] = True
    meta[PREDICTION_KEY], meta[PREDICTED_KEY] = pred, done
