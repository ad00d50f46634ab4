"""The Train dock widget: correct the model's mistakes, retrain, re-segment.

The loop: segment an image (Segment widget), fix the mistakes in its
``<image> labels`` layer with napari's brush, eraser and fill (dense
correction), or paint a few strokes on an empty Labels layer (sparse: label 1 =
class 0, label 2 = class 1...), press **Train**, and a minute later press
**Re-segment** with the new model. Training runs in a worker thread
(:class:`~napari_segen.widgets._worker.TaskRunner`): the viewer stays
responsive, a napari progress bar and a loss / validation-Dice plot follow
the run, and Cancel stops it at the next step, keeping the best model so far.
The run (split, classes, start model) is assembled by
:mod:`napari_segen.training.assembly`, under the same rules as ``napari-segen train``.
The GUI-thread side only appends numbers per event; the plot is a QPainter
widget repainted by a timer at most every 0.4 s (a matplotlib redraw costs
50-150 ms of GUI time on a busy CPU, which made the viewer stutter).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from ..data.augment import AugmentConfig
from ..data.sources import DENSE, SPARSE
from ..models import ModelFileError, load_model
from ..training import TrainConfig, TrainEvent, TrainResult, train_segmentation
from ..training.assembly import (
    DEFAULT_START,
    ArraySource,
    FolderSource,
    NewModel,
    Source,
    StartModel,
    assemble_segmentation,
)
from ..utils.devices import available_devices
from ..utils.generators import Progress
from ._model_catalog import DEFAULT_CHOICE, catalog
from ._worker import TaskRunner

if TYPE_CHECKING:
    import napari

MODE_DENSE = "dense correction (labels = classes)"
MODE_SPARSE = "sparse strokes (0 = unlabelled)"
_FILE_CHOICE = "model file..."
_SCRATCH_CHOICE = "from scratch (new U-Net)"
_PLOT_INTERVAL_MS = 400


@dataclass
class TrainJob:
    """Everything a training run needs, gathered on the GUI thread (cheap), used in the worker.

    The data are described, not read: reading folders and loading the start
    model happen in the worker, through :mod:`napari_segen.training.assembly`.
    """

    layers: ArraySource
    folders: FolderSource | None
    start: StartModel
    val_split: float
    out_path: Path
    overwrite: bool
    config: TrainConfig

    @property
    def name(self) -> str:
        return self.layers.name

    @property
    def mode(self) -> str:
        return self.layers.mode

    @property
    def labels(self) -> np.ndarray:
        return self.layers.labels

    @property
    def sources(self) -> list[Source]:
        return [self.layers] + ([self.folders] if self.folders is not None else [])


def run_training_job(job: TrainJob) -> Generator[Progress | TrainEvent, None, TrainResult]:
    """Assemble the run (data, split, classes, start model) and train (in the worker thread)."""
    run = yield from assemble_segmentation(
        job.sources, start=job.start, val_fraction=job.val_split, seed=job.config.seed or 0
    )
    result = yield from train_segmentation(
        run.train,
        run.val,
        job.out_path,
        start=run.start,
        config=job.config,
        overwrite=job.overwrite,
        provenance={"source": "napari Train widget", **run.provenance},
    )
    return result


def suggest_output_path(name: str, folder: Path | None = None) -> Path:
    """A new file name ``<folder>/<name>-retrained[-N].safetensors`` that does not exist yet."""
    folder = folder or Path.home() / "napari-segen" / "models"
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "model"
    path = folder / f"{stem}-retrained.safetensors"
    n = 2
    while path.exists():
        path = folder / f"{stem}-retrained-{n}.safetensors"
        n += 1
    return path


class TrainWidget(Container):
    """Retrain a segmentation model on the labels painted in the viewer.

    Sub-widgets are attributes, so tests can set values and call :meth:`start`,
    :meth:`cancel` and :meth:`resegment` directly. ``config_overrides`` (a dict
    of :class:`TrainConfig` fields) and ``scratch_arch`` adjust what the form
    does not show (crop size, batch size, U-Net size...).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.config_overrides: dict[str, Any] = {}
        self.scratch_arch: dict[str, int] = {"depth": 4, "base_channels": 16}
        self.history: dict[str, list[float]] = {"step": [], "loss": [], "val_step": [], "dice": []}
        self.last_model_path: Path | None = None
        self.last_result: TrainResult | None = None
        self._out_edited = False
        self._plot_dirty = False

        self.image_layer = ComboBox(label="Image", choices=self._image_choices)
        self.labels_layer = ComboBox(label="Labels", choices=self._labels_choices)
        self.mode = ComboBox(
            label="Annotation", choices=[MODE_DENSE, MODE_SPARSE], value=MODE_DENSE
        )
        self.use_folders = CheckBox(text="Also train on image/mask folders")
        self.images_dir = FileEdit(label="Images folder", mode="d", visible=False)
        self.masks_dir = FileEdit(label="Masks folder", mode="d", visible=False)
        self.start_model = ComboBox(label="Start from", choices=self._start_choices)
        self.start_file = FileEdit(label="Model file", filter="*.safetensors", visible=False)
        self.val_split = FloatSpinBox(label="Validation", value=0.2, min=0.0, max=0.9, step=0.05)
        self.epochs = SpinBox(label="Epochs", value=20, min=1, max=10000)
        self.max_minutes = FloatSpinBox(
            label="Time limit (min)", value=0.0, min=0.0, max=10000.0, step=0.5
        )
        self.lr = FloatSpinBox(label="Learning rate", value=1e-3, min=1e-6, max=1.0, step=1e-4)
        self.lr.native.setDecimals(6)
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self.out_path = FileEdit(label="Save model as", mode="w", filter="*.safetensors")
        self.overwrite = CheckBox(text="Overwrite an existing model file")
        self.start_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel")
        self.resegment_button = PushButton(text="Re-segment image with the new model")
        self.resegment_button.enabled = False
        self.status = Label(value="")
        self.extend(
            [
                self.image_layer, self.labels_layer, self.mode, self.use_folders,
                self.images_dir, self.masks_dir, self.start_model, self.start_file,
                self.val_split, self.epochs, self.max_minutes, self.lr, self.device,
                self.out_path, self.overwrite, self.start_button, self.cancel_button,
                self.resegment_button, self.status,
            ]
        )  # fmt: skip
        self._setup_plot()
        self._fix_status_size()

        buttons = [self.start_button, self.resegment_button]
        self.runner = TaskRunner(buttons, self.cancel_button, self.status)
        self.segment_runner = TaskRunner(buttons, self.cancel_button, self.status)
        self.start_button.changed.connect(self.start)
        self.resegment_button.changed.connect(self.resegment)
        self.use_folders.changed.connect(self._on_use_folders)
        self.start_model.changed.connect(self._on_start_changed)
        self.image_layer.changed.connect(self._on_image_changed)
        self.out_path.changed.connect(self._on_out_edited)
        catalog.changed.connect(self._on_catalog_changed)
        self._on_image_changed(self.image_layer.value)

    # --- choices -------------------------------------------------------------
    def _image_choices(self, _=None) -> list:
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_choices(self, _=None) -> list:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _start_choices(self, _=None) -> list[str]:
        return [*catalog.choices(), _FILE_CHOICE, _SCRATCH_CHOICE]

    def _on_catalog_changed(self, *_: Any) -> None:
        # The catalogue outlives this widget: once its Qt side is gone, stop listening.
        try:
            self.start_model.reset_choices()
        except RuntimeError:
            catalog.changed.disconnect(self._on_catalog_changed)

    def _on_use_folders(self, value: bool) -> None:
        self.images_dir.visible = self.masks_dir.visible = bool(value)

    def _on_start_changed(self, value: str) -> None:
        self.start_file.visible = value == _FILE_CHOICE

    def _on_out_edited(self, *_: Any) -> None:
        if not getattr(self, "_setting_out", False):
            self._out_edited = True

    def _on_image_changed(self, layer: Any) -> None:
        if layer is None:
            return
        wanted = f"{layer.name} labels"
        for name, lab in self._labels_choices():
            if name == wanted:
                self.labels_layer.value = lab
                break
        if not self._out_edited:
            self._set_out(suggest_output_path(layer.name))

    def _set_out(self, path: Path) -> None:
        self._setting_out = True
        try:
            self.out_path.value = path
        finally:
            self._setting_out = False

    def start_choice(self) -> StartModel:
        """``"default"``, a new U-Net (:class:`NewModel`) or the path of the chosen model."""
        choice = self.start_model.value
        if choice == _SCRATCH_CHOICE:
            return NewModel("unet", **self.scratch_arch)
        if choice == _FILE_CHOICE:
            path = Path(str(self.start_file.value))
            if not path.is_file():
                raise ModelFileError("choose the model file (.safetensors) to start from")
            return str(path)
        if choice == DEFAULT_CHOICE:
            return DEFAULT_START
        return catalog.path_for(choice)

    def _fix_status_size(self) -> None:
        """Changing status text must not re-layout the window (that re-renders the canvas)."""
        from qtpy.QtWidgets import QSizePolicy

        label = self.status.native
        label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        label.setWordWrap(False)

    # --- the plot ------------------------------------------------------------
    def _setup_plot(self) -> None:
        from qtpy.QtCore import QTimer

        self.plot = TrainingPlot()
        self.native.layout().addWidget(self.plot)
        # Repaint at most every _PLOT_INTERVAL_MS: event handlers only append numbers.
        self._plot_timer = QTimer(self.native)
        self._plot_timer.setInterval(_PLOT_INTERVAL_MS)
        self._plot_timer.timeout.connect(self._redraw)
        self._plot_timer.start()

    def _redraw(self) -> None:
        if not self._plot_dirty:
            return
        self._plot_dirty = False
        h = self.history
        self.plot.set_data(h["step"], h["loss"], h["val_step"], h["dice"])

    # --- training ------------------------------------------------------------
    def build_job(self) -> TrainJob:
        """Gather the inputs from the form and the layers; ValueError says what is missing."""
        img_layer = self.image_layer.value
        lab_layer = self.labels_layer.value
        if img_layer is None:
            raise ValueError("add or choose the image layer to train on")
        if lab_layer is None:
            raise ValueError(
                "add or choose the Labels layer with your corrections or strokes "
                "(Layers > New Labels layer, then paint)"
            )
        image = img_layer.data[0] if img_layer.multiscale else img_layer.data
        labels = lab_layer.data[0] if lab_layer.multiscale else lab_layer.data
        mode = SPARSE if self.mode.value == MODE_SPARSE else DENSE
        out = Path(str(self.out_path.value))
        if out.suffix != ".safetensors":
            out = out.with_suffix(".safetensors")
        if out.exists() and not self.overwrite.value:
            raise ValueError(f"{out} already exists; choose another file name or tick 'Overwrite'")
        names = lab_layer.metadata.get("class_names") if mode == DENSE else None
        folders = None
        if self.use_folders.value:
            images_dir = Path(str(self.images_dir.value))
            masks_dir = Path(str(self.masks_dir.value))
            if not (images_dir.is_dir() and masks_dir.is_dir()):
                raise ValueError("choose both the images folder and the masks folder")
            folders = FolderSource(images_dir, masks_dir, sparse=mode == SPARSE)
        minutes = self.max_minutes.value
        cfg = TrainConfig(
            epochs=self.epochs.value,
            lr=self.lr.value,
            device=self.device.value,
            time_limit_s=minutes * 60 if minutes > 0 else None,
            augment=AugmentConfig(),
        )
        for key, value in self.config_overrides.items():
            setattr(cfg, key, value)
        layers = ArraySource(
            image,
            np.array(labels, copy=True),  # a snapshot: painting may go on meanwhile
            mode,
            name=img_layer.name,
            rgb=bool(img_layer.rgb),
            class_names=list(names) if names else None,
            labels_name=lab_layer.name,
        )
        return TrainJob(
            layers=layers,
            folders=folders,
            start=self.start_choice(),
            val_split=self.val_split.value,
            out_path=out,
            overwrite=self.overwrite.value,
            config=cfg,
        )

    def start(self, *_: Any) -> None:
        """Start training (returns at once; the work runs in a thread)."""
        if self.runner.running or self.segment_runner.running:
            show_error("A task is already running; wait for it or cancel it.")
            return
        try:
            job = self.build_job()
        except (ValueError, OSError) as err:
            show_error(f"Cannot train: {err}")
            self.status.value = f"cannot train: {err}"
            return
        self.history = {"step": [], "loss": [], "val_step": [], "dice": []}
        self._plot_dirty = True
        self._job = job
        self.status.value = f"training on {job.name}..."
        self.runner.start(
            run_training_job,
            job,
            description=f"Training on {job.name}",
            on_event=self._on_event,
            on_done=self._on_done,
            on_finish=self._on_finish,
        )

    def cancel(self) -> None:
        """Stop the running task at its next step (the best model so far is kept)."""
        self.runner.cancel()
        self.segment_runner.cancel()

    def _on_event(self, ev: Progress | TrainEvent) -> None:
        # GUI thread: keep this cheap; the plot is redrawn by the timer.
        kind = getattr(ev, "kind", "status")  # assembling the run yields plain Progress
        if kind == "step":
            self.history["step"].append(ev.step)
            self.history["loss"].append(ev.loss)
            self._plot_dirty = True
            now = time.monotonic()
            if now - getattr(self, "_last_status", 0.0) > 0.25:
                self._last_status = now
                self.status.value = (
                    f"epoch {ev.epoch}, step {ev.step}/{ev.total_steps}, loss {ev.loss:.3f}"
                )
        elif kind == "epoch":
            m = ev.metrics
            text = f"epoch {ev.epoch}: loss {m.get('loss', float('nan')):.3f}"
            dice = m.get("foreground_dice")
            if dice is not None:
                self.history["val_step"].append(ev.step)
                self.history["dice"].append(dice)
                text += f", validation Dice {dice:.3f}"
            self.status.value = text
            self._plot_dirty = True
        elif kind == "status" and ev.message:
            self.status.value = ev.message

    def _on_done(self, result: TrainResult) -> None:
        self.last_result = result
        if result.path is not None and Path(result.path).is_file():
            self._adopt_model(Path(result.path))
        dice = result.best_metrics.get("foreground_dice")
        best = f", best validation Dice {dice:.3f}" if dice is not None else ""
        self.status.value = f"done in {result.seconds:.0f} s{best}: {result.path}"
        show_info(f"Trained {Path(result.path).name}{best}; press Re-segment to use it")

    def _on_finish(self) -> None:
        self._redraw()
        job = getattr(self, "_job", None)
        if self.runner.cancelled and job is not None:
            if job.out_path.is_file():
                self._adopt_model(job.out_path)
                self.status.value = f"cancelled; the best model so far is {job.out_path}"
            else:
                self.status.value = "cancelled before the first epoch ended; nothing was saved"

    def _adopt_model(self, path: Path) -> None:
        """Make a new model available everywhere and the start of the next round."""
        self.last_model_path = path
        label = catalog.add(path)
        self.start_model.reset_choices()
        self.start_model.value = label
        self.resegment_button.enabled = True
        if not self._out_edited or path == Path(str(self.out_path.value)):
            self._out_edited = False
            layer = self.image_layer.value
            self._set_out(suggest_output_path(layer.name if layer else path.stem, path.parent))

    # --- re-segmenting -------------------------------------------------------
    def resegment(self, *_: Any) -> None:
        """Segment the image with the newly trained model into ``<image> labels``."""
        layer = self.image_layer.value
        if self.last_model_path is None or layer is None:
            show_error("Train a model first, then re-segment.")
            return
        lab = self.labels_layer.value
        if (
            self.mode.value == MODE_SPARSE
            and lab is not None
            and lab.name == f"{layer.name} labels"
        ):
            show_error(
                f"Re-segmenting writes into {lab.name!r}, which holds your strokes; rename the "
                "strokes layer (e.g. 'strokes') and choose it again."
            )
            return
        if self.runner.running or self.segment_runner.running:
            show_error("A task is already running; wait for it or cancel it.")
            return
        self.status.value = f"re-segmenting {layer.name}..."
        self.segment_runner.start(
            _predict_job,
            self.last_model_path,
            layer.data[0] if layer.multiscale else layer.data,
            layer.rgb,
            self.device.value,
            description=f"Re-segmenting {layer.name}",
            on_done=lambda out: self._write_segmentation(layer, out),
        )

    def _write_segmentation(self, image_layer: Any, out: tuple[Any, Any]) -> None:
        from ._layers import write_labels_layer

        model, prediction = out
        try:
            layer = write_labels_layer(self.viewer, image_layer, prediction.labels, model.spec)
        except ValueError as err:
            show_error(str(err))
            return
        self.status.value = f"re-segmented into {layer.name!r} with {model.name}"


