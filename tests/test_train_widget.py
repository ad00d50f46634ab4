"""The Train widget in a real viewer: trains off the GUI thread, plots, cancels, re-segments."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_segen.data.image_io import read_image, read_mask

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer_with_corrections(make_napari_viewer, isbi_dir):
    """A viewer with a 128 x 128 ISBI crop and its corrected ``<image> labels`` layer."""
    viewer = make_napari_viewer()
    img = read_image(isbi_dir / "train" / "images" / "00.png")[:128, :128]
    mask = read_mask(isbi_dir / "train" / "masks" / "00.png", {0: 1, 255: 0})[:128, :128]
    viewer.add_image(img, name="em")
    viewer.add_labels(mask.astype(np.uint8), name="em labels")
    return viewer


@pytest.fixture
def widget(viewer_with_corrections, tiny_model_file, tmp_path):
    from napari_segen.widgets.train_widget import _FILE_CHOICE, TrainWidget

    w = TrainWidget(viewer_with_corrections)
    viewer_with_corrections.window.add_dock_widget(w, name="Train")
    w.start_model.value = _FILE_CHOICE
    w.start_file.value = tiny_model_file
    w.device.value = "cpu"
    w.val_split.value = 0.3
    w.out_path.value = tmp_path / "retrained.safetensors"
    w.config_overrides = dict(crop_size=64, batch_size=2, samples_per_epoch=8, patience=None)
    return w


class StallMeter:
    """Records the longest gap between ticks of a 10 ms QTimer on the GUI thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        return max(self.gaps) if self.gaps else float("inf")


def test_picks_the_matching_labels_layer(widget):
    assert widget.image_layer.value.name == "em"
    assert widget.labels_layer.value.name == "em labels"
    job = widget.build_job()
    assert job.mode == "dense" and job.labels.shape == (128, 128)
    job.labels[:] = 0  # a snapshot: the layer is not touched
    assert widget.labels_layer.value.data.any()


def test_train_reports_progress_stays_responsive_and_resegments(
    widget, qtbot, tmp_path, monkeypatch
):
    import threading

    import napari_segen.widgets.train_widget as tw
    from napari_segen.widgets._model_catalog import catalog

    widget.epochs.value = 3
    # Live preview after every step: made in the worker thread, shown in "em preview".
    widget.preview_every, widget.preview_interval_s = 1, 0.0
    made_in: list[threading.Thread] = []
    predict_preview = tw.predict_preview

    def recorded(*args, **kwargs):
        made_in.append(threading.current_thread())
        return predict_preview(*args, **kwargs)

    monkeypatch.setattr(tw, "predict_preview", recorded)
    meter = StallMeter()
    clicked = time.perf_counter()
    widget.start()
    # The click itself adds "em preview" (napari needs ~0.1 s to add a layer on an idle CPU,
    # 0.15-0.3 s on a busy one); from then on the GUI thread only swaps the layer's data.
    start_s = time.perf_counter() - clicked
    meter.start()
    assert not widget.start_button.enabled and widget.cancel_button.enabled
    preview = widget.viewer.layers["em preview"]  # made at start, updated while training
    shown: list[int] = []
    preview.events.data.connect(lambda e: shown.append(e.value is not None))
    # The activity dock's progress bar follows the steps: it listens to `value` events.
    pbar = widget.runner.pbar
    steps: list[int] = []  # bar values while it counts the 3 x 4 training steps
    pbar.events.value.connect(lambda e: pbar.total == 12 and steps.append(e.value))
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=60_000)
    assert pbar.n > 0 and steps == sorted(steps)
    qtbot.waitUntil(
        lambda: not widget.runner.running and widget.start_button.enabled, timeout=180_000
    )
    longest = meter.stop()
    assert len(shown) >= 2 and made_in and threading.main_thread() not in made_in
    assert preview.data.shape == (128, 128) and preview.data.max() <= 1
    print(
        f"\nlongest GUI-thread stall during training: {longest * 1000:.0f} ms "
        f"over {len(meter.gaps)} ticks, {len(shown)} previews; "
        f"the Train click {start_s * 1000:.0f} ms"
    )
    assert longest < 0.2 and start_s < 1.0

    assert steps[-1] == 12 and steps == sorted(steps)
    out = tmp_path / "retrained.safetensors"
    assert out.is_file() and widget.last_model_path == out
    assert len(widget.history["step"]) == 12 and len(widget.history["dice"]) == 3
    assert "done" in widget.status.value
    assert catalog.label(out) in catalog.choices()  # the Segment widget lists it
    assert widget.start_model.value == catalog.label(out)  # next round starts from it
    assert widget.out_path.value != out  # and will not overwrite it
    widget._redraw()
    assert len(widget.plot.steps) == 12 and len(widget.plot.dice) == 3
    assert not widget.plot.grab().isNull()  # the plot paints

    # One click: re-segment the image with the new model into "em labels".
    labels = widget.viewer.layers["em labels"]
    labels.data = np.full_like(labels.data, 7)  # no 2-class model predicts 7
    widget.resegment()
    qtbot.waitUntil(lambda: "re-segmented" in widget.status.value, timeout=60_000)
    assert labels.data.max() <= 1  # updated in place, no new layer
    assert len(widget.viewer.layers) == 2  # the preview made way for the segmentation


