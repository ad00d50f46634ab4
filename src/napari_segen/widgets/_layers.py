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
#: Labels-layer metadata: bool, the layer's shape, True where ``PREDICTION_KEY`` holds the
#: model's classes of a region ("Only the visible region") of a slice not segmented whole.
PREDICTED_REGION_KEY = "napari_segen_predicted_region"


def viewer_camera(viewer: napari.Viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def canvas_size(viewer: napari.Viewer) -> tuple[int, int]:
    """The canvas's ``(height, width)`` in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None) or getattr(viewer, "_canvas_size", (600, 800))
    return int(size[0]), int(size[1])


def visible_box(
    viewer: napari.Viewer,
    layer: Image,
    *,
    whole_below: int = 0,
    max_side: float | None = None,
) -> tuple[tuple[int, ...], int, int, int, int]:
    """``(slice index, y0, y1, x0, x1)`` of ``layer`` shown on the canvas, in data pixels.

    The box is the camera's view mapped into the layer's data (level 0 of a
    multiscale layer), clipped to the image; ``index`` is the displayed stack
    position (``()`` for one image). Images of at most ``whole_below`` pixels are
    returned whole; ``max_side`` caps each side around the view's centre.
    """
    from ..data.layout import spatial_layout

    data = layer.data[0] if layer.multiscale else layer.data
    leading, _ = spatial_layout(tuple(data.shape), layer.rgb)
    h, w = data.shape[len(leading) : len(leading) + 2]
    point = list(viewer.dims.point)
    index: tuple[int, ...] = ()
    if leading:
        at = layer.world_to_data(point)
        index = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(at, leading, strict=False))
    if h * w <= whole_below:
        return (index, 0, h, 0, w)
    camera = viewer_camera(viewer)
    ch, cw = canvas_size(viewer)
    displayed = list(viewer.dims.displayed)[-2:]
    center = list(camera.center)[-2:]
    corners = []
    for dy, dx in ((-1, -1), (1, 1)):
        p = list(point)
        p[displayed[0]] = center[0] + dy * ch / camera.zoom / 2
        p[displayed[1]] = center[1] + dx * cw / camera.zoom / 2
        corners.append(layer.world_to_data(p)[-2:])
    (ya, xa), (yb, xb) = corners
    y0, y1 = sorted((ya, yb))
    x0, x1 = sorted((xa, xb))
    if max_side is not None:
        cy, cx, half = (y0 + y1) / 2, (x0 + x1) / 2, max_side / 2
        y0, y1 = max(y0, cy - half), min(y1, cy + half)
        x0, x1 = max(x0, cx - half), min(x1, cx + half)
    y0, y1 = max(y0, 0), min(y1, h)
    x0, x1 = max(x0, 0), min(x1, w)
    return (index, int(y0), int(np.ceil(y1)), int(x0), int(np.ceil(x1)))


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
    box: tuple[int, int, int, int] | None = None,
) -> Labels:
    """Put ``labels`` into ``target`` (undoable) or into ``<image> labels`` (created if absent).

    Only changed pixels are written to an existing layer, through
    ``Labels.data_setitem``, so Ctrl+Z restores the user's previous labels.
    With ``index`` (a stack position) and ``full_shape``, ``labels`` is one slice
    of a stack and only that slice is written. With ``box`` ``(y0, y1, x0, x1)``
    and ``full_shape`` (the layer's shape), ``labels`` is that box of the image
    (of slice ``index``) and only the box is written: the rest of the layer is
    left as it was.
    """
    from napari.layers import Labels

    name = f"{image_layer.name} labels"
    if box is not None:
        layer = _write_box(viewer, image_layer, labels, target, index, tuple(full_shape), box)
        _describe(layer, spec)
        remember_prediction(layer, labels, index, box)
        return layer
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
    _describe(layer, spec)
    remember_prediction(layer, labels[index] if index else labels, index)
    return layer


def _describe(layer: Labels, spec: ModelSpec) -> None:
    """The model's class colours, names (features) and class list on ``layer``."""
    layer.colormap = label_colormap(spec)
    layer.features = class_features(spec)
    layer.metadata["class_names"] = list(spec.class_names)


def _write_box(
    viewer: napari.Viewer,
    image_layer: Image,
    labels: np.ndarray,
    target: Labels | None,
    index: tuple[int, ...],
    full_shape: tuple[int, ...],
    box: tuple[int, int, int, int],
) -> Labels:
    """Write ``labels`` into the box of ``target`` (undoably) or of ``<image> labels``."""
    from napari.layers import Labels

    y0, y1, x0, x1 = box
    name = f"{image_layer.name} labels"
    old = viewer.layers[name] if name in viewer.layers else None  # noqa: SIM401
    if target is None and isinstance(old, Labels) and tuple(old.data.shape) == full_shape:
        target = old
    if target is None:
        data = np.zeros(full_shape, labels.dtype)
        data[(*index, slice(y0, y1), slice(x0, x1))] = labels
        return viewer.add_labels(
            data,
            name=name,
            scale=image_layer.scale[-data.ndim :],
            translate=image_layer.translate[-data.ndim :],
            opacity=0.6,
        )
    if tuple(target.data.shape) != full_shape:
        raise ValueError(
            f"layer {target.name!r} has shape {target.data.shape} but the image has shape "
            f"{full_shape}; choose a matching Labels layer or a new layer"
        )
    current = np.asarray(target.data[(*index, slice(y0, y1), slice(x0, x1))])
    changed = current != labels
    if changed.any():
        ys, xs = np.nonzero(changed)
        where = tuple(np.full(len(ys), i) for i in index) + (ys + y0, xs + x0)
        target.data_setitem(where, labels[changed].astype(target.data.dtype))
    return target


def remember_prediction(
    layer: Labels,
    labels: np.ndarray,
    index: tuple[int, ...] = (),
    box: tuple[int, int, int, int] | None = None,
) -> None:
    """Keep a copy of the model's ``labels`` (one slice at ``index``) in the layer's metadata.

    ``metadata[PREDICTION_KEY]`` has the layer's shape; ``metadata[PREDICTED_KEY]``
    is a bool array over the stack axes (a 0-d array for one image) marking the
    slices that hold a prediction. With ``box`` ``(y0, y1, x0, x1)``, ``labels``
    is that box of the slice: it is stored there and the rest is kept. A slice
    segmented only in boxes stays unmarked in ``PREDICTED_KEY`` (training treats
    it as plain labels, not as corrections of a prediction); ``PREDICTED_REGION_KEY``
    marks its boxes. A box of a slice segmented whole keeps the slice marked.
    """
    shape = tuple(layer.data.shape)
    leading = shape[: len(shape) - 2]
    meta = layer.metadata
    region = meta.pop(PREDICTED_REGION_KEY, None)
    if region is not None and tuple(region.shape) != shape:
        region = None
    if box is None and not index:
        meta[PREDICTION_KEY] = np.array(labels, copy=True)
        meta[PREDICTED_KEY] = np.ones(leading, bool)
        return
    pred, done = meta.get(PREDICTION_KEY), meta.get(PREDICTED_KEY)
    if pred is None or tuple(pred.shape) != shape or done is None or done.shape != leading:
        pred, done, region = np.zeros(shape, labels.dtype), np.zeros(leading, bool), None
    if box is None:
        pred[index] = labels  # in place: the Train widget takes its own copy
        done[index] = True
        if region is not None:
            region[index] = False
    else:
        y0, y1, x0, x1 = box
        at = (*index, slice(y0, y1), slice(x0, x1))
        pred[at] = labels
        if not done[index]:
            if region is None:
                region = np.zeros(shape, bool)
            region[at] = True
    meta[PREDICTION_KEY], meta[PREDICTED_KEY] = pred, done
    if region is not None:
        meta[PREDICTED_REGION_KEY] = region
