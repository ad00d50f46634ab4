"""The Segment dock widget: pick an image, a model, a device and a tile size; press Segment.

Options (under "Options"): class probabilities, test-time augmentation, an
uncertainty map and the objects (instances) of the segmentation. **Next region
to correct** shows the most uncertain tile of the last segmentation that has
not been visited yet: the camera moves there, a rectangle outlines it, and the
status says which it is ("region 3 of 16, mean uncertainty 0.41"); correct it
with the brush, press again for the next one.

**Only the visible region** (under "Options") is a quick look at a huge image:
only the part of the image in view (the displayed slice of a stack; level 0 of
a multiscale image, at most :data:`MAX_REGION_SIDE` pixels a side) is
segmented and written into the labels layer at its place; the rest of the layer
is left as it was, so regions can be segmented one by one while looking around.
The box is widened to the whole image's tiles that reach into it and normalised
with the whole plane's statistics (of the coarsest level for a multiscale
image), so its labels are the ones a whole-image run gives (see
:func:`~napari_segen.inference.blockwise.region_crop`).

**Folder** (folded) segments every image of a folder into label files in an
output folder, as ``napari-segen predict`` does (``<name>_labels.png``, ``.tif``
for stacks; existing files are never replaced), with the model, device, tile
size and test-time augmentation chosen above.

The model's own prediction is kept in the labels layer's metadata (see
:func:`~napari_segen.widgets._layers.remember_prediction`), so the Train widget
can weight the pixels the user changed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    PushButton,
    SpinBox,
    create_widget,
)
from napari.utils.notifications import show_error, show_info, show_warning

from ..data.conventions import DEFAULT_TILE_SIZE
from ..data.files import list_images
from ..data.image_io import ImageReadError
from ..data.layout import spatial_layout
from ..data.normalize import normalize_image, to_channels_first
from ..inference import Prediction, iter_predict
from ..inference.batch import (
    BatchProgress,
    BatchResult,
    BatchSettings,
    iter_predict_files,
    plan_batch,
)
from ..inference.blockwise import PlaneView, plane_stats, region_crop
from ..inference.instances import Instances, find_instances, instance_features
from ..inference.predict import size_multiple
from ..inference.uncertainty import Region, next_region, rank_regions
from ..models import ModelFileError, default_model_path, load_model, read_spec
from ..models.model_file import LoadedModel
from ..utils.atomic import OutputCollisionError
from ..utils.devices import available_devices
from ..utils.generators import Progress
from ._layers import canvas_size, viewer_camera, visible_box, write_labels_layer
from ._layout import collapsible, fit_label, insert_before, make_scrollable
from ._model_catalog import DEFAULT_CHOICE, catalog
from ._worker import TaskRunner

if TYPE_CHECKING:
    import napari

_FILE_CHOICE = "model file..."
_NEW_LAYER = "new layer (<image> labels)"

#: Edge of the square regions "Next region to correct" ranks (image pixels).
REGION_SIZE = 128
#: Share of the canvas a region fills after the camera moves to it.
REGION_FILL = 0.8
#: "Only the visible region" of a multiscale image: the largest side (level-0 pixels).
MAX_REGION_SIDE = 4096


@dataclass
class Segmentation:
    """What the worker hands back: the prediction and, when asked for, the objects."""

    prediction: Prediction
    objects: Instances | None = None


@dataclass
class _Last:
    """The last segmentation, for ranking regions: its image layer, uncertainty and slice."""

    layer: Any
    uncertainty: np.ndarray  # (H, W) of slice ``index``, or (..., H, W) of the whole stack
    index: tuple[int, ...] = ()
    ranked: dict[tuple, list[Region]] = field(default_factory=dict)


def segment_job(
    model: Any, data: Any, *, objects: bool = False, **predict_options: Any
) -> Generator[Progress, None, Segmentation]:
    """Predict (and find the objects of) ``data`` in a worker thread, yielding progress."""
    prediction = yield from iter_predict(model, data, **predict_options)
    found = None
    if objects and prediction.probabilities is not None:
        yield Progress(0, 0, "finding objects")
        found = stack_instances(prediction.probabilities, model.spec.class_names)
    return Segmentation(prediction, found)


def region_job(
    model: Any,
    plane: Any,
    box: tuple[int, int, int, int],
    crop: tuple[int, int, int, int],
    *,
    rgb: bool,
    stats_plane: Any,
    **predict_options: Any,
) -> Generator[Progress, None, Segmentation]:
    """Segment ``box`` of ``plane`` (a lazy 2D image) in a worker thread, yielding progress.

    Normalisation statistics come from ``stats_plane`` (the whole plane, or a
    coarser level of it), read block by block; then only ``crop`` (see
    :func:`region_crop`) is read, normalised with them and segmented by
    :func:`iter_predict`; the result is the box's part.
    """
    spec = model.spec
    stats = yield from plane_stats(stats_plane, model, rgb)
    cy0, cy1, cx0, cx1 = crop
    raw = np.asarray(plane[cy0:cy1, cx0:cx1])
    chw = normalize_image(
        to_channels_first(raw, spec.in_channels, rgb=rgb),
        spec.normalization,
        source_dtype=raw.dtype,
        stats=stats,
    )
    ready = chw[0] if chw.shape[0] == 1 else np.moveaxis(chw, 0, -1)
    as_is = LoadedModel(model.module, replace(spec, normalization={"mode": "none"}), model.path)
    pred = yield from iter_predict(as_is, ready, rgb=chw.shape[0] > 1, **predict_options)
    y0, y1, x0, x1 = box
    inner = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
    unsure = None if pred.uncertainty is None else pred.uncertainty[inner]
    return Segmentation(Prediction(labels=pred.labels[inner], uncertainty=unsure))


def stack_instances(probabilities: np.ndarray, class_names: list[str]) -> Instances:
    """:func:`find_instances` of an image's ``(K, H, W)`` probabilities or of each slice of a
    stack (``(..., K, H, W)``; ids run on across slices, ``slice`` says where each one is)."""
    if probabilities.ndim == 3:
        return find_instances(probabilities, class_names)
    leading = probabilities.shape[:-3]
    labels = np.zeros((*leading, *probabilities.shape[-2:]), np.int32)
    method, top, slices = "", 0, []
    for i, idx in enumerate(np.ndindex(*leading)):
        one = find_instances(probabilities[idx], class_names)
        method = one.method
        labels[idx] = np.where(one.labels > 0, one.labels + top, 0)
        slices += [i] * one.count
        top += one.count
    features = instance_features_stack(labels)
    features["slice"] = np.asarray(slices, int)
    return Instances(labels, method, features)


def instance_features_stack(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-object label, area and (in-plane) centroid of a stack of object labels."""
    parts = [instance_features(labels[idx]) for idx in np.ndindex(*labels.shape[:-2])]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class SegmentWidget(Container):
    """Segment the chosen image layer into a Labels layer, off the GUI thread.

    Sub-widgets are attributes so tests and other widgets can set them and call
    :meth:`run` and :meth:`next_region` directly. ``region_size`` is the edge of
    the regions "Next region to correct" ranks.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.region_size = REGION_SIZE
        self.last: _Last | None = None
        self._visited: dict[tuple, list[tuple[int, int]]] = {}
        self.image = create_widget(label="Image", annotation="napari.layers.Image")
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model_file = FileEdit(label="Model file", filter="*.safetensors", visible=False)
        self.classes = fit_label(Label(label="Classes"))  # a long class list wraps
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self.tile_size = SpinBox(
            label="Tile size", value=DEFAULT_TILE_SIZE, min=32, max=4096, step=32
        )
        self.tile_size.tooltip = (
            "Big images are segmented in overlapping tiles blended into one result. With the "
            "bundled model, 512-px tiles give labels that differ from one whole-image pass on "
            "about 0.005% of the pixels, 256-px tiles on 0.12% (along tile seams), for about "
            "0.4 GB less memory on the CPU"
        )
        self.output = ComboBox(label="Write into", choices=self._output_choices)
        self.current_slice = CheckBox(text="Only the displayed slice (stacks)")
        self.probabilities = CheckBox(text="Also add class probabilities")
        self.tta = CheckBox(text="Test-time augmentation (8 views)")
        self.tta.tooltip = (
            "Average the 8 flips/rotations of each tile: usually a little more accurate, "
            "a better uncertainty map, 8x the time."
        )
        self.uncertainty = CheckBox(text="Also add uncertainty")
        self.uncertainty.tooltip = (
            "An image layer '<image> uncertainty': the entropy of the class probabilities "
            "(0 = sure, 1 = no idea); bright where the model is likely wrong."
        )
        self.visible_region = CheckBox(text="Only the visible region")
        self.visible_region.tooltip = (
            "A quick look at a huge image: segment only the part in view (the displayed "
            "slice of a stack; at most 4096 px a side of a multiscale image) and write it into "
            "the labels layer there, leaving the rest as it is; pan and press Segment again "
            "for more. Its labels are those of a whole-image run. Probabilities, uncertainty "
            "and objects are not made for a region."
        )
        self.objects = CheckBox(text="Also add objects")
        self.objects.tooltip = (
            "A Labels layer '<image> objects' with one id per object (watershed on the "
            "probabilities) and a features table: label, area, centroid."
        )
        self.run_button = PushButton(text="Segment")
        self.next_button = PushButton(text="Next region to correct")
        self.next_button.tooltip = (
            "Go to the most uncertain region of the last segmentation not visited yet "
            "(segments first when there is none); correct it, then press again."
        )
        self.folder_in = FileEdit(label="Images", mode="d")
        self.folder_in.tooltip = "A folder of images (png, tif, jpg, bmp) to segment, one by one"
        self.folder_out = FileEdit(label="Write to", mode="d")
        self.folder_out.tooltip = (
            "Folder for the label files <name>_labels.png (.tif for stacks), which open as "
            "Labels layers; existing files are never replaced"
        )
        self.folder_button = PushButton(text="Segment folder")
        self.folder_button.tooltip = (
            "Segment every image of the folder with the model, device and tile size above "
            "(as `napari-segen predict`): <name>_labels.png each, and with the 'Also add' "
            "options ticked <name>_probs.tif, <name>_uncertainty.tif, <name>_objects.tif + "
            ".csv; Cancel stops after the current image"
        )
        self.cancel_button = PushButton(text="Cancel")
        self.status = Label(value="")
        self.extend(
            [
                self.image,
                self.model,
                self.model_file,
                self.classes,
                self.device,
                self.tile_size,
                self.output,
                self.current_slice,
                self.run_button,
                self.next_button,
                self.cancel_button,
                self.status,
            ]
        )
        options = [
            self.visible_region,
            self.probabilities,
            self.tta,
            self.uncertainty,
            self.objects,
        ]
        self._add_collapsible("Options", options, before=self.run_button)
        self.folder_section = collapsible(
            "Folder", [self.folder_in, self.folder_out, self.folder_button]
        )
        insert_before(self, self.folder_section, self.cancel_button)
        self._fix_status_size()
        make_scrollable(self)  # docking never grows the window
        self.runner = TaskRunner(
            [self.run_button, self.next_button, self.folder_button],
            self.cancel_button,
            self.status,
        )
        self.model.changed.connect(self._on_model_changed)
        self.model_file.changed.connect(self._show_classes)
        self.run_button.changed.connect(self.run)
        self.next_button.changed.connect(self.next_region)
        self.folder_button.changed.connect(self.segment_folder)
        catalog.changed.connect(self._refresh_models)
        self._show_classes()

    # --- layout --------------------------------------------------------------
    def _add_collapsible(self, title: str, widgets: list, before: Any) -> None:
        """``widgets`` in a collapsed section above ``before`` (keeps the form short)."""
        from superqt import QCollapsible

        inner = Container(widgets=widgets, labels=False)
        inner.margins = (0, 0, 0, 0)
        self.options_section = QCollapsible(title)
        self.options_section.addWidget(inner.native)
        self._options_inner = inner
        insert_before(self, self.options_section, before)

    def _fix_status_size(self) -> None:
        """A longer status text must not widen the dock (that re-lays out the window)."""
        fit_label(self.status, wrap=False)  # one line, clipped; full text in the tooltip

    # --- choices -------------------------------------------------------------
    def _model_choices(self, _=None) -> list[str]:
        return [*catalog.choices(), _FILE_CHOICE]

    def _output_choices(self, _=None) -> list:
        from napari.layers import Labels

        return [_NEW_LAYER] + [
            layer.name for layer in self.viewer.layers if isinstance(layer, Labels)
        ]

    def _refresh_models(self, *_) -> None:
        # The catalogue outlives this widget: once its Qt side is gone, stop listening.
        try:
            self.model.reset_choices()
        except RuntimeError:
            catalog.changed.disconnect(self._refresh_models)

    def _on_model_changed(self, value: str) -> None:
        self.model_file.visible = value == _FILE_CHOICE
        self._show_classes()

    def model_path(self) -> Path:
        """The file of the chosen model."""
        if self.model.value == _FILE_CHOICE:
            path = Path(str(self.model_file.value))
            if not path.is_file():
                raise ModelFileError("choose a model file (.safetensors) first")
            return path
        choice = (
            catalog.path_for(self.model.value) if self.model.value != DEFAULT_CHOICE else "default"
        )
        return Path(str(default_model_path())) if choice == "default" else Path(choice)

    def select_model(self, path: str | Path) -> None:
        """Add a model file to the catalogue and select it."""
        self.model.value = catalog.add(path)

    def _show_classes(self, *_) -> None:
        try:
            spec = read_spec(self.model_path())
            self.classes.value = ", ".join(f"{i}: {n}" for i, n in enumerate(spec.class_names))
        except (ModelFileError, OSError) as err:
            self.classes.value = f"({err})" if self.model.value == _FILE_CHOICE else ""

    # --- running -------------------------------------------------------------
    def _slice_index(self, layer: Any) -> tuple[int, ...]:
        """The stack position of ``layer`` shown in the viewer (``()`` for one image)."""
        leading, _ = spatial_layout(tuple(layer.data.shape), layer.rgb)
        if not leading:
            return ()
        point = layer.world_to_data(self.viewer.dims.point)
        return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point, leading, strict=False))

    def _load_model(self) -> Any:
        """The chosen model, loaded (None, with an error shown, when it cannot be)."""
        before = self.status.value
        try:
            path = self.model_path()
            self.status.value = f"loading model {path.name}..."
            self.status.native.repaint()  # shown now: loading holds the GUI thread a moment
            return load_model(path)
        except ModelFileError as err:
            self.status.value = before
            show_error(f"Cannot use this model: {err}")
            return None

    def run(self, *_, then: Callable[[], None] | None = None, only_slice: bool = False) -> None:
        """Start segmenting the chosen image (returns at once; the work runs in a thread).

        ``then`` is called after the result is shown; ``only_slice`` segments the
        displayed slice of a stack whatever the checkbox says.
        """
        if self.runner.running:
            show_info("Segmentation is already running; wait for it or press Cancel.")
            return
        layer = self.image.value
        if layer is None:
            show_error("Add or select an image layer to segment first.")
            return
        model = self._load_model()
        if model is None:
            return
        target = None
        if self.output.value != _NEW_LAYER:
            target = self.viewer.layers[self.output.value]
        if self.visible_region.value and then is None:
            self._run_region(layer, model, target)
            return
        data, index = layer.data, ()
        leading, _ = spatial_layout(tuple(layer.data.shape), layer.rgb)
        if (self.current_slice.value or only_slice) and leading:
            index = self._slice_index(layer)
            data = layer.data[index]
        full_shape = tuple(layer.data.shape[: len(leading) + 2])
        where = f" slice {index}" if index else ""
        self.status.value = f"segmenting {layer.name}{where}..."
        # One image (or slice): the uncertainty is cheap and "Next region" ranks by it.
        one_plane = index or not leading
        objects = self.objects.value
        self.runner.start(
            segment_job,
            model,
            data,
            objects=objects,
            rgb=layer.rgb,
            tile_size=self.tile_size.value,
            device=self.device.value,
            return_probabilities=self.probabilities.value or objects,
            tta=self.tta.value,
            return_uncertainty=bool(self.uncertainty.value or one_plane or then is not None),
            description=f"Segmenting {layer.name}",
            on_done=lambda res: self._add_result(
                layer, model, target, res, index, full_shape, then
            ),
            on_finish=self._finished,
        )

    def _run_region(self, layer: Any, model: Any, target: Any) -> None:
        """Start segmenting the visible region of ``layer`` (see the module's docstring)."""
        index, y0, y1, x0, x1 = visible_box(self.viewer, layer)
        if y1 <= y0 or x1 <= x0:
            show_error(f"No part of {layer.name} is in view: pan or zoom to it first.")
            return
        if layer.multiscale and max(y1 - y0, x1 - x0) > MAX_REGION_SIDE:
            show_error(
                f"The visible region of {layer.name} is {y1 - y0}x{x1 - x0} pixels, more than "
                f"{MAX_REGION_SIDE} a side: zoom in, or untick 'Only the visible region'."
            )
            return
        data = layer.data[0] if layer.multiscale else layer.data
        leading, _ = spatial_layout(tuple(data.shape), layer.rgb)
        full_shape = tuple(data.shape[: len(leading) + 2])
        plane = PlaneView(data, index)
        stats_plane = plane
        if layer.multiscale:  # the coarsest level's statistics: a cheap, close estimate
            coarse = layer.data[-1]
            at = tuple(
                min(round(i * c / n), c - 1)
                for i, c, n in zip(index, coarse.shape, leading, strict=False)
            )
            stats_plane = PlaneView(coarse, at)
        box = (y0, y1, x0, x1)
        crop = region_crop(full_shape[-2:], box, self.tile_size.value, size_multiple(model))
        where = f" slice {index}" if index else ""
        self.status.value = f"segmenting {layer.name}{where} [{y0}:{y1}, {x0}:{x1}]..."
        self.runner.start(
            region_job,
            model,
            plane,
            box,
            crop,
            rgb=bool(layer.rgb),
            stats_plane=stats_plane,
            tile_size=self.tile_size.value,
            device=self.device.value,
            tta=self.tta.value,
            description=f"Segmenting the visible region of {layer.name}",
            on_done=lambda res: self._add_region(layer, model, target, res, index, full_shape, box),
            on_finish=self._finished,
        )

    def _add_region(self, image_layer, model, target, result, index, full_shape, box) -> None:
        """Write the region's labels into the labels layer at ``box`` (the rest as it was)."""
        try:
            out = write_labels_layer(
                self.viewer,
                image_layer,
                result.prediction.labels,
                model.spec,
                target,
                index,
                full_shape,
                box=box,
            )
        except ValueError as err:
            show_error(str(err))
            return
        y0, y1, x0, x1 = box
        self.status.value = f"done: {out.name} [{y0}:{y1}, {x0}:{x1}]"
        show_info(
            f"Segmented the visible region [{y0}:{y1}, {x0}:{x1}] of {image_layer.name} "
            f"into {out.name!r} with {model.name}"
        )
        self.viewer.layers.selection.active = out

    def _add_result(
        self,
        image_layer: Any,
        model: Any,
        target: Any,
        result: Segmentation,
        index: tuple[int, ...] = (),
        full_shape: tuple[int, ...] | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        pred = result.prediction
        try:
            out = write_labels_layer(
                self.viewer, image_layer, pred.labels, model.spec, target, index, full_shape
            )
        except ValueError as err:
            show_error(str(err))
            return
        if pred.probabilities is not None and self.probabilities.value and not index:
            names = [f"{image_layer.name} P({c})" for c in model.spec.class_names]
            for name in names:
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
            self.viewer.add_image(
                pred.probabilities,
                channel_axis=pred.probabilities.ndim - 3,
                name=names,
                colormap="magma",
                contrast_limits=[0, 1],
                blending="additive",
                visible=[False] + [True] * (len(names) - 1),
                **_placement(image_layer, pred.labels.ndim),
            )
        done = f"done: {out.name}"
        if pred.uncertainty is not None:
            self.last = _Last(image_layer, pred.uncertainty, index)
            if self.uncertainty.value:
                self._write_uncertainty(image_layer, pred.uncertainty, index, full_shape)
        if result.objects is not None:
            self._write_objects(image_layer, result.objects, index, full_shape)
            done += f"; {result.objects.count} objects"
        self.status.value = done
        show_info(f"Segmented {image_layer.name} into {out.name!r} with {model.name}")
        self.viewer.layers.selection.active = out  # ready to correct with the brush
        if then is not None:
            then()

    def _write_uncertainty(self, image_layer, uncertainty, index, full_shape) -> None:
        """``<image> uncertainty``: updated in place when it exists, else added (magma, 0-1)."""
        from napari.layers import Image

        name = f"{image_layer.name} uncertainty"
        shape = tuple(full_shape) if index else uncertainty.shape
        old = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401
        if isinstance(old, Image) and tuple(old.data.shape) == shape:
            if index:
                old.data[index] = uncertainty
                old.refresh()
            else:
                old.data = uncertainty
            return
        if old is not None:
            self.viewer.layers.remove(old)
        data = uncertainty
        if index:
            data = np.zeros(shape, np.float32)
            data[index] = uncertainty
        self.viewer.add_image(
            data,
            name=name,
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            opacity=0.6,
            blending="additive",
            **_placement(image_layer, len(shape)),
        )

    def _write_objects(self, image_layer, objects: Instances, index, full_shape) -> None:
        """``<image> objects`` (replaced each time) with its features table and the count."""
        name = f"{image_layer.name} objects"
        labels = objects.labels
        if index:
            labels = np.zeros(full_shape, np.int32)
            labels[index] = objects.labels
        features = {"index": np.asarray(objects.features["label"], int), **objects.features}
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(
            labels, name=name, opacity=0.5, **_placement(image_layer, labels.ndim)
        )
        layer.features = features
        layer.metadata["objects_method"] = objects.method
        layer.metadata["count"] = objects.count

    def _finished(self) -> None:
        if self.runner.cancelled:
            self.status.value = "cancelled; existing layers were left as they were"

    # --- a folder ------------------------------------------------------------
    def segment_folder(self, *_: Any) -> None:
        """Segment every image of the input folder into label files in the output folder.

        Returns at once; the images are segmented one by one in a worker (one
        progress step each). Nothing is started, and the reason is shown once,
        when a folder is missing or an output file already exists.
        """
        if self.runner.running:
            show_info("A segmentation is already running; wait for it or press Cancel.")
            return
        src, dst = _chosen_folder(self.folder_in.value), _chosen_folder(self.folder_out.value)
        if src is None or not src.is_dir():
            show_error("Choose the folder of images to segment (Folder > Images).")
            return
        if dst is None:
            show_error("Choose a folder to write the label files to (Folder > Write to).")
            return
        try:
            files = list_images(src)
        except (ImageReadError, OSError) as err:
            show_error(f"Cannot list the images of {src}: {_one_line(err)}")
            return
        if not files:
            show_error(f"No image files (png, tif, jpg, bmp) in {src}; choose another folder.")
            return
        settings = BatchSettings(
            tile_size=self.tile_size.value, device=self.device.value, tta=self.tta.value,
            probabilities=self.probabilities.value, uncertainty=self.uncertainty.value,
            instances=self.objects.value,
        )  # fmt: skip
        problems: list[str] = []

        def _skip(path: Path, err: BaseException) -> None:
            problems.append(f"skipped {path.name}: {_one_line(err)}")

        try:
            planned = plan_batch(files, dst, settings, on_skip=_skip)
        except (FileExistsError, OutputCollisionError, OSError) as err:
            message = _one_line(err).replace(
                "or allow overwriting (--overwrite)", "or move the existing files away"
            )
            self.status.value = f"nothing written: {message}"
            show_error(f"Cannot segment the folder: {message}")
            return
        if not planned:
            self._report_folder(BatchResult([], []), dst, problems, len(files))
            return
        model = self._load_model()
        if model is None:
            return

        def _event(event: BatchProgress) -> None:
            if event.error is not None and event.source is not None:
                _skip(event.source, event.error)

        self.status.value = f"segmenting {len(planned)} image(s) of {src.name}..."
        self.runner.start(
            iter_predict_files,
            model,
            planned,
            settings,
            description=f"Segmenting folder {src.name}",
            on_event=_event,
            on_done=lambda res: self._report_folder(res, dst, problems, len(files)),
            on_finish=self._folder_finished,
        )

    def _report_folder(
        self, result: BatchResult, dst: Path, problems: list[str], total: int
    ) -> None:
        """Status: how many label files were written where; one line per problem, once."""
        done = f"wrote {len(result.written)} of {total} label image(s) to {dst}"
        counts = [w.objects for w in result.written if w.objects is not None]
        if counts:
            done += f" ({sum(counts)} objects in all)"
        if problems:
            self.status.value = f"{done}; {len(problems)} skipped (see the notification)"
            show_warning(f"{done}; {len(problems)} skipped:\n" + "\n".join(problems))
        else:
            self.status.value = done
            show_info(f"Segmented the folder: {done}")

    def _folder_finished(self) -> None:
        if self.runner.cancelled:
            self.status.value = "cancelled; the label files written so far are complete"

    # --- regions to correct ---------------------------------------------------
    def next_region(self, *_: Any) -> Region | None:
        """Show the most uncertain region of the last segmentation not visited yet.

        Without a segmentation of the chosen image (or of the displayed slice of a
        stack), segment it first, then show the region. Returns the region shown
        (None when it has to segment first or cannot).
        """
        if self.runner.running:
            show_info("Wait for the segmentation to finish (or cancel it).")
            return None
        layer = self.image.value
        if layer is None:
            show_error("Add or select an image layer first.")
            return None
        index = self._slice_index(layer)
        plane = self._uncertainty_of(layer, index)
        if plane is None:
            self.run(then=self.next_region, only_slice=bool(index))
            if self.runner.running:
                what = f"slice {index} of {layer.name}" if index else layer.name
                self.status.value = f"no segmentation of {what} yet: segmenting first..."
            return None
        size = int(self.region_size)
        assert self.last is not None
        key = (index, size)
        if key not in self.last.ranked:
            self.last.ranked[key] = rank_regions(plane, size)
        ranked = self.last.ranked[key]
        visited = self._visited.setdefault((layer.name, *key), [])
        region = next_region(ranked, visited)
        again = ""
        if region is None:  # all visited: start over with the most uncertain
            visited.clear()
            region = ranked[0]
            again = " (all visited: from the top again)"
        visited.append((region.y, region.x))
        self._show_region(layer, region, index, plane.shape)
        self.status.value = (
            f"region {len(visited)} of {len(ranked)}, mean uncertainty {region.score:.2f}{again}"
        )
        return region

    def _uncertainty_of(self, layer: Any, index: tuple[int, ...]) -> np.ndarray | None:
        """The last segmentation's uncertainty of ``layer`` at slice ``index`` (None: none)."""
        last = self.last
        if last is None or last.layer is not layer:
            return None
        if last.index:
            return last.uncertainty if last.index == index else None
        u = last.uncertainty
        return u[index] if index and u.ndim > 2 else u

    def _show_region(self, layer: Any, region: Region, index: tuple, plane_shape) -> None:
        """Centre the camera on ``region``, zoom so it fills most of the canvas, outline it."""
        h, w = plane_shape
        y0, x0 = region.y, region.x
        y1, x1 = min(y0 + region.size, h), min(x0 + region.size, w)
        world = layer.data_to_world((*index, (y0 + y1) / 2, (x0 + x1) / 2))
        full = list(self.viewer.dims.point)
        full[len(full) - len(world) :] = world
        camera = viewer_camera(self.viewer)
        camera.center = tuple(full[d] for d in self.viewer.dims.displayed)
        sy, sx = (abs(float(s)) for s in layer.scale[-2:])
        ch, cw = canvas_size(self.viewer)
        camera.zoom = REGION_FILL * min(ch / ((y1 - y0) * sy), cw / ((x1 - x0) * sx))
        corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)
        if index:
            corners = np.hstack([np.tile(np.asarray(index, float), (4, 1)), corners])
        self._outline(layer, corners, max(region.size / 64, 1.0))

    def _outline(self, layer: Any, corners: np.ndarray, width: float) -> None:
        """Add a rectangle to ``<image> regions to correct``; earlier ones turn grey."""
        from napari.layers import Shapes

        name = f"{layer.name} regions to correct"
        shapes = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401
        if not isinstance(shapes, Shapes) or shapes.ndim != corners.shape[1]:
            if shapes is not None:
                self.viewer.layers.remove(shapes)
            active = self.viewer.layers.selection.active
            shapes = self.viewer.add_shapes(
                ndim=corners.shape[1], name=name, **_placement(layer, corners.shape[1])
            )
            if active is not None:  # keep the layer the user works on selected
                self.viewer.layers.selection.active = active
        if len(shapes.data):
            shapes.edge_color = ["gray"] * len(shapes.data)
        shapes.add_rectangles(
            corners, edge_width=width, edge_color="yellow", face_color="transparent"
        )
        shapes.refresh()


def _chosen_folder(value: Any) -> Path | None:
    """A FileEdit's folder, or None when none was chosen (it then reads ``.`` or nothing)."""
    text = str(value or "").strip()
    return None if text in ("", ".") else Path(text).expanduser()


def _one_line(err: BaseException) -> str:
    """An error as one line of text, whatever its message held."""
    if isinstance(err, OSError) and err.errno is not None and err.strerror:
        where = f"{err.filename}: " if err.filename is not None else ""
        return f"{where}{err.strerror}"
    return " ".join((str(err).strip() or type(err).__name__).split())


def _placement(image_layer: Any, ndim: int) -> dict[str, Any]:
    """``scale`` and ``translate`` of an output layer of ``ndim`` dims over ``image_layer``."""
    return {
        "scale": tuple(image_layer.scale[-ndim:]),
        "translate": tuple(image_layer.translate[-ndim:]),
    }
