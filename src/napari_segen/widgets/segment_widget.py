"""The Segment dock widget: pick an image, a model, a device and a tile size; press Segment."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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
from napari.utils.notifications import show_error, show_info

from ..data.layout import spatial_layout
from ..inference import iter_predict
from ..models import ModelFileError, default_model_path, load_model, read_spec
from ..utils.devices import available_devices
from ._layers import write_labels_layer
from ._model_catalog import DEFAULT_CHOICE, catalog
from ._worker import TaskRunner

if TYPE_CHECKING:
    import napari

_FILE_CHOICE = "model file..."
_NEW_LAYER = "new layer (<image> labels)"


class SegmentWidget(Container):
    """Segment the chosen image layer into a Labels layer, off the GUI thread.

    Sub-widgets are attributes so tests and other widgets can set them and call
    :meth:`run` directly.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.image = create_widget(label="Image", annotation="napari.layers.Image")
        self.model = ComboBox(label="Model", choices=self._model_choices)
        self.model_file = FileEdit(label="Model file", filter="*.safetensors", visible=False)
        self.classes = Label(label="Classes")
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self.tile_size = SpinBox(label="Tile size", value=256, min=32, max=4096, step=32)
        self.output = ComboBox(label="Write into", choices=self._output_choices)
        self.probabilities = CheckBox(text="Also add class probabilities")
        self.current_slice = CheckBox(text="Only the displayed slice (stacks)")
        self.run_button = PushButton(text="Segment")
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
                self.probabilities,
                self.current_slice,
                self.run_button,
                self.cancel_button,
                self.status,
            ]
        )
        self.runner = TaskRunner(self.run_button, self.cancel_button, self.status)
        self.model.changed.connect(self._on_model_changed)
        self.model_file.changed.connect(self._show_classes)
        self.run_button.changed.connect(self.run)
        catalog.changed.connect(self._refresh_models)
        self._show_classes()

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
    def run(self, *_) -> None:
        """Start segmenting the chosen image (returns at once; the work runs in a thread)."""
        if self.runner.running:
            show_info("Segmentation is already running; wait for it or press Cancel.")
            return
        layer = self.image.value
        if layer is None:
            show_error("Add or select an image layer to segment first.")
            return
        try:
            path = self.model_path()
            model = load_model(path)
        except ModelFileError as err:
            show_error(f"Cannot use this model: {err}")
            return
        target = None
        if self.output.value != _NEW_LAYER:
            target = self.viewer.layers[self.output.value]
        data, index = layer.data, ()
        leading, _ = spatial_layout(tuple(layer.data.shape), layer.rgb)
        if self.current_slice.value and leading:
            point = layer.world_to_data(self.viewer.dims.point)
            index = tuple(
                int(np.clip(round(p), 0, n - 1)) for p, n in zip(point, leading, strict=False)
            )
            data = layer.data[index]
        full_shape = tuple(layer.data.shape[: len(leading) + 2])
        where = f" slice {index}" if index else ""
        self.status.value = f"segmenting {layer.name}{where}..."
        self.runner.start(
            iter_predict,
            model,
            data,
            rgb=layer.rgb,
            tile_size=self.tile_size.value,
            device=self.device.value,
            return_probabilities=self.probabilities.value,
            description=f"Segmenting {layer.name}",
            on_done=lambda res: self._add_result(layer, model, target, res, index, full_shape),
            on_finish=self._finished,
        )

    def _add_result(self, image_layer, model, target, result, index=(), full_shape=None) -> None:
        try:
            out = write_labels_layer(
                self.viewer, image_layer, result.labels, model.spec, target, index, full_shape
            )
        except ValueError as err:
            show_error(str(err))
            return
        if result.probabilities is not None and not index:
            names = [f"{image_layer.name} P({c})" for c in model.spec.class_names]
            for name in names:
                if name in self.viewer.layers:
                    self.viewer.layers.remove(name)
            self.viewer.add_image(
                result.probabilities,
                channel_axis=result.probabilities.ndim - 3,
                name=names,
                colormap="magma",
                contrast_limits=[0, 1],
                blending="additive",
                visible=[False] + [True] * (len(names) - 1),
                scale=image_layer.scale[-2:] if result.labels.ndim == 2 else None,
            )
        self.status.value = f"done: {out.name}"
        show_info(f"Segmented {image_layer.name} into {out.name!r} with {model.name}")

    def _finished(self) -> None:
        if self.runner.cancelled:
            self.status.value = "cancelled; existing layers were left as they were"
