"""The Image quality metrics dock widget, and a readout other widgets embed.

:class:`MetricsWidget` compares real and synthetic images - two image layers, a
layer and a folder, or two folders; a stacked layer is a set of images - with
SSIM and PSNR (paired) and FID / KID (sets), and the objects of two Labels
layers (predicted vs true: AP@0.5/0.75, adapted Rand error, VOI), off the GUI thread.
:class:`MetricsReadout` shows such a result with a short explanation of each number.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
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
)
from napari.utils.notifications import show_error, show_info

from ..data.files import ImageFiles, list_images, pair_files_by_name
from ..data.layout import spatial_layout
from ..metrics.features import INCEPTION_FILES, find_inception_weights
from ..metrics.fid import iter_set_distance
from ..metrics.image_quality import iter_paired_quality
from ..metrics.instance import iter_compare_objects
from ..metrics.report import (
    MISSING,
    format_quality_report,
    object_rows,
    quality_notes,
    quality_rows,
)
from ..utils.devices import available_devices
from ..utils.generators import Progress
from ._layout import fit_label, full_width, make_scrollable
from ._worker import TaskRunner

if TYPE_CHECKING:
    import napari

_FOLDER = "folder..."


class MetricsReadout(Container):
    """SSIM, PSNR, FID and KID (or the labelled feature distance) with what each one means.

    Call :meth:`set_result` with a dict from
    :func:`~napari_segen.metrics.image_quality.paired_quality`,
    :func:`~napari_segen.metrics.fid.set_distance`, or both merged. The words
    come from :mod:`napari_segen.metrics.report`, as for the CLI; each value's
    tooltip holds the full explanation. ``objects=True`` makes it an objects
    readout instead: AP@0.5, AP@0.75, object counts, Rand error and VOI
    (:func:`~napari_segen.metrics.instance.iter_compare_objects`), each shown once it has a value.
    """

    def __init__(self, objects: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result: dict[str, Any] | None = None
        self.objects = objects
        self.notes = Label(label="", value="")
        if objects:
            self._rows = {
                key: (Label(label=label), Label(label=""))
                for key, label in (("ap@0.5", "AP@0.5"), ("ap@0.75", "AP@0.75"),
                                   ("objects", "Objects"), ("rand_error", "Rand error"),
                                   ("voi", "VOI"))
            }  # fmt: skip
            for value, note in self._rows.values():
                self.extend([value, note])
                fit_label(note, selectable=False)
            self.append(fit_label(self.notes))
            full_width(*(note for _, note in self._rows.values()), self.notes)
            self.clear()
            return
        self.ssim, self.ssim_help = Label(label="SSIM"), Label(label="")
        self.psnr, self.psnr_help = Label(label="PSNR"), Label(label="")
        self.fid, self.fid_help = Label(label="FID"), Label(label="")
        self.kid, self.kid_help = Label(label="KID"), Label(label="")
        self._rows = {
            "ssim": (self.ssim, self.ssim_help),
            "psnr": (self.psnr, self.psnr_help),
            "fid": (self.fid, self.fid_help),
            "kid": (self.kid, self.kid_help),
        }
        self.extend([
            self.ssim, self.ssim_help, self.psnr, self.psnr_help,
            self.fid, self.fid_help, self.kid, self.kid_help, self.notes,
        ])  # fmt: skip
        for w in (self.ssim_help, self.psnr_help, self.fid_help, self.kid_help):
            fit_label(w, selectable=False)
        fit_label(self.notes)
        full_width(self.ssim_help, self.psnr_help, self.fid_help, self.kid_help, self.notes)
        self.clear()

    @property
    def text(self) -> str:
        """The shown result as plain text (what the CLI prints for it)."""
        return format_quality_report(self.result) if self.result else ""

    def clear(self) -> None:
        """Back to empty values."""
        self._show(None)

    def set_result(self, result: dict[str, Any] | None) -> None:
        """Show a metrics result (missing parts stay "-")."""
        self._show(result or None)

    def _show(self, result: dict[str, Any] | None) -> None:
        self.result = result
        if self.objects:
            shown = {row.key: row for row in object_rows(result)}
            for key, (value, note) in self._rows.items():
                row = shown.get(key)
                value.visible = note.visible = row is not None and row.value != MISSING
                if row is not None:
                    value.value, value.tooltip = row.value, row.help
                    note.value, note.tooltip = row.note, row.help
            self.notes.value = "\n".join(quality_notes(result))
            return
        for row in quality_rows(result):
            value, note = self._rows[row.key]
            value.label, value.value, value.tooltip = row.label, row.value, row.help
            note.value, note.tooltip = row.note, row.help
        self.notes.value = "\n".join(quality_notes(result))

    # names other widgets may look for
    show_result = set_result


class _LayerImages(Sequence):
    """The 2D (or RGB) planes of a layer's data, read one at a time."""

    def __init__(self, data: Any, rgb: bool) -> None:
        self.data = data
        self.lead, _ = spatial_layout(tuple(data.shape), rgb)
        self.n = int(np.prod(self.lead)) if self.lead else 1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not 0 <= i < self.n:
            raise IndexError(i)
        index = np.unravel_index(i, self.lead) if self.lead else ()
        return np.asarray(self.data[tuple(int(k) for k in index)])