def _predict_job(path: Path, image: Any, rgb: bool, device: str):
    from ..inference import iter_predict

    model = load_model(path)
    prediction = yield from iter_predict(model, image, rgb=rgb, device=device)
    return model, prediction


class TrainingPlot(QWidget):
    """Training loss (left scale) and validation Dice (right scale, 0-1) against the step.

    Drawn with QPainter: a repaint costs well under a millisecond, so the
    GUI thread stays free while training runs (a matplotlib redraw of the
    same plot takes 50-150 ms on a busy CPU).
    """

    LOSS = QColor(31, 119, 180)
    DICE = QColor(255, 127, 14)

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.steps: list[float] = []
        self.loss: list[float] = []
        self.val_steps: list[float] = []
        self.dice: list[float] = []

    def set_data(self, steps, loss, val_steps, dice) -> None:
        self.steps, self.loss = list(steps), list(loss)
        self.val_steps, self.dice = list(val_steps), list(dice)
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        w, h = self.width(), self.height()
        left, right, top, bottom = 8, 8, 18, 18
        box = QRectF(left, top, max(w - left - right, 1), max(h - top - bottom, 1))
        p.setPen(QPen(fg, 1))
        p.drawRect(box)
        xmax = max(self.steps[-1] if self.steps else 1, 1)
        finite = [v for v in self.loss if np.isfinite(v)]
        lmax = max(max(finite, default=1.0), 1e-6) * 1.05

        def pt(x: float, y: float, ymax: float) -> QPointF:
            return QPointF(
                box.left() + box.width() * x / xmax,
                box.bottom() - box.height() * min(max(y / ymax, 0.0), 1.0),
            )

        n = len(self.steps)
        if n:
            stride = max(1, n // int(box.width()))  # at most one point per pixel
            poly = QPolygonF(
                [pt(self.steps[i], self.loss[i], lmax) for i in range(0, n, stride)
                 if np.isfinite(self.loss[i])]
            )  # fmt: skip
            p.setPen(QPen(self.LOSS, 1.2))
            p.drawPolyline(poly)
        if self.dice:
            pts = [pt(s, d, 1.0) for s, d in zip(self.val_steps, self.dice, strict=False)
                   if np.isfinite(d)]  # fmt: skip
            p.setPen(QPen(self.DICE, 1.5))
            p.drawPolyline(QPolygonF(pts))
            p.setBrush(self.DICE)
            for q in pts:
                p.drawEllipse(q, 2.5, 2.5)
        p.setPen(fg)
        last_loss = f"{self.loss[-1]:.3f}" if self.loss else "-"
        last_dice = f"{self.dice[-1]:.3f}" if self.dice else "-"
        p.setPen(self.LOSS)
        p.drawText(QPointF(left, top - 5), f"loss {last_loss} (max {lmax / 1.05:.2f})")
        p.setPen(self.DICE)
        label = f"val Dice {last_dice} (0-1)"
        p.drawText(
            QRectF(w / 2, 0, w / 2 - right, top - 2),
            int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignBottom),
            label,
        )
        p.setPen(fg)
        p.drawText(QPointF(left, h - 4), f"step {int(xmax) if self.steps else 0}")
        p.end()
