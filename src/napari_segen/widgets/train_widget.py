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
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, fields
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
    LineEdit,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from ..data.augment import AugmentConfig
from ..data.conventions import SYNTHETIC_MIXING_NOTE
from ..data.corrections import (
    CHANGED_WEIGHT,
    PSEUDO_WEIGHT,
    UNTOUCHED_MODES,
    changed_fraction,
    correction_pairs,
    with_replay,
)
from ..data.image_io import parse_value_map
from ..data.sources import DENSE, SPARSE, ArraySource, FolderSource, Source, SourcePairs
from ..models import ModelFileError, load_model
from ..training import TrainConfig, TrainEvent, TrainResult, train_segmentation
from ..training.assembly import (
    DEFAULT_START,
    MASKS_ARE,
    NewModel,
    StartModel,
    assemble_segmentation,
    start_spec,
)
from ..training.synthetic_data import (
    MAX_SYNTHETIC_SHARE,
    SyntheticData,
    SyntheticFields,
    check_synthetic_for_run,
    choose_synthetic,
)
from ..training.synthetic_pretrain import StageStarted, pretrain_path, pretrain_then_fine_tune
from ..utils.devices import available_devices
from ..utils.generators import Progress
from ._layers import (
    PREDICTED_KEY,
    PREDICTION_KEY,
    preferred_labels,
    viewer_camera,
    visible_box,
)
from ._layout import collapsible, fit_label, insert_before, make_scrollable
from ._model_catalog import DEFAULT_CHOICE, catalog
from ._worker import TaskRunner

if TYPE_CHECKING:
    import napari