def test_cancel_keeps_best_model_so_far(widget, qtbot, tmp_path):
    widget.epochs.value = 200
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history["dice"]) >= 1, timeout=120_000)
    widget.cancel()
    qtbot.waitUntil(
        lambda: not widget.runner.running and widget.start_button.enabled, timeout=60_000
    )
    assert widget.runner.cancelled
    assert "cancelled" in widget.status.value
    assert len(widget.history["dice"]) < 200
    out = tmp_path / "retrained.safetensors"
    assert out.is_file() and widget.resegment_button.enabled  # the best model so far is usable
    assert out.with_name("retrained.last.safetensors").is_file()  # and the run can be resumed


def test_errors_are_shown_as_sentences(widget, monkeypatch):
    import napari_segen.widgets.train_widget as tw

    shown = []
    monkeypatch.setattr(tw, "show_error", shown.append)
    widget.out_path.value = widget.start_file.value  # an existing file, overwrite not ticked
    widget.start()
    assert len(shown) == 1 and "already exists" in shown[0] and "Overwrite" in shown[0]
    widget.viewer.layers.remove("em labels")
    widget.start()
    assert "choose the Labels layer" in shown[1]
    assert not widget.runner.running


def test_a_failed_run_is_reported_once_and_resegment_stays_off(widget, qtbot, monkeypatch):
    """A worker error: one napari notification, a one-line status, buttons as before."""
    from napari.utils.notifications import ErrorNotification, notification_manager

    import napari_segen.widgets.train_widget as tw

    own = []
    monkeypatch.setattr(tw, "show_error", own.append)
    before = len(notification_manager.records)
    labels = widget.viewer.layers["em labels"]
    labels.data[:8, :8] = 5  # the 2-class start model cannot learn class 5
    widget.start()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    qtbot.wait(50)  # let every queued signal arrive
    errors = [n for n in notification_manager.records[before:] if isinstance(n, ErrorNotification)]
    assert widget.runner.error is not None and own == []
    assert len(errors) == 1 and "class 5" in str(errors[0].message)
    assert widget.status.value.startswith("Training on em failed:")
    assert "class 5" in widget.status.value and "\n" not in widget.status.value
    assert widget.start_button.enabled and not widget.cancel_button.enabled
    assert not widget.resegment_button.enabled and widget.last_model_path is None
    assert widget.runner.pbar is None  # the activity bar is closed