def metrics_job(
    real: Sequence[Any],
    fake: Sequence[Any],
    *,
    paired: tuple[Sequence[Any], Sequence[Any]] | None,
    sets: bool,
    data_range: float | None,
    weights: str | None,
    device: str,
) -> Generator[Progress, None, dict[str, Any]]:
    """SSIM/PSNR over the ``paired`` sequences (if given), then FID/KID of the sets.

    Yields :class:`~napari_segen.utils.generators.Progress`; returns the merged result.
    """
    out: dict[str, Any] = {}
    if paired is not None:
        out.update((yield from iter_paired_quality(paired[0], paired[1], data_range)))
    if sets:
        dist = yield from iter_set_distance(
            real, fake, weights=weights, device=device, data_range=data_range
        )
        out.update(dist)
    return out


class MetricsWidget(Container):
    """Score synthetic images against real ones: SSIM, PSNR, FID, KID.

    Sources are image layers (a stacked layer is a set) or folders. Paired
    metrics pair layer planes by index and folder files by name (by order
    between a layer and a folder). Sub-widgets are attributes, so tests can set
    values and call :meth:`run` directly.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.real = ComboBox(label="Real images", choices=self._source_choices)
        self.real_folder = FileEdit(label="Real folder", mode="d", visible=False)
        self.fake = ComboBox(label="Synthetic images", choices=self._source_choices)
        self.fake_folder = FileEdit(label="Synthetic folder", mode="d", visible=False)
        self.paired = CheckBox(text="SSIM / PSNR (paired images)", value=True)
        self.sets = CheckBox(text="FID / KID (the two sets)", value=True)
        self.data_range = FloatSpinBox(
            label="Data range",
            value=0.0,
            min=0.0,
            max=1e12,
            step=1.0,
            tooltip="R for float images (e.g. 1 for [0, 1]); 0 = the dtype's range "
            "(255 for 8-bit, 65535 for 16-bit), or the range found in a pair that uses "
            "less than 1/8 of it (said under the figures); float images have none",
        )
        self.fid_weights = FileEdit(
            label="FID weights", mode="r", filter="*.pth *.safetensors", value=""
        )
        self.weights_status = Label(label="", value="")
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self.run_button = PushButton(text="Compute")
        self.cancel_button = PushButton(text="Cancel")
        self.status = Label(value="")
        self.readout = MetricsReadout()
        self.objects_header = Label(value="Objects: predicted vs true (two Labels layers)")
        self.objects_pred = ComboBox(label="Predicted objects", choices=self._labels_choices)
        self.objects_true = ComboBox(label="True objects", choices=self._labels_choices)
        self.objects_button = PushButton(text="Compare objects")
        self.objects_readout = MetricsReadout(objects=True)
        self.extend([
            self.real, self.real_folder, self.fake, self.fake_folder, self.paired, self.sets,
            self.data_range, self.fid_weights, self.weights_status, self.device,
            self.run_button, self.cancel_button, self.status, self.readout,
            self.objects_header, self.objects_pred, self.objects_true, self.objects_button,
            self.objects_readout,
        ])  # fmt: skip
        fit_label(self.weights_status)
        fit_label(self.status)
        fit_label(self.objects_header, selectable=False)
        full_width(self.weights_status, self.objects_header)  # long lines: the whole row
        self.runner = TaskRunner(
            [self.run_button, self.objects_button], self.cancel_button, self.status
        )
        self.last_result: dict[str, Any] | None = None
        self.last_objects: dict[str, Any] | None = None
        self.objects_button.changed.connect(self.compare_objects)
        self.real.changed.connect(self._on_source_changed)
        self.fake.changed.connect(self._on_source_changed)
        self.fid_weights.changed.connect(self._show_weights_status)
        self.run_button.changed.connect(self.run)
        self._pick_different()
        self._on_source_changed()
        self._show_weights_status()
        make_scrollable(self)

    # --- choices -------------------------------------------------------------
    def _source_choices(self, _=None) -> list[str]:
        from napari.layers import Image

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Image)] + [_FOLDER]

    def _labels_choices(self, _=None) -> list[str]:
        from napari.layers import Labels

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]

    def reset_choices(self, *args: Any) -> None:
        super().reset_choices(*args)
        self._pick_different()

    def _pick_different(self) -> None:
        """Never offer a layer compared with itself: the second choice differs from the first."""
        for first, second in ((self.real, self.fake), (self.objects_true, self.objects_pred)):
            if second.value is None or second.value != first.value:
                continue
            others = [c for c in second.choices if c != first.value and c != _FOLDER]
            if others:
                second.value = others[0]

    def _on_source_changed(self, *_: Any) -> None:
        self.real_folder.visible = self.real.value == _FOLDER
        self.fake_folder.visible = self.fake.value == _FOLDER

    def weights_path(self) -> str | None:
        """The FID weights file chosen, or None (then the cache is searched)."""
        value = str(self.fid_weights.value or "").strip()
        if value in ("", ".") or Path(value).is_dir():
            return None
        return value

    def _show_weights_status(self, *_: Any) -> None:
        try:
            path = find_inception_weights(self.weights_path())
        except FileNotFoundError as err:
            self.weights_status.value = str(err)
            return
        if path is None:
            self.weights_status.value = (
                f"No Inception weights ({INCEPTION_FILES[0]}): a U-Net feature distance "
                "is shown instead of FID/KID. See docs/metrics.md to install the file offline."
            )
        else:
            self.weights_status.value = f"FID weights: {path}"

    # --- sources ---------------------------------------------------------------
    def _source(self, which: str) -> tuple[Sequence[Any], list[Path] | None, str]:
        """(images, files or None, display name) of the real or synthetic source."""
        combo = self.real if which == "real" else self.fake
        folder = self.real_folder if which == "real" else self.fake_folder
        label = "real" if which == "real" else "synthetic"
        if combo.value is None:
            raise ValueError(f"choose the {label} images: an image layer or a folder")
        if combo.value == _FOLDER:
            path = Path(str(folder.value))
            if not path.is_dir() or str(folder.value) in ("", "."):
                raise ValueError(f"choose the folder of {label} images")
            files = list_images(path)
            if not files:
                raise ValueError(f"the folder {path} holds no image files")
            return ImageFiles(files), files, path.name
        layer = self.viewer.layers[combo.value]
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        return _LayerImages(data, bool(layer.rgb)), None, layer.name

    # --- running -------------------------------------------------------------
    def run(self, *_: Any) -> None:
        """Start computing (returns at once; the work runs in a thread)."""
        if not (self.paired.value or self.sets.value):
            show_error("Tick SSIM / PSNR, FID / KID, or both.")
            return
        try:
            real, real_files, real_name = self._source("real")
            fake, fake_files, fake_name = self._source("fake")
            paired = None
            if self.paired.value:
                if real_files is not None and fake_files is not None:
                    pairs = pair_files_by_name(real_files, fake_files)
                    if not pairs:
                        raise ValueError(
                            "no files with the same name in the two folders, so no pairs for "
                            "SSIM / PSNR; untick it to compare the sets only"
                        )
                    paired = (
                        ImageFiles(p[0] for p in pairs),
                        ImageFiles(p[1] for p in pairs),
                    )
                else:
                    if len(real) != len(fake):
                        raise ValueError(
                            f"{real_name} holds {len(real)} image(s) and {fake_name} "
                            f"{len(fake)}: SSIM / PSNR pair them in order, so the counts must "
                            "match (untick it to compare the sets only)"
                        )
                    paired = (real, fake)
            weights = self.weights_path() if self.sets.value else None
            if weights is not None:
                find_inception_weights(weights)
        except (ValueError, FileNotFoundError) as err:
            show_error(str(err))
            return
        self.readout.clear()
        self.last_result = None
        self.status.value = f"comparing {fake_name} with {real_name}..."
        self.runner.start(
            metrics_job,
            real,
            fake,
            paired=paired,
            sets=self.sets.value,
            data_range=self.data_range.value or None,
            weights=weights,
            device=str(self.device.value),
            description="Image quality metrics",
            on_done=self._show,
            on_finish=self._finished,
        )

    def _show(self, result: dict[str, Any]) -> None:
        self.last_result = result
        self.readout.set_result(result)
        self.status.value = "done"
        show_info("Image quality metrics computed")

    def _finished(self) -> None:
        if self.runner.cancelled:
            self.status.value = "cancelled"

    # --- objects -------------------------------------------------------------
    def compare_objects(self, *_: Any) -> None:
        """Score the predicted objects layer against the true one (in a thread)."""
        if self.runner.running:
            show_error("A comparison is already running; wait for it or cancel it.")
            return
        try:
            pred_name, true_name = self.objects_pred.value, self.objects_true.value
            if pred_name is None or true_name is None:
                raise ValueError(
                    "choose two Labels layers: the predicted objects and the true objects"
                )
            if pred_name == true_name:
                raise ValueError("choose two different Labels layers (predicted and true)")
            pred, true = (self._labels_data(n) for n in (pred_name, true_name))
            if pred.shape != true.shape:
                raise ValueError(
                    f"{pred_name} is {pred.shape} and {true_name} {true.shape}: objects are "
                    "compared pixel by pixel, so the layers must have the same shape"
                )
        except ValueError as err:
            show_error(str(err))
            return
        self.objects_readout.clear()
        self.last_objects = None
        self.status.value = f"comparing the objects of {pred_name} with {true_name}..."
        self.runner.start(
            iter_compare_objects,
            true,
            pred,
            description="Object metrics",
            on_done=self._show_objects,
            on_finish=self._finished,
        )

    def _labels_data(self, name: str) -> np.ndarray:
        layer = self.viewer.layers[name]
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        return np.asarray(data)

    def _show_objects(self, result: dict[str, Any]) -> None:
        self.last_objects = result
        self.objects_readout.set_result(result)
        self.status.value = "done"
        show_info("Object metrics computed")
