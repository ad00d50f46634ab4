"""The Synthesize dock widget: train a pix2pix cGAN, generate images from labels, export pairs.

Three actions, each run off the GUI thread by a
:class:`~napari_segen.widgets._worker.TaskRunner` (progress bar, Cancel):

* **Train cGAN** on the chosen Image + Labels layers (class index per pixel,
  0 = background; stacks give one pair per painted slice) or on image/mask
  folders. Sample grids (mask | real | generated) appear in a
  ``pix2pix samples`` layer while it trains; the held-out quality (SSIM, PSNR,
  FID or a labelled feature distance) is shown at the end.
* **Generate** an image from the current Labels layer into ``<labels> synthetic``.
* **Export** N synthetic pairs (randomly transformed masks + generated images)
  to a folder that ``napari-segen train`` and the Train widget read; in the
  folded "Quality filter for exported pairs" section a segmentation model (the bundled default
  or a file) can score each pair and remove those below a minimum Dice
  (``scores.csv`` beside the pairs), in the same task as the export.

"Texture strength" scales the noise maps of a generator trained with noise
(1: as trained, 0: its noise-free drawing) for Generate and Export; choosing a
generator file sets it to the strength calibrated when that generator was
trained (1 when none was), which the user can still change.

"Score generator" compares the image generated from the Labels layer with the
Image layer. The form starts with settings a CPU finishes in minutes (crop 128,
width 32, 300 steps) and the paper's on a GPU (256, 64, 2000); the network width,
the recipe ("augment", the default: texture with L1 on the noise-free drawing and
mode seeking, the recipe whose pairs helped a U-Net; the paper's pix2pix;
"texture": resize up-sampling, noise maps, a 2-scale discriminator with feature
matching; or "balanced": texture with an SSIM-trained noise-free drawing and
mode seeking) and its single options, held-out share, time limit and resume sit
in a folded "Advanced training settings" section. While
training, the status shows the time left; the saved file's full path can be copied.
All the work is done by :mod:`napari_segen.synthesis`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
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

from ..data.conventions import (
    DEFAULT_SYNTH_PRESET,
    SUGGESTED_SYNTHETIC_SHARE,
    SYNTHETIC_MIXING_NOTE,
)
from ..data.sources import DENSE, ArraySource, FolderSource, Source
from ..models import default_generator_path, default_model_path
from ..synthesis.calibrate import MAX_RECOMMENDED_STRENGTH
from ..synthesis.device_defaults import DEVICE_DEFAULTS, device_kind
from ..synthesis.trainer import PRESETS
from ..utils.devices import available_devices
from ..utils.generators import Progress
from ._layers import preferred_labels
from ._layout import collapsible, fit_label, insert_before, make_scrollable
from ._model_catalog import DEFAULT_CHOICE, catalog
from ._worker import TaskRunner, one_line
from .metrics_widget import MetricsReadout

if TYPE_CHECKING:
    import napari

SAMPLES_LAYER = "pix2pix samples"
FILTER_OFF = "off (keep every pair)"
FILTER_FILE = "model file..."
CROP_CHOICES = [32, 64, 128, 256, 512]


#: Form defaults by device kind: the pix2pix paper's settings where a GPU runs them in
#: minutes, and a smaller network, crop and run that a CPU finishes in minutes too.
def format_eta(seconds: float) -> str:
    """``"~40 s left"``, ``"~3 min left"``, ``"~1.5 h left"``."""
    if seconds < 90:
        return f"~{max(seconds, 1):.0f} s left"
    if seconds < 90 * 60:
        return f"~{seconds / 60:.0f} min left"
    return f"~{seconds / 3600:.1f} h left"


# --- jobs (run in the worker thread; plain functions over the core) -----------------------
def train_job(
    sources: list[Source],
    out_path: Path,
    config: Any,
    val_fraction: float,
    resume: bool,
    overwrite: bool,
    provenance: dict[str, Any],
) -> Generator[Any, None, Any]:
    """Assemble the run (split, classes), train, and score (on the training pairs when none
    is held out)."""
    from ..synthesis.quality import evaluate_generator
    from ..synthesis.trainer import train_pix2pix
    from ..training.assembly import assemble_pix2pix

    run = yield from assemble_pix2pix(sources, val_fraction=val_fraction, seed=config.seed or 0)
    result = yield from train_pix2pix(
        run.train, out_path, config=config, val_pairs=run.val, class_names=run.class_names,
        resume=resume, overwrite=overwrite, provenance={**provenance, **run.provenance},
    )  # fmt: skip
    if config.evaluate and not run.val:
        q = evaluate_generator(result.model, run.train, device=config.device)
        q["message"] = (
            q.get("message", "") + " (scored on the training pairs: none was held out; "
            "raise 'Held out' for an honest readout)"
        )
        result.quality = q
    return result


def generate_job(
    path: Path, labels: np.ndarray, device: str, stochastic: bool, seed: int | None,
    noise_strength: float | None = None,
) -> Generator[Any, None, np.ndarray]:  # fmt: skip
    """Generate an image (or a stack) from ``labels`` with the generator in ``path``
    (``noise_strength`` None: its recommended texture strength)."""
    from ..synthesis.generate import iter_generate, load_generator

    model = load_generator(path)
    return (
        yield from iter_generate(
            model, labels, device=device, stochastic=stochastic, seed=seed,
            noise_strength=noise_strength,
        )
    )  # fmt: skip


def export_job(
    path: Path, masks: list[np.ndarray], out_dir: Path, n: int, device: str, stochastic: bool,
    overwrite: bool, seed: int | None, noise_strength: float | None = None,
    filter_path: Path | None = None, min_dice: float = 0.7,
    on_stop: Callable[[Any], None] | None = None,
) -> Generator[Any, None, Any]:  # fmt: skip
    """Export ``n`` pairs and, with ``filter_path`` (a segmentation model), keep only those
    it segments with foreground Dice >= ``min_dice``; returns a ``FilteredExport``.
    ``on_stop`` gets the ``StoppedExport`` of a task cancelled or failed after a pair."""
    from ..models.model_file import load_model
    from ..synthesis.filter import iter_export_filtered
    from ..synthesis.generate import load_generator

    model = load_generator(path)
    filter_model = load_model(filter_path) if filter_path is not None else None
    return (
        yield from iter_export_filtered(
            model, masks, out_dir, n, filter_model=filter_model, min_dice=min_dice,
            device=device, stochastic=stochastic, overwrite=overwrite, seed=seed,
            noise_strength=noise_strength, on_stop=on_stop,
        )
    )  # fmt: skip


def quality_job(
    path: Path, source: Source, device: str
) -> Generator[Progress, None, dict[str, Any]]:
    from ..synthesis.generate import load_generator
    from ..synthesis.quality import evaluate_generator

    model = load_generator(path)
    yield Progress(0, 1, "scoring")
    q = evaluate_generator(model, source.read().pairs, device=device)
    yield Progress(1, 1, "scored")
    return q


def new_generator_path(folder: Path | None = None) -> Path:
    """A new ``<folder>/pix2pix-generator[-N].safetensors`` (default: ~/napari-segen/models)."""
    folder = folder or Path.home() / "napari-segen" / "models"
    path, n = folder / "pix2pix-generator.safetensors", 2
    while path.exists():
        path, n = folder / f"pix2pix-generator-{n}.safetensors", n + 1
    return path


class SynthesizeWidget(Container):
    """Train a pix2pix generator on painted labels and draw images for new labels.

    Sub-widgets are attributes, so tests can set values and call :meth:`train`,
    :meth:`generate`, :meth:`export` and :meth:`score` directly.
    ``config_overrides`` holds :class:`~napari_segen.synthesis.SynthConfig`
    fields the form does not show (``n_layers``, ``dropout``, ``sample_every``...).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.config_overrides: dict[str, Any] = {}
        self.last_result: Any = None
        self.last_quality: dict[str, Any] | None = None
        self.last_export: Any = None
        self.last_filter: Any = None
        self.last_calibration: str = ""

        self.image_layer = ComboBox(label="Image", choices=self._image_choices)
        self.labels_layer = ComboBox(label="Labels (classes)", choices=self._labels_choices)
        self.use_folders = CheckBox(text="Train on image/mask folders instead")
        self.images_dir = FileEdit(label="Images folder", mode="d", visible=False)
        self.masks_dir = FileEdit(label="Masks folder", mode="d", visible=False)
        self.mask_map = LineEdit(label="Mask value map", value="", visible=False)
        self.mask_map.tooltip = "e.g. 0:1,255:0 for ISBI masks (membrane = 0)"
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        defaults = DEVICE_DEFAULTS[device_kind(str(self.device.value))]
        self.steps = SpinBox(label="Steps", value=defaults["steps"], min=1, max=10_000_000)
        self.crop_size = ComboBox(
            label="Crop size", choices=CROP_CHOICES, value=defaults["crop_size"]
        )
        self.net_width = SpinBox(
            label="Network width", value=defaults["width"], min=4, max=512,
            tooltip="filters in the first layer of the generator and the discriminator (ngf, "
            "ndf; the paper uses 64); halving it cuts the computation to about a quarter",
        )  # fmt: skip
        paper = PRESETS[DEFAULT_SYNTH_PRESET]
        self.preset = ComboBox(
            label="Recipe", choices=list(PRESETS), value=DEFAULT_SYNTH_PRESET,
            tooltip="pix2pix: the paper's. texture: resize-then-convolve up-sampling (no "
            "checkerboard), noise maps in the decoder, a 2-scale discriminator with feature "
            "matching and a lighter L1 term. augment: texture with L1 on the noise-free drawing "
            "and mode seeking (its pairs helped a 4-image U-Net on ISBI). balanced: texture "
            "with an SSIM-trained noise-free "
            "drawing and mode seeking; its texture strength is calibrated after training. "
            "Choosing one sets the options below.",
        )  # fmt: skip
        self.upsample = ComboBox(
            label="Up-sampling", choices=["transpose", "resize", "bilinear"],
            value=paper["upsample"],
            tooltip="transpose: the paper's transposed convolutions; resize / bilinear: "
            "interpolate, then a 3x3 convolution (no checkerboard)",
        )  # fmt: skip
        self.noise = CheckBox(
            text="Noise maps in the decoder", value=paper["noise"],
            tooltip="learned-scale Gaussian noise in each decoder layer: texture that varies "
            "per image (the seed picks it)",
        )  # fmt: skip
        self.d_scales = SpinBox(
            label="Discriminator scales", value=paper["d_scales"], min=1, max=4,
            tooltip="PatchGANs on the image at full, half... size (pix2pixHD uses 2-3)",
        )  # fmt: skip
        self.fm_weight = FloatSpinBox(
            label="Feature matching", value=paper["fm_weight"], min=0.0, max=1000.0, step=1.0,
            tooltip="weight of the discriminator feature-matching loss (0: off; pix2pixHD: 10)",
        )  # fmt: skip
        self.l1_weight = FloatSpinBox(
            label="L1 weight", value=paper["l1_weight"], min=0.0, max=10_000.0, step=10.0,
            tooltip="weight of the L1 distance to the real image (the paper: 100)",
        )  # fmt: skip
        self.l1_sigma = FloatSpinBox(
            label="L1 low-pass (px)", value=paper["l1_sigma"], min=0.0, max=64.0, step=0.5,
            tooltip="compare real and generated images through a Gaussian low-pass of this "
            "sigma in the L1 term, so it holds the layout and leaves texture free (0: per pixel)",
        )  # fmt: skip
        self.l1_noise_free = CheckBox(
            text="L1 on the noise-free drawing", value=paper["l1_noise_free"],
            tooltip="apply the L1 term to the generator's drawing without noise, so the noise is "
            "free to draw texture (needs noise maps)",
        )  # fmt: skip
        self.ssim_weight = FloatSpinBox(
            label="SSIM weight", value=paper["ssim_weight"], min=0.0, max=10_000.0, step=10.0,
            tooltip="an SSIM term beside L1 on the drawing L1 judges (keeps local contrast; "
            "0: off)",
        )  # fmt: skip
        self.ms_weight = FloatSpinBox(
            label="Mode seeking", value=paper["ms_weight"], min=0.0, max=100.0, step=0.1,
            tooltip="rewards different images for different noise, so the generator cannot "
            "learn to ignore its noise maps (needs noise maps; 0: off)",
        )  # fmt: skip
        self.noise_init = FloatSpinBox(
            label="Noise maps start at", value=paper["noise_init"], min=0.0, max=1.0, step=0.05,
            tooltip="starting scale of every noise map (0, as in StyleGAN, leaves all but the "
            "finest layer's noise unused in a short run; needs noise maps)",
        )  # fmt: skip
        self.calibrate_noise = CheckBox(
            text="Calibrate texture strength after training", value=paper["calibrate_noise"],
            tooltip="with held-out pairs and noise maps: record the texture strength whose "
            "images beat a flat painting of the mask by the widest margin on SSIM and FID / "
            "feature distance (or miss by the least); Generate and Export then use it",
        )  # fmt: skip
        self.val_split = FloatSpinBox(label="Held out", value=0.2, min=0.0, max=0.9, step=0.05)
        self.max_minutes = FloatSpinBox(
            label="Time limit (min)", value=0.0, min=0.0, max=100_000.0, step=0.5
        )
        self.out_path = FileEdit(
            label="Save generator as", mode="w", filter="*.safetensors",
            value=new_generator_path(),
        )  # fmt: skip
        self.resume = CheckBox(text="Resume the run saved in this file")
        self.overwrite = CheckBox(text="Overwrite an existing generator file")
        self.train_button = PushButton(text="Train cGAN")

        # The bundled ISBI generator until the user trains or picks one: Generate works at once.
        bundled = Path(str(default_generator_path()))
        self.model_path = FileEdit(
            label="Generator", mode="r", filter="*.safetensors",
            value=bundled if bundled.is_file() else None,
        )  # fmt: skip
        self.model_path.tooltip = (
            "the generator that draws images from labels; at first the bundled one, trained on "
            "the ISBI sample (0 = cell interior, 1 = membrane, as Segment writes them)"
        )
        self.stochastic = CheckBox(
            text="Dropout noise (a different image each time)",
            tooltip="Generate: keep dropout on and draw a generator's noise maps unseeded; "
            "unticked, the same labels give the same image (Export always seeds its pairs)",
        )
        self.texture_strength = FloatSpinBox(
            label="Texture strength", value=1.0, min=0.0, max=MAX_RECOMMENDED_STRENGTH, step=0.25,
            tooltip="scale of the noise maps of a generator trained with noise (the bundled "
            "one is): 1 = as trained, 0 = its noise-free drawing; lower gives smoother images "
            "with less grain, higher more. Choosing a generator sets it to the strength "
            "calibrated when it was trained (else 1). No effect on a generator without noise.",
        )  # fmt: skip
        self.texture_strength.native.setDecimals(4)  # calibrated strengths are sixteenths
        self.generate_button = PushButton(text="Generate image from labels")
        self.n_pairs = SpinBox(label="Pairs to export", value=20, min=1, max=1_000_000)
        self.export_dir = FileEdit(
            label="Export folder", mode="d", value=Path.home() / "napari-segen" / "synthetic"
        )
        self.export_overwrite = CheckBox(text="Overwrite existing pairs (and scores.csv)")
        self.filter_model = ComboBox(
            label="Filter pairs with", choices=self._filter_choices, value=FILTER_OFF,
            tooltip="a segmentation model that segments each exported image; pairs whose "
            "prediction has a foreground Dice below 'Min Dice' against their mask are removed, "
            "all scores go to scores.csv in the export folder",
        )  # fmt: skip
        self.filter_file = FileEdit(
            label="Filter model file", mode="r", filter="*.safetensors", visible=False
        )
        self.min_dice = FloatSpinBox(
            label="Min Dice", value=0.7, min=0.0, max=1.0, step=0.05,
            tooltip="foreground Dice (0-1) a pair needs to be kept",
        )  # fmt: skip
        self.export_button = PushButton(text="Export synthetic pairs")
        self.score_button = PushButton(text="Score generator on image + labels")
        self.cancel_button = PushButton(text="Cancel")
        self.status = fit_label(Label(value=""))
        self.saved_path = fit_label(Label(label="Saved generator", value=""))
        self.saved_path.visible = False
        self.copy_path_button = PushButton(text="Copy path", visible=False)
        self.readout = MetricsReadout()

        self.extend([
            self.image_layer, self.labels_layer, self.use_folders, self.images_dir,
            self.masks_dir, self.mask_map, self.device, self.steps, self.crop_size,
            self.out_path, self.overwrite,
        ])  # fmt: skip
        self.extend([
            self.train_button, self.saved_path, self.copy_path_button, self.model_path,
            self.stochastic, self.texture_strength, self.generate_button, self.n_pairs,
            self.export_dir,
            self.export_overwrite, self.export_button, self.score_button, self.cancel_button,
            self.status, self.readout,
        ])  # fmt: skip
        # Settings rarely changed stay folded (STYLE 14: forms that stay small), above Train.
        self.advanced_section = collapsible(
            "Advanced training settings",
            [
                self.net_width,
                self.preset,
                self.upsample,
                self.noise,
                self.d_scales,
                self.fm_weight,
                self.l1_weight,
                self.l1_sigma,
                self.l1_noise_free,
                self.ssim_weight,
                self.ms_weight,
                self.noise_init,
                self.calibrate_noise,
                self.val_split,
                self.max_minutes,
                self.resume,
            ],
        )
        insert_before(self, self.advanced_section, self.train_button)
        self.filter_section = collapsible(
            "Quality filter for exported pairs",
            [self.filter_model, self.filter_file, self.min_dice],
        )
        insert_before(self, self.filter_section, self.export_button)

        buttons = [self.train_button, self.generate_button, self.export_button, self.score_button]
        self.runner = TaskRunner(buttons, self.cancel_button, self.status)
        self.train_button.changed.connect(self.train)
        self.generate_button.changed.connect(self.generate)
        self.export_button.changed.connect(self.export)
        self.score_button.changed.connect(self.score)
        self.use_folders.changed.connect(self._on_use_folders)
        self.copy_path_button.changed.connect(self.copy_path)
        self._device_kind = device_kind(str(self.device.value))
        self.device.changed.connect(self._on_device)
        self.preset.changed.connect(self._on_preset)
        self.model_path.changed.connect(self._on_generator_changed)
        self._on_generator_changed(self.model_path.value)
        self.filter_model.changed.connect(self._on_filter_changed)
        catalog.changed.connect(self._on_catalog_changed)
        self.image_layer.changed.connect(self._pick_labels)
        self._pick_labels()
        self._eta_start: tuple[float, int] | None = None
        make_scrollable(self)

    def _filter_choices(self, _=None) -> list[str]:
        return [FILTER_OFF, *catalog.choices(), FILTER_FILE]

    def _on_catalog_changed(self, *_: Any) -> None:
        # The catalogue outlives this widget: once its Qt side is gone, stop listening.
        try:
            self.filter_model.reset_choices()
        except RuntimeError:
            catalog.changed.disconnect(self._on_catalog_changed)

    def _on_filter_changed(self, value: Any) -> None:
        self.filter_file.visible = value == FILTER_FILE

    def _image_choices(self, _=None) -> list:
        from napari.layers import Image

        return [
            (layer.name, layer)
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.name != SAMPLES_LAYER
        ]

    def _labels_choices(self, _=None) -> list:
        from napari.layers import Labels

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Labels)]

    def reset_choices(self, *args: Any) -> None:
        super().reset_choices(*args)
        current = self.labels_layer.value
        if current is None or not current.visible:
            self._pick_labels()

    def _pick_labels(self, *_: Any) -> None:
        """Offer ``<image> labels`` (visible) first, never a hidden layer before a visible one."""
        image = self.image_layer.value
        layer = preferred_labels(self.viewer, image.name if image is not None else None)
        if layer is not None and layer is not self.labels_layer.value:
            self.labels_layer.value = layer

    def _on_device(self, value: Any) -> None:
        """Switch the CPU/GPU defaults of the fields the user has not changed."""
        old, new = DEVICE_DEFAULTS[self._device_kind], DEVICE_DEFAULTS[device_kind(str(value))]
        self._device_kind = device_kind(str(value))
        for key, widget in (("steps", self.steps), ("crop_size", self.crop_size),
                            ("width", self.net_width)):  # fmt: skip
            if widget.value == old[key]:
                widget.value = new[key]

    def _recipe_widgets(self) -> dict[str, Any]:
        return {
            "upsample": self.upsample, "noise": self.noise, "d_scales": self.d_scales,
            "fm_weight": self.fm_weight, "l1_weight": self.l1_weight,
            "l1_sigma": self.l1_sigma, "l1_noise_free": self.l1_noise_free,
            "ssim_weight": self.ssim_weight, "ms_weight": self.ms_weight,
            "noise_init": self.noise_init, "calibrate_noise": self.calibrate_noise,
        }  # fmt: skip

    def _on_preset(self, value: Any) -> None:
        """Set the recipe's options (each can still be changed afterwards)."""
        for key, widget in self._recipe_widgets().items():
            widget.value = PRESETS[str(value)][key]

    def _on_generator_changed(self, value: Any = None) -> None:
        """Set Texture strength to the chosen generator's recommended strength (read from
        its description only: this runs on the GUI thread)."""
        from ..synthesis.calibrate import file_noise_strength

        path = self.model_path.value if value is None else value
        strength = file_noise_strength(None if path is None else Path(str(path)))
        spin = self.texture_strength
        spin.value = min(max(strength, spin.min), spin.max)

    def copy_path(self, *_: Any) -> None:
        """Put the saved generator's full path on the clipboard."""
        from qtpy.QtWidgets import QApplication

        QApplication.clipboard().setText(str(self.saved_path.value))
        show_info(f"copied {self.saved_path.value}")

    def _show_saved(self, path: Any) -> None:
        self.saved_path.value = str(path)
        self.saved_path.visible = self.copy_path_button.visible = True

    def _on_use_folders(self, value: bool) -> None:
        self.images_dir.visible = self.masks_dir.visible = self.mask_map.visible = bool(value)

    def _busy(self) -> bool:
        if self.runner.running:
            show_info("a task is running; wait for it or cancel it")
            return True
        return False

    # --- inputs ---------------------------------------------------------------------------
    def layer_source(self) -> ArraySource:
        """The chosen Image and Labels layers as a training source (class index per pixel)."""
        image, labels = self.image_layer.value, self.labels_layer.value
        if image is None or labels is None:
            raise ValueError("choose an Image layer and the Labels layer painted over it")
        names = labels.metadata.get("class_names")
        return ArraySource(
            image.data[0] if image.multiscale else image.data,
            np.array(labels.data[0] if labels.multiscale else labels.data, copy=True),
            DENSE,
            name=image.name,
            rgb=bool(image.rgb),
            class_names=list(names) if names else None,
            labels_name=labels.name,
        )

    def folder_source(self) -> FolderSource:
        """The chosen image and mask folders as a training source."""
        from ..data.image_io import parse_value_map

        images, masks = Path(str(self.images_dir.value)), Path(str(self.masks_dir.value))
        if not images.is_dir() or not masks.is_dir():
            raise ValueError("choose the images folder and the masks folder")
        return FolderSource(images, masks, parse_value_map(self.mask_map.value))

    def source(self) -> Source:
        """The folders when ticked, else the layers."""
        return self.folder_source() if self.use_folders.value else self.layer_source()

    def build_config(self) -> Any:
        from ..synthesis.trainer import SynthConfig

        kw: dict[str, Any] = dict(
            steps=int(self.steps.value),
            crop_size=int(self.crop_size.value),
            device=str(self.device.value),
            time_limit_s=float(self.max_minutes.value) * 60 or None,
            ngf=int(self.net_width.value),
            ndf=int(self.net_width.value),
            upsample=str(self.upsample.value),
            noise=bool(self.noise.value),
            d_scales=int(self.d_scales.value),
            fm_weight=float(self.fm_weight.value),
            l1_weight=float(self.l1_weight.value),
            l1_sigma=float(self.l1_sigma.value),
            l1_noise_free=bool(self.l1_noise_free.value),
            ssim_weight=float(self.ssim_weight.value),
            ms_weight=float(self.ms_weight.value),
            noise_init=float(self.noise_init.value),
            calibrate_noise=bool(self.calibrate_noise.value),
        )
        kw.update(self.config_overrides)
        cfg = SynthConfig(**kw)
        cfg.check()
        return cfg

    def generator_path(self) -> Path:
        path = Path(str(self.model_path.value))
        if not path.is_file():
            raise ValueError("choose a generator file (.safetensors), or train one first")
        return path

    def filter_model_path(self) -> Path | None:
        """The segmentation model that filters exported pairs (None: no filter).

        Raises a ValueError when the chosen file is missing or is not a segmentation model.
        """
        from ..models import read_spec
        from ..synthesis.filter import check_filter_spec

        choice = self.filter_model.value
        if choice == FILTER_OFF:
            return None
        if choice == FILTER_FILE:
            path = Path(str(self.filter_file.value))
            if not path.is_file():
                raise ValueError("choose the filter's segmentation model file (.safetensors)")
        elif choice == DEFAULT_CHOICE:
            path = Path(str(default_model_path()))
        else:
            path = Path(catalog.path_for(choice))
        check_filter_spec(read_spec(path), path.name)
        return path

    def _labels_array(self) -> tuple[Any, np.ndarray]:
        layer = self.labels_layer.value
        if layer is None:
            raise ValueError("choose the Labels layer to generate from")
        return layer, np.asarray(layer.data)

    # --- actions --------------------------------------------------------------------------
    def train(self, *_: Any) -> None:
        """Train the cGAN on the layers (or folders) in a worker."""
        if self._busy():
            return
        try:
            source = self.source()
            cfg = self.build_config()
            out = Path(str(self.out_path.value))
            if out.suffix != ".safetensors":
                out = out.with_suffix(".safetensors")
            if out.exists() and not (self.overwrite.value or self.resume.value):
                raise ValueError(
                    f"{out.name} already exists; choose another name, tick 'Overwrite' or 'Resume'"
                )
        except (ValueError, OSError) as err:
            show_error(str(err))
            return
        self.status.value = "training pix2pix..."
        self.last_calibration = ""
        self._eta_start = None
        self.runner.start(
            train_job, [source], out, cfg, float(self.val_split.value), bool(self.resume.value),
            bool(self.overwrite.value), {"source": "napari Synthesize widget"},
            description="Training pix2pix", on_event=self._on_train_event,
            on_done=self._on_trained,
        )  # fmt: skip

    def _on_train_event(self, ev: Any) -> None:
        kind = getattr(ev, "kind", "status")  # assembling the run yields plain Progress
        if kind == "status":
            if ev.message:
                self.status.value = ev.message
        elif ev.kind == "step":
            now = time.monotonic()
            if self._eta_start is None:  # the first step includes start-up: time from it
                self._eta_start = (now, ev.step)
            if ev.step % 10 == 0 or ev.step == ev.total_steps:
                text = (
                    f"step {ev.step}/{ev.total_steps}  L1 {ev.losses['l1']:.3f}  "
                    f"D {ev.losses['d']:.3f}"
                )
                t0, s0 = self._eta_start
                if ev.step > s0 and ev.step < ev.total_steps:
                    left = (now - t0) / (ev.step - s0) * (ev.total_steps - ev.step)
                    text += f"  {format_eta(left)}"
                self.status.value = text
        elif ev.kind == "sample" and ev.image is not None:
            if SAMPLES_LAYER in self.viewer.layers:
                self.viewer.layers[SAMPLES_LAYER].data = ev.image
            else:
                self.viewer.add_image(ev.image, name=SAMPLES_LAYER, rgb=True)
        elif ev.kind == "saved":
            self.model_path.value = ev.path
            self._show_saved(ev.path)
        elif ev.kind == "calibrating":
            self.status.value = f"calibrating the texture strength: {ev.message}"
        elif ev.kind == "calibration":
            self.last_calibration = ev.message
            self.status.value = ev.message

    def _on_trained(self, result: Any) -> None:
        self.last_result = result
        if result.path is not None:
            self.model_path.value = result.path
            self._show_saved(result.path)
            self._on_generator_changed(result.path)  # the same path: no change signal
        self.status.value = (
            f"trained {result.steps} steps in {result.seconds:.0f} s -> {result.path}"
        )
        if result.quality:
            self.show_quality(result.quality)
        if self.last_calibration:
            self.status.value = f"{self.last_calibration}. {self.status.value}"

    def generate(self, *_: Any) -> None:
        """Generate an image from the Labels layer into ``<labels> synthetic``."""
        if self._busy():
            return
        try:
            path = self.generator_path()
            layer, labels = self._labels_array()
        except ValueError as err:
            show_error(str(err))
            return
        self.status.value = f"generating from {layer.name}..."
        self.runner.start(
            generate_job, path, labels, str(self.device.value), bool(self.stochastic.value),
            None if self.stochastic.value else 0, float(self.texture_strength.value),
            description="Generating image",
            on_done=lambda image: self._put_image(layer, image),
        )  # fmt: skip

    def _put_image(self, labels_layer: Any, image: np.ndarray) -> None:
        name = f"{labels_layer.name} synthetic"
        rgb = image.ndim == labels_layer.data.ndim + 1
        if name in self.viewer.layers and self.viewer.layers[name].data.shape == image.shape:
            self.viewer.layers[name].data = image
        else:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            nd = labels_layer.data.ndim
            self.viewer.add_image(
                image, name=name, rgb=rgb, scale=labels_layer.scale[-nd:],
                translate=labels_layer.translate[-nd:],
            )  # fmt: skip
        self.status.value = f"generated {name}"

    def export(self, *_: Any) -> None:
        """Write N synthetic pairs from random transforms of the labels (or the masks folder)."""
        if self._busy():
            return
        try:
            path = self.generator_path()
            out = Path(str(self.export_dir.value))
            if str(self.export_dir.value) in ("", "."):
                raise ValueError("choose the folder to export the pairs to")
            masks = self._export_masks()
        except ValueError as err:
            show_error(str(err))
            return
        try:
            filter_path = self.filter_model_path()
        except (ValueError, OSError) as err:
            show_error(f"cannot filter with {self.filter_model.value}: {one_line(err)}")
            return
        what = "export and filter" if filter_path is not None else "export"
        self.status.value = f"{what} {self.n_pairs.value} pairs to {out}..."
        stops: list[Any] = []  # filled in the worker thread, read once it has finished
        self.runner.start(
            export_job, path, masks, out, int(self.n_pairs.value), str(self.device.value),
            bool(self.stochastic.value), bool(self.export_overwrite.value), 0,
            float(self.texture_strength.value), filter_path, float(self.min_dice.value),
            stops.append,
            description="Exporting pairs", on_done=self._on_exported,
            on_finish=lambda: self._on_export_stopped(stops),
        )  # fmt: skip

    def _on_export_stopped(self, stops: list[Any]) -> None:
        """After a cancelled or failed export: the status line says what it left on disk."""
        if stops:
            line = stops[-1].summary()
            failed = self.runner.error is not None and not self.runner.cancelled
            self.status.value = f"{self.status.value}; {line}" if failed else line
        elif self.runner.cancelled:
            self.status.value = "export cancelled"

    def _export_masks(self) -> list[np.ndarray]:
        if self.use_folders.value:
            return [p.mask for p in self.folder_source().read().pairs]
        _, labels = self._labels_array()
        if labels.ndim == 2:
            return [labels]
        planes = [np.asarray(p) for p in labels.reshape(-1, *labels.shape[-2:])]
        planes = [p for p in planes if p.any()]
        if not planes:
            raise ValueError("the Labels layer is empty: paint or load labels to transform")
        return planes

    def _on_exported(self, result: Any) -> None:
        export = result.export
        self.last_export, self.last_filter = export, result.filter
        wrote = f"wrote {export.count} pairs to {export.out_dir} (images/, masks/)"
        if result.filter is not None:
            wrote = (
                f"{result.filter.summary()}; {result.count} pairs in {export.out_dir} "
                f"(images/, masks/), scores in {result.scores_path}"
            )
        self.status.value = (
            f"{wrote}. Note: {SYNTHETIC_MIXING_NOTE}. To try them: napari-segen train ... "
            "--synthetic-images <folder>/images --synthetic-masks <folder>/masks "
            f"--synthetic-share {SUGGESTED_SYNTHETIC_SHARE:g}"
        )

    def score(self, *_: Any) -> None:
        """SSIM/PSNR/FID of the image generated from the Labels layer vs the Image layer."""
        if self._busy():
            return
        try:
            path = self.generator_path()
            source = self.layer_source()
        except ValueError as err:
            show_error(str(err))
            return
        self.status.value = "scoring the generator..."
        self.runner.start(
            quality_job, path, source, str(self.device.value),
            description="Scoring generator", on_done=self.show_quality,
        )  # fmt: skip

    def show_quality(self, quality: dict[str, Any]) -> None:
        """Show a quality dict in the readout."""
        self.last_quality = quality
        self.readout.set_result(quality)
        self.status.value = "quality: " + quality.get("message", "")[:200]