def test_corrections_weigh_more_replay_and_fine_tune_defaults(widget, qtbot, tmp_path):
    """Labels segmented by a model (its prediction kept in the metadata): the pixels the user
    changed get the correction weight; folders can be replay; fine-tuning has a time limit."""
    from napari_segen.widgets._layers import remember_prediction
    from napari_segen.widgets.train_widget import _SCRATCH_CHOICE, CorrectionSource

    labels = widget.viewer.layers["em labels"]
    remember_prediction(labels, labels.data.copy())  # as the Segment widget does
    diag = (np.arange(10), np.arange(10))
    labels.data_setitem(diag, 1 - labels.data[diag])  # the user's corrections
    widget.changed_weight.value = 4.0
    job = widget.build_job()
    assert isinstance(job.layers, CorrectionSource) and job.masks_are == "classes"
    (pair,) = job.layers.read().pairs
    changed = pair.mask != labels.metadata["napari_segen_prediction"]
    assert changed.sum() == 10 and (pair.weight[changed] == 4).all()
    assert (pair.weight[~changed] == 1).all()
    widget.untouched.value = "ignore"
    (pair,) = widget.build_job().layers.read().pairs
    assert (pair.mask >= 0).sum() == 10
    # a region visited with "Next region to correct" was reviewed: its pixels train too
    image = widget.image_layer.value
    box = np.array([[20, 30], [20, 50], [40, 50], [40, 30]], float)
    widget.viewer.add_shapes([box], shape_type="rectangle", name=f"{image.name} regions to correct")
    (pair,) = widget.build_job().layers.read().pairs
    assert (pair.mask[20:40, 30:50] >= 0).all() and (pair.weight[20:40, 30:50] == 1).all()
    assert (pair.mask >= 0).sum() == 10 + 400
    widget.weight_corrections.value = False
    assert not isinstance(widget.build_job().layers, CorrectionSource)

    # fine-tuning: 1 minute and 128-pixel crops by default; from scratch: no time limit
    assert widget.max_minutes.value == 1.0
    widget.config_overrides.pop("crop_size")
    assert widget.build_job().config.crop_size == 128
    widget.start_model.value = _SCRATCH_CHOICE
    assert widget.max_minutes.value == 0.0 and widget.build_job().config.crop_size == 256
    widget.max_minutes.value = 3.0  # the user's choice stays
    widget.start_model.value = widget.start_model.choices[0]
    assert widget.max_minutes.value == 3.0

    (tmp_path / "old").mkdir()
    widget.use_folders.value = True
    widget.images_dir.value = widget.masks_dir.value = tmp_path / "old"
    assert widget.build_job().folders is not None and widget.build_job().folders.value_map is None
    # ISBI-style folders (membrane = 0) are read with the map the user types, not inverted
    assert not widget.mask_map.native.isHidden()  # shown with the folders
    widget.mask_map.value = "0:1,255:0"
    assert widget.build_job().folders.value_map == {0: 1, 255: 0}
    widget.mask_map.value = "0-1"
    with pytest.raises(ValueError, match="bad value map entry"):
        widget.build_job()
    widget.mask_map.value = ""
    widget.replay.value = True
    job = widget.build_job()
    assert job.folders is None and job.replay is not None and job.sources == [job.layers]


def test_fine_tune_on_corrections_reports_them(widget, qtbot):
    from napari_segen.widgets._layers import remember_prediction

    labels = widget.viewer.layers["em labels"]
    remember_prediction(labels, labels.data.copy())
    diag = (np.arange(40), np.arange(40))
    labels.data_setitem(diag, 1 - labels.data[diag])  # the user's corrections
    widget.epochs.value = 1
    widget.live_preview.value = False
    widget.start()
    qtbot.waitUntil(lambda: not widget.runner.running and widget.start_button.enabled, timeout=1e5)
    assert widget.runner.error is None and widget.last_model_path is not None
    assert "0.2% of the pixels differ from the model's segmentation" in widget.status.value
    assert "em preview" not in widget.viewer.layers