MODE_DENSE = "dense correction (labels = classes)"
MODE_SPARSE = "sparse strokes (0 = unlabelled)"
_FILE_CHOICE = "model file..."
_SCRATCH_CHOICE = "from scratch (new U-Net)"
_PLOT_INTERVAL_MS = 400
#: Fine-tuning a model (not from scratch): 128-pixel crops and a 1-minute time limit by
#: default, a useful fine-tune in about a minute on a CPU (press Train again to go on).
FINE_TUNE_CROP = 128
FINE_TUNE_MINUTES = 1.0
#: Live preview: images up to PREVIEW_WHOLE^2 pixels whole, larger ones the visible part,
#: at most PREVIEW_MAX_SIDE pixels a side around the view's centre (a 512^2 preview of the
#: default U-Net takes 1-3 s on a CPU; previews are spaced to cost at most ~1/4 of the time).
PREVIEW_WHOLE = 512
PREVIEW_MAX_SIDE = 512
_SYNTHETIC_PRETRAIN_TEXT = "Pre-train on synthetic, then fine-tune on real"
#: The synthetic-pair settings as this form names them in messages.
SYNTHETIC_FIELDS = SyntheticFields(
    images="the synthetic images folder", masks="the synthetic masks folder",
    share="'Synthetic share'", pretrain="pre-training", classes="'Class names'",
    where=" under Advanced settings",
)  # fmt: skip
#: The status when synthetic folders are chosen but nothing asks for them.
SYNTHETIC_UNUSED = (
    "the synthetic folders are not used: 'Synthetic share' is 0 and pre-training is off "
    "(raise the share or tick 'Pre-train on synthetic' under Advanced settings to use them)"
)


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
    masks_are: str = "auto"
    class_names: list[str] | None = None  # new names for the start model's classes (or more)
    notes: list[str] = field(default_factory=list)  # the form's, then the assembly's (worker)
    replay: FolderSource | None = None  # the model's old training data: trains only
    replay_share: float = 0.5  # of the training crops
    preview: LivePreview | None = None
    synthetic: SyntheticData | None = None  # mixed in, or pre-trained on ("pretrain")

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
        job.sources,
        start=job.start,
        val_fraction=job.val_split,
        seed=job.config.seed or 0,
        masks_are=job.masks_are,
        class_names=job.class_names,
        synthetic=job.synthetic,
    )
    job.notes = [*job.notes, *run.notes]
    if isinstance(job.layers, CorrectionSource):
        job.notes.append(job.layers.note())
    if job.replay is not None:
        run.train = yield from _read_replay(run.train, job.replay, job.replay_share)
        run.provenance["replay"] = job.replay.describe()
    provenance = {"source": "napari Train widget", **run.provenance}
    if run.pretrain:  # two stages, as napari-segen train --synthetic-pretrain
        training = pretrain_then_fine_tune(
            run, job.out_path, config=job.config, overwrite=job.overwrite, provenance=provenance
        )
    else:
        training = train_segmentation(
            run.train,
            run.val,
            job.out_path,
            start=run.start,
            config=job.config,
            overwrite=job.overwrite,
            provenance=provenance,
        )
    result = yield from with_previews(training, job.preview)
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
        # Which label value paints which class, in the chosen layer's colours (rich text).
        self.legend = fit_label(Label(label="Classes", value=""), selectable=False)
        self.legend.native.setTextFormat(Qt.TextFormat.RichText)
        self.masks_are = ComboBox(
            label="Masks are",
            choices=list(MASKS_ARE),
            value="auto",
            tooltip="class indices, or instance label images (one id per object: trained as "
            "background, interior, boundary); auto detects it and says so in the status",
        )
        self.class_names = LineEdit(label="Class names", value="")
        self.class_names.tooltip = (
            "optional, comma-separated, class 0 first (e.g. 'background, nucleus, boundary'): "
            "other names rename the start model's classes, another count gives it a new final "
            "layer; empty keeps the model's (or the layer's) classes"
        )
        self.use_folders = CheckBox(text="Also train on image/mask folders")
        self.images_dir = FileEdit(label="Images folder", mode="d", visible=False)
        self.masks_dir = FileEdit(label="Masks folder", mode="d", visible=False)
        self.mask_map = LineEdit(label="Mask value map", value="", visible=False)
        self.mask_map.tooltip = (
            "raw mask value:class pairs for the folders' masks, e.g. 0:1,255:0 for ISBI masks "
            "(membrane = 0); empty: as read (0/255 masks become 0/1)"
        )
        self.start_model = ComboBox(label="Start from", choices=self._start_choices)
        self.start_file = FileEdit(label="Model file", filter="*.safetensors", visible=False)
        self.val_split = FloatSpinBox(label="Validation", value=0.2, min=0.0, max=0.9, step=0.05)
        self.epochs = SpinBox(label="Epochs", value=20, min=1, max=10000)
        self.max_minutes = FloatSpinBox(
            label="Time limit (min)", value=0.0, min=0.0, max=10000.0, step=0.5
        )
        self.lr = FloatSpinBox(label="Learning rate", value=1e-3, min=1e-6, max=1.0, step=1e-4)
        self.lr.native.setDecimals(6)
        self.synthetic_images = FileEdit(label="Synthetic images", mode="d")
        self.synthetic_images.tooltip = (
            "optional: a folder of synthetic images (e.g. the Synthesize widget's export); "
            "they train only, never validated on"
        )
        self.synthetic_masks = FileEdit(label="Synthetic masks", mode="d")
        self.synthetic_masks.tooltip = "the folder of their masks, named like the images"
        self.synthetic_share = FloatSpinBox(
            label="Synthetic share", value=0.0, min=0.0, max=MAX_SYNTHETIC_SHARE, step=0.05
        )
        self.synthetic_share.tooltip = (
            f"most of the training crops the synthetic pairs may get, 0 to "
            f"{MAX_SYNTHETIC_SHARE:g}; 0 (the default) does not use them: {SYNTHETIC_MIXING_NOTE}"
        )
        self.synthetic_pretrain = CheckBox(text=_SYNTHETIC_PRETRAIN_TEXT)
        self.synthetic_pretrain.tooltip = (
            "train on the synthetic pairs alone first (validated on the real validation "
            "pairs; that model is written to <name>.pretrain.safetensors), then fine-tune it "
            "on the real pairs into 'Save model as' (leave 'Synthetic share' at 0)"
        )
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
                self.image_layer, self.labels_layer, self.mode, self.legend, self.use_folders,
                self.images_dir, self.masks_dir, self.mask_map, self.start_model, self.start_file,
                self.epochs, self.max_minutes, self.device,
                self.out_path, self.overwrite, self.start_button, self.cancel_button,
                self.resegment_button, self.status,
            ]
        )  # fmt: skip
        self._setup_plot()
        self._fix_status_size()
        # Settings rarely changed stay folded (STYLE 14: forms that stay small), above Train.
        self.advanced_section = collapsible(
            "Advanced settings",
            [
                self.masks_are, self.class_names, self.val_split, self.lr,
                self.synthetic_images, self.synthetic_masks, self.synthetic_share,
                self.synthetic_pretrain,
            ],
        )  # fmt: skip
        insert_before(self, self.advanced_section, self.start_button)
        self._add_corrections_section()
        make_scrollable(self)  # docking never grows the window

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
        self._legend_layer: Any = None
        for w in (self.class_names, self.mode, self.start_model, self.start_file):
            w.changed.connect(self.update_legend)
        self.labels_layer.changed.connect(self._follow_labels_colors)
        for w in (self.synthetic_images, self.synthetic_masks, self.synthetic_share,
                  self.synthetic_pretrain):  # fmt: skip
            w.changed.connect(self._on_synthetic_changed)
        self._stage = ""  # "stage 1 of 2" while a synthetic pre-training run goes on
        self._step_offset = 0  # stage 2's steps follow stage 1's in the plot
        self._on_image_changed(self.image_layer.value)
        self._follow_labels_colors(self.labels_layer.value)

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
            self.update_legend()
        except RuntimeError:
            catalog.changed.disconnect(self._on_catalog_changed)

    def _on_use_folders(self, value: bool) -> None:
        self.images_dir.visible = self.masks_dir.visible = self.mask_map.visible = bool(value)

    def _on_start_changed(self, value: str) -> None:
        self.start_file.visible = value == _FILE_CHOICE

    def _on_synthetic_changed(self, *_: Any) -> None:
        """Say in the status when synthetic folders are chosen that the run would not use."""
        if self.runner.running:
            return
        if self._synthetic_unused():
            self.status.value = SYNTHETIC_UNUSED
        elif self.status.value == SYNTHETIC_UNUSED:
            self.status.value = ""

    def _synthetic_unused(self) -> bool:
        folders = _folder_text(self.synthetic_images) or _folder_text(self.synthetic_masks)
        off = self.synthetic_share.value == 0 and not self.synthetic_pretrain.value
        return bool(folders) and off

    def synthetic_choice(self) -> SyntheticData | None:
        """The synthetic pairs the form asks for (None: not used); ValueError says what is
        wrong and what to do. The same rules as ``napari-segen train --synthetic-*``."""
        images, masks = _folder_text(self.synthetic_images), _folder_text(self.synthetic_masks)
        share, pretrain = float(self.synthetic_share.value), bool(self.synthetic_pretrain.value)
        return choose_synthetic(images, masks, share, pretrain, SYNTHETIC_FIELDS)

    def _check_synthetic(self, job: TrainJob) -> None:
        """Refuse wrong synthetic folders in one line before the run starts (a quick look:
        names paired, a few pairs read), against the start model's classes and the real
        images' kind, as ``napari-segen train`` does."""
        if job.synthetic is None:
            return
        spec = self._start_spec()  # None when unreadable: the run then says why
        check_synthetic_for_run(
            job.synthetic, job.sources, spec, job.class_names, job.masks_are,
            fields=SYNTHETIC_FIELDS,
        )  # fmt: skip

    def _on_out_edited(self, *_: Any) -> None:
        if not getattr(self, "_setting_out", False):
            self._out_edited = True

    def _on_image_changed(self, layer: Any) -> None:
        if layer is None:
            return
        wanted = preferred_labels(self.viewer, layer.name)  # never a hidden one first
        if wanted is not None:
            self.labels_layer.value = wanted
        if not self._out_edited:
            self._set_out(suggest_output_path(layer.name))

    def reset_choices(self, *args: Any) -> None:
        super().reset_choices(*args)
        current = self.labels_layer.value
        if current is None or not current.visible:  # e.g. a hidden ground truth came first
            self._on_image_changed(self.image_layer.value)

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

    # --- the class legend ----------------------------------------------------
    def _follow_labels_colors(self, layer: Any = None) -> None:
        """Show the legend in the colours of ``layer`` (the chosen Labels), and follow them."""
        old = self._legend_layer
        if old is not None and old is not layer:
            old.events.colormap.disconnect(self.update_legend)
        if layer is not None and layer is not old:
            layer.events.colormap.connect(self.update_legend)
        self._legend_layer = layer
        self.update_legend()

    def _start_spec(self) -> Any:
        """The start model's description (None: a new model, or no readable file chosen)."""
        try:
            return start_spec(self.start_choice())
        except (ModelFileError, OSError, KeyError, ValueError):
            return None

    def legend_classes(self) -> list[str]:
        """The class names training will use: typed ones, else the (dense) layer's, else the
        start model's; empty when none is known (a new model without names)."""
        try:
            typed = _parse_class_names(str(self.class_names.value))
        except ValueError:
            typed = None
        if typed:
            return typed
        layer = self.labels_layer.value
        if self.mode.value == MODE_DENSE and layer is not None:
            names = layer.metadata.get("class_names")
            if names:
                return [str(n) for n in names]
        spec = self._start_spec()
        return list(spec.class_names) if spec is not None else []

    def update_legend(self, *_: Any) -> None:
        """Rewrite the legend: a colour square, the label value and the class name per class."""
        import html

        try:
            names = self.legend_classes()
        except RuntimeError:  # the widget's Qt side is gone
            return
        if not names:
            self.legend.value = "type the class names under Advanced settings"
            return
        sparse = self.mode.value == MODE_SPARSE
        layer = self.labels_layer.value
        spec = self._start_spec() if layer is None else None
        entries, plain = [], []
        for i, name in enumerate(names):
            value = i + 1 if sparse else i
            color = _label_color(layer, value, spec, i)
            swatch = (
                f'<span style="color:{color}">&#9632;</span>' if color else "&#9633;"
            )  # a filled square, or a hollow one where the value paints nothing visible
            text = html.escape(name).replace(" ", "&nbsp;")
            entries.append(f"{swatch}&nbsp;{value}&nbsp;{text}")
            plain.append(f"{value} = {name}")
        note = "0 = not annotated" if sparse else ""
        if note:
            entries.append(f"<i>({note})</i>")
            plain.append(note)
        self.legend.value = " &nbsp;".join(entries)
        self.legend.native.setToolTip(
            "Label value painted = class: " + "; ".join(plain)
        )  # plain text: which value paints which class

    def _fix_status_size(self) -> None:
        """Changing status text must not re-layout the window (that re-renders the canvas).

        The status wraps inside the scrolled form (which never resizes the dock), so the
        saved model's path in the final message is shown whole and can be selected.
        """
        fit_label(self.status)  # wrapped to the dock's width; full text in the tooltip

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
            value_map = parse_value_map(self.mask_map.value)
            folders = FolderSource(images_dir, masks_dir, value_map, sparse=mode == SPARSE)
        synthetic = self.synthetic_choice()
        first = pretrain_path(out)
        pretrain = synthetic is not None and synthetic.mode == "pretrain"
        if pretrain and first.exists() and not self.overwrite.value:
            raise ValueError(
                f"{first} (the pre-training model) already exists; choose another file "
                "name or tick 'Overwrite'"
            )
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
        job = TrainJob(
            layers=layers,
            folders=folders,
            start=self.start_choice(),
            val_split=self.val_split.value,
            out_path=out,
            overwrite=self.overwrite.value,
            config=cfg,
            masks_are=str(self.masks_are.value),
            class_names=_parse_class_names(str(self.class_names.value)),
            synthetic=synthetic,
        )
        if self._synthetic_unused():
            job.notes.append(SYNTHETIC_UNUSED)
        job = self._finish_job(job, lab_layer)
        self._check_synthetic(job)
        return job

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
        self._stage, self._step_offset = "", 0
        self._start_preview(job)
        self.status.value = "; ".join([f"training on {job.name}...", *job.notes])
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
        stage = f"{self._stage}: " if self._stage else ""
        if isinstance(ev, StageStarted):  # synthetic pre-training, then fine-tuning
            self._stage = f"stage {ev.stage} of {ev.stages}"
            self._step_offset = self.history["step"][-1] if self.history["step"] else 0
            self.status.value = ev.message
        elif kind == "step":
            self.history["step"].append(self._step_offset + ev.step)
            self.history["loss"].append(ev.loss)
            self._plot_dirty = True
            now = time.monotonic()
            if now - getattr(self, "_last_status", 0.0) > 0.25:
                self._last_status = now
                self.status.value = (
                    f"{stage}epoch {ev.epoch}, step {ev.step}/{ev.total_steps}, loss {ev.loss:.3f}"
                )
        elif kind == "epoch":
            m = ev.metrics
            text = f"{stage}epoch {ev.epoch}: loss {m.get('loss', float('nan')):.3f}"
            dice = m.get("foreground_dice")
            if dice is not None:
                self.history["val_step"].append(self._step_offset + ev.step)
                self.history["dice"].append(dice)
                text += f", validation Dice {dice:.3f}"
            self.status.value = text
            self._plot_dirty = True
        elif kind == "preview":
            self._show_preview(ev)
        elif kind == "status" and ev.message:
            self.status.value = ev.message

    def _on_done(self, result: TrainResult) -> None:
        self.last_result = result
        if result.path is not None and Path(result.path).is_file():
            self._adopt_model(Path(result.path))
        dice = result.best_metrics.get("foreground_dice")
        best = f", best validation Dice {dice:.3f}" if dice is not None else ""
        job = getattr(self, "_job", None)
        notes = list(getattr(job, "notes", []))
        if self._stage and job is not None:
            notes.append(f"the pre-trained model (stage 1) is {pretrain_path(job.out_path)}")
        if result.still_improving:
            notes.append(
                "validation was still improving at the last epoch: train longer "
                "(press Train again to continue from the new model, or raise Epochs)"
            )
        done = f"done in {result.seconds:.0f} s{best}: {result.path}"
        self.status.value = "; ".join([done, *notes])
        self.status.tooltip = "\n".join(notes)
        trained = f"Trained {Path(result.path).name}{best}; press Re-segment to use it"
        show_info("\n".join([trained, *notes]))

    def _on_finish(self) -> None:
        self._redraw()
        self._follow_camera(False)
        job = getattr(self, "_job", None)
        if self.runner.cancelled and job is not None:
            first = pretrain_path(job.out_path)
            if job.out_path.is_file():
                self._adopt_model(job.out_path)
                self.status.value = f"cancelled; the best model so far is {job.out_path}"
            elif self._stage and first.is_file():  # synthetic pre-training ran
                self.status.value = (
                    f"cancelled in {self._stage} before a fine-tuned model was saved; "
                    f"the pre-trained model is {first}"
                )
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

    # --- corrections, replay, fine-tune defaults, live preview ---------------
    def _add_corrections_section(self) -> None:
        """The "Corrections and preview" options, collapsed above the Train button."""
        from superqt import QCollapsible

        self.weight_corrections = CheckBox(text="Weight my corrections", value=True)
        self.weight_corrections.tooltip = (
            "When the labels come from the Segment widget, the pixels you changed count "
            "more in the loss than the ones you left as the model predicted them."
        )
        self.changed_weight = FloatSpinBox(
            label="Correction weight", value=CHANGED_WEIGHT, min=1.0, max=100.0, step=0.5
        )
        self.untouched = ComboBox(label="Untouched pixels", choices=UNTOUCHED_MODES, value="keep")
        self.untouched.tooltip = (
            "keep: train on them as labelled (you accepted them); ignore: train on your "
            f"changes only; pseudo: keep them with weight {PSEUDO_WEIGHT:g}. Inside the regions "
            "you visited with 'Next region to correct' (the '<image> regions to correct' "
            "layer) untouched pixels are always kept: you looked at them"
        )
        self.replay = CheckBox(text="Folders are replay (old training data)")
        self.replay.tooltip = (
            "The image/mask folders are the data the model was trained on: they train only "
            "(no validation) and get about half of the crops, so fine-tuning does not forget."
        )
        self.live_preview = CheckBox(text="Live preview of the visible part", value=True)
        self.live_preview.tooltip = (
            "While training, re-segment what the viewer shows every few steps into "
            "'<image> preview' (in the training thread, at most every 2 s)."
        )
        self.preview_every = 5  # steps
        self.preview_interval_s = 2.0
        inner = Container(
            widgets=[
                self.weight_corrections, self.changed_weight, self.untouched, self.replay,
                self.live_preview,
            ]
        )  # fmt: skip
        inner.margins = (0, 0, 0, 0)
        self.corrections_section = QCollapsible("Corrections and preview")
        self.corrections_section.addWidget(inner.native)
        self._corrections_inner = inner
        insert_before(self, self.corrections_section, self.start_button)
        self._minutes_edited = False
        self.max_minutes.changed.connect(self._on_minutes_edited)
        self.start_model.changed.connect(self._fine_tune_defaults)
        self._fine_tune_defaults(self.start_model.value)

    def _on_minutes_edited(self, *_: Any) -> None:
        if not getattr(self, "_setting_minutes", False):
            self._minutes_edited = True

    def _fine_tune_defaults(self, choice: Any) -> None:
        """Fine-tuning a model: a 1-minute time limit (unless the user set one); scratch: none."""
        if self._minutes_edited:
            return
        self._setting_minutes = True
        try:
            self.max_minutes.value = 0.0 if choice == _SCRATCH_CHOICE else FINE_TUNE_MINUTES
        finally:
            self._setting_minutes = False

    def _reviewed_regions(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """The regions visited with "Next region to correct" (the ``<image> regions to
        correct`` Shapes layer, rectangles the user may also draw), as a bool mask of the
        labels' ``shape``; None when there is no such layer or it is empty."""
        image = self.image_layer.value
        name = f"{getattr(image, 'name', '')} regions to correct"
        if image is None or name not in self.viewer.layers:
            return None
        shapes = self.viewer.layers[name]
        return regions_mask(getattr(shapes, "data", []), shape)

    def _finish_job(self, job: TrainJob, lab_layer: Any) -> TrainJob:
        """Fine-tune crops, corrections from the stored prediction, replay, live preview."""
        if not isinstance(job.start, NewModel) and "crop_size" not in self.config_overrides:
            job.config.crop_size = FINE_TUNE_CROP
        pred = lab_layer.metadata.get(PREDICTION_KEY)
        if (
            self.weight_corrections.value
            and job.mode == DENSE
            and pred is not None
            and tuple(pred.shape) == tuple(job.labels.shape)
        ):
            done = lab_layer.metadata.get(PREDICTED_KEY)
            plain = {f.name: getattr(job.layers, f.name) for f in fields(ArraySource)}
            job.layers = CorrectionSource(
                **plain,
                prediction=np.array(pred, copy=True),
                predicted=None if done is None else np.array(done, copy=True),
                changed_weight=float(self.changed_weight.value),
                untouched=str(self.untouched.value),
                reviewed=self._reviewed_regions(tuple(pred.shape)),
            )
            if job.masks_are == "auto":  # a model's segmentation holds classes
                job.masks_are = "classes"
        if self.replay.value and job.folders is not None:
            job.replay, job.folders = job.folders, None
        if self.live_preview.value:
            layer = self.image_layer.value
            self._preview_source = layer
            self._preview_view = self._visible_box()
            job.preview = LivePreview(
                layer.data[0] if layer.multiscale else layer.data,
                bool(layer.rgb),
                lambda: self._preview_view,
                every=max(int(self.preview_every), 1),
                interval_s=float(self.preview_interval_s),
            )
        return job

    def _visible_box(self, *_: Any) -> tuple:
        """``(slice index, y0, y1, x0, x1)`` of the image shown on the canvas (data pixels).

        Small images (up to ``PREVIEW_WHOLE``^2) whole; larger ones the part in view,
        at most ``PREVIEW_MAX_SIDE`` a side around the view's centre.
        """
        return visible_box(
            self.viewer,
            self._preview_source,
            whole_below=PREVIEW_WHOLE**2,
            max_side=PREVIEW_MAX_SIDE,
        )

    def _update_preview_view(self, *_: Any) -> None:
        # GUI thread, on camera and slice changes: cheap arithmetic only.
        if getattr(self, "_preview_source", None) is not None:
            self._preview_view = self._visible_box()

    def _follow_camera(self, on: bool) -> None:
        """(Dis)connect the preview region to camera moves and slice changes."""
        events = [viewer_camera(self.viewer).events.center, viewer_camera(self.viewer).events.zoom]
        events.append(self.viewer.dims.events.current_step)
        following = getattr(self, "_following", False)
        if on == following:
            return
        self._following = on
        for event in events:
            if on:
                event.connect(self._update_preview_view)
            else:
                event.disconnect(self._update_preview_view)

    def _start_preview(self, job: TrainJob) -> None:
        """Follow the camera and make ``<image> preview`` now, before the worker starts.

        Adding a layer costs napari 100-200 ms of GUI time on a busy CPU; done
        here, it does not compete with the training thread, and the previews
        only replace the layer's data (~20 ms).
        """
        self._follow_camera(job.preview is not None)
        if job.preview is None:
            return
        index, y0, y1, x0, x1 = self._preview_view
        self._place_preview(np.zeros((max(y1 - y0, 1), max(x1 - x0, 1)), np.uint8), y0, x0)

    def _place_preview(self, labels: np.ndarray, y0: int, x0: int, spec: Any = None) -> Any:
        """Put ``labels`` at ``(y0, x0)`` of the image into ``<image> preview`` (GUI thread)."""
        from napari.layers import Labels

        from ._layers import label_colormap

        source = self._preview_source
        name = f"{source.name} preview"
        scale = np.asarray(source.scale[-2:], float)
        translate = np.asarray(source.translate[-2:], float) + np.array([y0, x0]) * scale
        layer = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401
        if isinstance(layer, Labels) and layer.ndim == 2:
            if not np.allclose(layer.translate, translate):
                layer.translate = translate
            layer.data = labels
        else:
            if layer is not None:
                self.viewer.layers.remove(layer)
            active = self.viewer.layers.selection.active
            layer = self.viewer.add_labels(
                labels, name=name, scale=scale, translate=translate, opacity=0.5
            )
            if active is not None:  # painting goes on in the layer the user chose
                self.viewer.layers.selection.active = active
        if spec is not None and layer.metadata.get("colored_for") != spec.class_names:
            layer.colormap = label_colormap(spec)
            layer.metadata["colored_for"] = list(spec.class_names)
        return layer

    def _show_preview(self, p: Preview) -> None:
        """A preview from the worker: only the layer's data changes here (GUI thread)."""
        if getattr(self, "_preview_source", None) is None:
            return
        layer = self._place_preview(p.labels, p.y0, p.x0, p.spec)
        layer.metadata["step"] = p.step
        self.previews_shown = getattr(self, "previews_shown", 0) + 1

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
        if f"{image_layer.name} preview" in self.viewer.layers:  # superseded by the labels
            self.viewer.layers.remove(f"{image_layer.name} preview")
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


# --- corrections that count, replay, live preview ------------------------------------------------
@dataclass
class CorrectionSource(ArraySource):
    """A Labels layer the user corrected, with the model's prediction it started from.

    Read into pairs whose pixel weights say which pixels the user changed
    (:func:`~napari_segen.data.corrections.correction_pairs`). ``prediction``
    and ``predicted`` are copies of the layer's metadata (see
    :func:`~napari_segen.widgets._layers.remember_prediction`).
    """

    prediction: Any = None
    predicted: Any = None
    changed_weight: float = CHANGED_WEIGHT
    untouched: str = "keep"
    reviewed: Any = None  # bool mask of the regions the user visited, or None
    changed: float | None = None  # fraction of pixels the user changed (set by read)

    def read(self) -> SourcePairs:
        pairs = correction_pairs(
            self.image, self.labels, self.prediction, self.predicted, name=self.name,
            rgb=self.rgb, changed_weight=self.changed_weight, untouched=self.untouched,
            reviewed=self.reviewed,
        )  # fmt: skip
        self.changed = changed_fraction(self.labels, self.prediction)
        names = list(self.class_names) if self.class_names else None
        return SourcePairs(self.name, pairs, class_names=names)

    def describe(self) -> dict[str, Any]:
        corrections = {"changed_weight": self.changed_weight, "untouched": self.untouched}
        if self.reviewed is not None:
            corrections["reviewed_fraction"] = round(float(np.mean(self.reviewed)), 5)
        if self.changed is not None:
            corrections["changed_fraction"] = round(self.changed, 5)
        return {**super().describe(), "corrections": corrections}

    def note(self) -> str:
        """One line for the status: how much was corrected and how it counts."""
        share = f"{self.changed:.1%}" if self.changed is not None else "some"
        rest = {"keep": "kept", "ignore": "ignored", "pseudo": "down-weighted"}[self.untouched]
        if self.reviewed is not None and self.untouched != "keep":
            rest += f" outside the {np.mean(self.reviewed):.0%} of the image you reviewed"
        return (
            f"{share} of the pixels differ from the model's segmentation (weighted "
            f"{self.changed_weight:g}x; untouched pixels {rest})"
        )


def regions_mask(shapes: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """The bounding boxes of ``shapes`` (vertex arrays in data pixels; for stacks the
    leading coordinates name the slice) filled into a bool mask of ``shape``; None if
    no box falls inside it."""
    mask = np.zeros(shape, bool)
    lead = len(shape) - 2
    for vertices in shapes:
        v = np.asarray(vertices, float)
        if v.ndim != 2 or v.shape[1] != len(shape):
            continue
        index = tuple(int(round(c)) for c in v[0, :lead])
        if any(not 0 <= i < n for i, n in zip(index, shape[:lead], strict=True)):
            continue
        (y0, x0), (y1, x1) = np.floor(v[:, lead:].min(0)), np.ceil(v[:, lead:].max(0))
        ys = slice(int(max(y0, 0)), int(min(y1, shape[-2])))
        xs = slice(int(max(x0, 0)), int(min(x1, shape[-1])))
        mask[(*index, ys, xs)] = True
    return mask if mask.any() else None


def _read_replay(
    train: list, replay: FolderSource, share: float
) -> Generator[Progress, None, list]:
    """The training pairs with the replay folders' pairs (training only, ``share`` of the crops)."""
    yield Progress(0, 0, f"reading the replay data {Path(replay.images).name}")
    return with_replay(train, replay.read().pairs, share)


@dataclass
class LivePreview:
    """What the worker needs to re-segment the visible part of the image while training.

    ``view()`` returns ``(slice index, y0, y1, x0, x1)`` in the image's data
    pixels: the GUI thread keeps it up to date from the camera (a tuple read
    is atomic); the worker reads the image there and predicts with a copy of
    the model being trained.
    """

    image: Any
    rgb: bool
    view: Callable[[], tuple]
    every: int = 5
    interval_s: float = 2.0
    tile_size: int = 256


@dataclass
class Preview:
    """A preview made in the worker: the classes of the region at ``(y0, x0)`` of ``index``."""

    labels: np.ndarray
    index: tuple[int, ...]
    y0: int
    x0: int
    step: int
    spec: Any = None
    kind: str = "preview"
    message: str = ""


def with_previews(
    events: Generator[Any, None, Any], preview: LivePreview | None
) -> Generator[Any, None, Any]:
    """Pass the trainer's events on; after some ``"step"`` events also yield a :class:`Preview`.

    A preview is made every ``preview.every`` steps, at most every
    ``interval_s`` seconds and at most a quarter of the time (never sooner
    than 3 times its own cost after the last one). Runs in the worker thread.
    """
    if preview is None:
        return (yield from events)
    last, cost = -float("inf"), 0.0
    try:
        while True:
            try:
                ev = next(events)
            except StopIteration as stop:
                return stop.value
            yield ev
            model = getattr(ev, "model", None)
            if getattr(ev, "kind", "") != "step" or model is None or ev.step % preview.every:
                continue
            now = time.monotonic()
            if now - last < max(preview.interval_s, 3 * cost):
                continue
            shown = predict_preview(model, preview, ev.step)
            last = time.monotonic()
            cost = last - now
            if shown is not None:
                yield shown
    finally:
        events.close()


def predict_preview(model: Any, preview: LivePreview, step: int) -> Preview | None:
    """Segment the visible region with a copy of ``model`` as it stands (worker thread)."""
    import copy

    from ..inference import predict
    from ..models.model_file import LoadedModel

    index, y0, y1, x0, x1 = preview.view()
    if y1 <= y0 or x1 <= x0:
        return None
    plane = np.asarray(preview.image[index] if index else preview.image)[y0:y1, x0:x1]
    module = copy.deepcopy(model.module).eval()  # the trainer's stays in training mode
    device = next(module.parameters()).device
    snapshot = LoadedModel(module, model.spec)
    labels = predict(
        snapshot, plane, rgb=preview.rgb, tile_size=preview.tile_size, device=device
    ).labels
    return Preview(labels, tuple(index), y0, x0, step, model.spec)


def _label_color(layer: Any, value: int, spec: Any, index: int) -> str | None:
    """``#rrggbb`` that label ``value`` is drawn in: ``layer``'s colour, or without a layer the
    model's colour of class ``index``; None where it is transparent or unknown."""
    rgba = None
    if layer is not None:
        try:
            rgba = layer.get_color(value)
        except (AttributeError, IndexError, KeyError, ValueError):
            rgba = None
    elif spec is not None and index < len(spec.class_colors) and spec.class_colors[index]:
        from napari.utils.colormaps.standardize_color import transform_color

        rgba = transform_color(spec.class_colors[index])[0]
    if rgba is None or float(rgba[3]) == 0:
        return None
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgba[:3])


def _folder_text(edit: FileEdit) -> str:
    """The folder typed or chosen in ``edit`` ("" when empty: its value would be ``.``)."""
    return str(edit.line_edit.value).strip()


def _parse_class_names(text: str) -> list[str] | None:
    """``"background, cell"`` -> ``["background", "cell"]``; empty -> None; one name is refused."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        return None
    if len(names) < 2:
        raise ValueError(
            "give at least two class names, class 0 first (e.g. 'background, cell'), "
            "or leave 'Class names' empty"
        )
    return names