def test_live_preview_region_follows_the_view(widget):
    """A large image: the preview covers the part in view (at most 512 px a side)."""
    from napari_segen.widgets._layers import canvas_size, viewer_camera

    big = widget.viewer.add_image(np.zeros((1500, 1200), np.uint8), name="big", scale=(2, 2))
    widget._preview_source = big
    camera = viewer_camera(widget.viewer)
    camera.center = (1000.0, 800.0)  # world: data pixel (500, 400)
    camera.zoom = 4.0  # 4 screen px per world unit: a canvas of H x W px shows H/8 x W/8 px
    index, y0, y1, x0, x1 = widget._visible_box()
    ch, cw = canvas_size(widget.viewer)
    assert index == () and abs((y0 + y1) / 2 - 500) <= 1 and abs((x0 + x1) / 2 - 400) <= 1
    assert abs((y1 - y0) - min(ch / 8, 512)) <= 2 and abs((x1 - x0) - min(cw / 8, 512)) <= 2
    camera.zoom = 0.1  # zoomed out: the middle 512 x 512 of the view, inside the image
    index, y0, y1, x0, x1 = widget._visible_box()
    assert (y1 - y0, x1 - x0) == (512, 512) and min(y0, x0) >= 0


def test_class_names_give_the_model_new_classes(widget, qtbot):
    """'Class names' with a third class: the 2-class start model gets a new final layer."""
    from napari_segen.models import read_spec

    labels = widget.viewer.layers["em labels"]
    labels.data_setitem((np.arange(20, 40), np.arange(20, 40)), 2)  # a third class painted
    widget.class_names.value = "cell interior, membrane, mitochondrion"
    widget.epochs.value = 1
    widget.live_preview.value = False
    widget.start()
    qtbot.waitUntil(lambda: not widget.runner.running and widget.start_button.enabled, timeout=1e5)
    assert widget.runner.error is None, widget.status.value
    spec = read_spec(widget.last_model_path)
    assert spec.class_names == ["cell interior", "membrane", "mitochondrion"]
    assert spec.provenance["classes_changed_from"] == ["background", "foreground"]
    assert "new final layer" in widget.status.value or "final layer" in str(widget.status.tooltip)


def test_one_class_name_is_refused(widget):
    widget.class_names.value = "membrane"
    widget.start()
    assert not widget.runner.running
    assert "at least two class names" in widget.status.value


def test_less_used_settings_are_folded(widget):
    """Masks are, class names, validation share and learning rate sit in a collapsed
    "Advanced settings" section above Train; they stay attributes that set the job."""
    section = widget.advanced_section
    assert section.text() == "Advanced settings" and not section.isExpanded()
    for w in (widget.masks_are, widget.class_names, widget.val_split, widget.lr):
        assert section.isAncestorOf(w.native)
    widget.lr.value = 0.002
    assert widget.build_job().config.lr == pytest.approx(0.002)


def test_legend_shows_which_label_value_paints_which_class(widget):
    """A compact legend: colour square, label value and class name, from the start model,
    the typed class names, and shifted by one for sparse strokes (0 = not annotated)."""
    from napari_segen.widgets.train_widget import MODE_SPARSE

    legend = widget.legend
    assert "0&nbsp;background" in legend.value and "1&nbsp;foreground" in legend.value
    assert "Label value painted = class: 0 = background; 1 = foreground" in legend.tooltip
    color = widget.labels_layer.value.get_color(1)
    assert "#" + "".join(f"{round(float(c) * 255):02x}" for c in color[:3]) in legend.value
    widget.class_names.value = "cell interior, membrane, mitochondrion"
    assert "2&nbsp;mitochondrion" in legend.value and "background" not in legend.value
    widget.mode.value = MODE_SPARSE
    assert "3&nbsp;mitochondrion" in legend.value and "0 = not annotated" in legend.value
    assert legend.native.wordWrap()  # wraps rather than widening the dock


# --- synthetic pairs (as napari-segen train --synthetic-*) -------------------------------------
@pytest.fixture
def synthetic_folders(tmp_path):
    """``synth/images`` and ``synth/masks``: 3 pairs of 64 x 64 bright discs on a dark ground."""
    from PIL import Image

    from napari_segen.data.image_io import write_labels

    images, masks = tmp_path / "synth" / "images", tmp_path / "synth" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    for k in range(3):
        cy, cx = rng.integers(16, 48, 2)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < 100).astype(np.uint8)
        img = (40 + 150 * mask + rng.normal(0, 8, mask.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(images / f"s{k}.png")
        write_labels(masks / f"s{k}.png", mask)
    return images, masks


def _train_and_record_status(widget, qtbot) -> list[str]:
    """Run the widget's training to its end; the status after each event."""
    seen: list[str] = []
    on_event = widget._on_event

    def recorded(ev) -> None:
        on_event(ev)
        seen.append(str(widget.status.value))

    widget._on_event = recorded  # start() hands this to the worker's events
    widget.epochs.value = 1
    widget.live_preview.value = False
    widget.start()
    qtbot.waitUntil(lambda: not widget.runner.running and widget.start_button.enabled, timeout=1e5)
    assert widget.runner.error is None, widget.status.value
    return seen


@pytest.mark.usefixtures("one_thread")
def test_synthetic_share_mixes_them_in_and_records_them(widget, qtbot, synthetic_folders):
    from napari_segen.models import read_spec

    images, masks = synthetic_folders
    widget.synthetic_images.value = images
    widget.synthetic_masks.value = masks
    widget.synthetic_share.value = 0.3
    _train_and_record_status(widget, qtbot)
    prov = read_spec(widget.last_model_path).provenance
    # the same record as napari-segen train --synthetic-share 0.3 writes
    syn = prov["synthetic"]
    assert set(syn) == {"images", "masks", "mode", "count", "share", "crop_share"}
    assert syn["images"] == str(images) and syn["masks"] == str(masks)
    assert syn["mode"] == "mix" and syn["share"] == 0.3 and syn["count"] == 3
    assert prov["source"] == "napari Train widget" and "stage" not in prov
    assert "mixing 3 synthetic pair(s)" in widget.status.value


@pytest.mark.usefixtures("one_thread")
def test_synthetic_pretrain_runs_two_stages(widget, qtbot, tmp_path, synthetic_folders):
    import napari_segen.widgets.train_widget as tw
    from napari_segen.models import read_spec

    images, masks = synthetic_folders
    widget.synthetic_images.value = images
    widget.synthetic_masks.value = masks
    widget.synthetic_pretrain.value = True
    seen = _train_and_record_status(widget, qtbot)
    out = tmp_path / "retrained.safetensors"
    first = tmp_path / "retrained.pretrain.safetensors"
    assert first.is_file() and out.is_file() and widget.last_model_path == out
    # the status says which stage runs
    assert any(s.startswith("stage 1 of 2") for s in seen)
    assert any(s.startswith("stage 2 of 2") for s in seen)
    p1, p2 = read_spec(first).provenance, read_spec(out).provenance
    assert p1["stage"] == "synthetic pretrain (1 of 2)" and p1["synthetic"]["mode"] == "pretrain"
    assert p2["stage"] == "fine-tune (2 of 2)"
    assert p2["synthetic"]["pretrained_model"] == str(first)
    assert p2["synthetic"]["images"] == str(images) and "pretrain_best" in p2["synthetic"]
    assert str(first) in widget.status.value  # the final status names the stage-1 model
    # stage 2's steps follow stage 1's in the plot
    assert widget.history["step"] == sorted(widget.history["step"])
    # again into the same file, its stage-1 model still there: refused before anything starts
    out.unlink()
    widget.out_path.value = out
    shown: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tw, "show_error", shown.append)
        widget.start()
    assert len(shown) == 1 and "\n" not in shown[0] and not widget.runner.running
    assert "pre-training model) already exists" in shown[0] and "Overwrite" in shown[0]


def test_bad_synthetic_input_is_one_line_and_starts_nothing(
    widget, monkeypatch, tmp_path, synthetic_folders
):
    import napari_segen.widgets.train_widget as tw
    from napari_segen.training.synthetic_data import MAX_SYNTHETIC_SHARE

    shown: list[str] = []
    monkeypatch.setattr(tw, "show_error", shown.append)
    images, masks = synthetic_folders
    widget.synthetic_images.value = images  # the masks folder is missing
    widget.synthetic_share.value = 0.3
    widget.start()
    assert len(shown) == 1 and "\n" not in shown[0]
    assert "give the synthetic masks folder too" in shown[0] and "Advanced settings" in shown[0]
    assert not widget.runner.running and widget.runner.worker is None
    (tmp_path / "empty").mkdir()
    widget.synthetic_masks.value = tmp_path / "empty"  # a folder without images
    widget.start()
    assert "synthetic masks folder" in shown[1] and "no image files" in shown[1]
    widget.synthetic_masks.value = masks
    widget.synthetic_pretrain.value = True  # pre-training with a share: which one?
    widget.start()
    assert "set 'Synthetic share' to 0" in shown[2]
    assert widget.runner.worker is None and len(shown) == 3
    assert widget.synthetic_share.max == MAX_SYNTHETIC_SHARE  # more cannot be typed


def test_synthetic_settings_are_folded_and_off_by_default(widget, synthetic_folders):
    from napari_segen.data.conventions import SYNTHETIC_MIXING_NOTE
    from napari_segen.widgets.train_widget import SYNTHETIC_UNUSED

    section = widget.advanced_section
    assert not section.isExpanded()
    new = (widget.synthetic_images, widget.synthetic_masks, widget.synthetic_share,
           widget.synthetic_pretrain)  # fmt: skip
    for w in new:
        assert section.isAncestorOf(w.native)
    assert widget.synthetic_share.value == 0 and not widget.synthetic_pretrain.value
    assert SYNTHETIC_MIXING_NOTE in widget.synthetic_share.tooltip
    assert widget.build_job().synthetic is None
    # folders chosen, share 0, no pre-training: not used, and the status says so
    widget.synthetic_images.value, widget.synthetic_masks.value = synthetic_folders
    assert widget.status.value == SYNTHETIC_UNUSED
    job = widget.build_job()
    assert job.synthetic is None and SYNTHETIC_UNUSED in job.notes
    widget.synthetic_share.value = 0.2
    assert widget.status.value == "" and widget.build_job().synthetic.mode == "mix"


def test_pretrain_checks_both_outputs_before_stage_one(tiny_unet, tmp_path):
    """The core of two-stage training refuses an existing final model before training."""
    from napari_segen.data.datasets import LabeledImage
    from napari_segen.data.sources import PairsSource
    from napari_segen.training.assembly import assemble_segmentation
    from napari_segen.training.synthetic_data import SyntheticData
    from napari_segen.training.synthetic_pretrain import pretrain_then_fine_tune
    from napari_segen.utils.atomic import OverwriteError
    from napari_segen.utils.generators import drive

    rng = np.random.default_rng(0)
    pairs = [
        LabeledImage(
            rng.random((32, 32), np.float32), (rng.random((32, 32)) > 0.5).astype(np.int64)
        )
        for _ in range(3)
    ]
    run = drive(
        assemble_segmentation(
            [PairsSource(pairs)], start=tiny_unet, val_fraction=0.34,
            synthetic=SyntheticData(PairsSource(pairs, name="synth"), 0.0, "pretrain"),
        )
    )  # fmt: skip
    assert len(run.pretrain) == 3
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"")
    gen = pretrain_then_fine_tune(run, out)
    with pytest.raises(OverwriteError):
        next(gen)  # before the "stage 1 of 2" event
    assert not (tmp_path / "m.pretrain.safetensors").exists()
