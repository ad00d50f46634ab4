"""All four dock widgets open as a user opens them, run, fail and talk: the window never breaks.

A 1920x1080 window with Segment, Train, Synthesize and Image quality metrics
docked keeps its size and a canvas at least 600 px wide, whatever the widgets
show (long status lines, results, errors); each failure is one notification;
progress bars move.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]

WINDOW = (1920, 1080)
DISPLAY_NAMES = ("Segment", "Train", "Synthesize", "Image quality metrics")
LONG = ("a status line far longer than any dock is wide, with a path /tmp/x/y/z " * 5)[:300]


def _sizes(viewer, qtbot) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window width, height), (canvas width, height) once Qt has laid everything out."""
    qtbot.wait(30)
    win = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    return (win.width(), win.height()), (canvas.width(), canvas.height())


def _assert_unbroken(viewer, qtbot, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
    win, canvas = _sizes(viewer, qtbot)
    assert abs(win[0] - WINDOW[0]) <= 4 and abs(win[1] - WINDOW[1]) <= 4, (where, win)
    assert canvas[0] >= 600, (where, canvas)
    return win, canvas


def _track_progress(runner) -> list[int]:
    values: list[int] = []
    runner.pbar.events.value.connect(lambda e: values.append(int(e.value)))
    return values


def _errors_since(before: int) -> list:
    from napari.utils.notifications import ErrorNotification, notification_manager

    return [n for n in notification_manager.records[before:] if isinstance(n, ErrorNotification)]


def test_four_widgets_docked_keep_the_window(
    make_napari_viewer, qtbot, tiny_model_file, blobs_image, tmp_path
):
    from napari.utils.notifications import notification_manager

    from napari_segen.widgets._layout import SCROLL_NAME
    from napari_segen.widgets.train_widget import _FILE_CHOICE

    image, mask = blobs_image
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(*WINDOW)
    _assert_unbroken(viewer, qtbot, "empty viewer")
    viewer.add_image(image[:64, :64], name="blobs")
    viewer.add_labels(mask[:64, :64].astype(np.uint8), name="blobs labels")

    widgets = {}
    for name in DISPLAY_NAMES:
        _, w = viewer.window.add_plugin_dock_widget("napari-segen", name)
        widgets[name] = w
        assert w.native.findChild(object, SCROLL_NAME) is not None, name
        _assert_unbroken(viewer, qtbot, f"docked {name}")
    seg, train, synth, metrics = (widgets[n] for n in DISPLAY_NAMES)

    # Segment: a small segmentation with a tiny model file
    seg.model.value = "model file..."
    seg.model_file.value = tiny_model_file
    seg.tile_size.value = 64
    seg.image.value = viewer.layers["blobs"]
    seg.run()
    seg_progress = _track_progress(seg.runner)
    qtbot.waitUntil(lambda: not seg.runner.running and seg.run_button.enabled, timeout=60_000)
    assert seg.runner.error is None and max(seg_progress, default=0) > 0
    _assert_unbroken(viewer, qtbot, "segmented")
    for name, w in widgets.items():  # every field fits: no sideways scrolling in any dock
        bar = w.native.findChild(object, SCROLL_NAME).horizontalScrollBar()
        assert bar.maximum() == 0, (name, bar.maximum())

    # Train: a failing run (class 5 is not one of the model's 2 classes), reported once
    train.start_model.value = _FILE_CHOICE
    train.start_file.value = tiny_model_file
    train.device.value = "cpu"
    train.out_path.value = tmp_path / "retrained.safetensors"
    train.config_overrides = dict(crop_size=32, batch_size=2, samples_per_epoch=4, patience=None)
    labels = viewer.layers["blobs labels"]
    labels.data[:8, :8] = 5
    before = len(notification_manager.records)
    train.start()
    qtbot.waitUntil(lambda: not train.runner.running, timeout=60_000)
    qtbot.wait(50)  # every queued signal arrives
    assert train.runner.error is not None
    assert len(_errors_since(before)) == 1
    _assert_unbroken(viewer, qtbot, "training failed")
    labels.data[:8, :8] = 0

    # Synthesize: a few steps of a tiny cGAN
    synth.image_layer.value = viewer.layers["blobs"]
    synth.labels_layer.value = labels
    synth.steps.value = 4
    synth.crop_size.value = 32
    synth.device.value = "cpu"
    synth.val_split.value = 0.0
    synth.out_path.value = tmp_path / "gen.safetensors"
    synth.config_overrides = dict(ngf=4, ndf=4, n_layers=2, sample_every=2, checkpoint_every=2)
    before = len(notification_manager.records)
    synth.train()
    synth_progress = _track_progress(synth.runner)
    qtbot.waitUntil(
        lambda: not synth.runner.running and synth.train_button.enabled, timeout=120_000
    )
    assert synth.runner.error is None and max(synth_progress, default=0) > 0
    assert synth.saved_path.value == str(tmp_path / "gen.safetensors")
    assert _errors_since(before) == []
    _assert_unbroken(viewer, qtbot, "synthesized")

    # Metrics: objects of two tiny Labels layers
    viewer.add_labels(mask[:64, :64].astype(np.uint8), name="true objects", visible=False)
    metrics.objects_pred.value, metrics.objects_true.value = "blobs labels", "true objects"
    metrics.compare_objects()
    metrics_progress = _track_progress(metrics.runner)
    qtbot.waitUntil(lambda: not metrics.runner.running, timeout=60_000)
    assert metrics.last_objects is not None and max(metrics_progress, default=0) > 0
    _assert_unbroken(viewer, qtbot, "metrics")

    # Long texts everywhere: wrapped or clipped, never widening the window
    for w in widgets.values():
        w.status.value = LONG
        assert w.status.tooltip == LONG
    metrics.weights_status.value = LONG
    synth.saved_path.value = "/" + "very-long-folder-name/" * 20 + "gen.safetensors"
    win, canvas = _assert_unbroken(viewer, qtbot, "long status lines")
    print(f"window {win[0]}x{win[1]}, canvas {canvas[0]}x{canvas[1]}")


def test_fit_label_keeps_full_text_in_tooltip(qtbot):
    from magicgui.widgets import Label

    from napari_segen.widgets._layout import fit_label

    label = fit_label(Label(value=""))
    label.value = LONG
    assert label.tooltip == LONG
    assert label.native.wordWrap() and label.native.minimumSizeHint().width() < 300


def test_wrapped_text_grows_its_row_and_long_choices_do_not_widen_the_form(qtbot):
    """A wrapped label that gets a longer text gets taller (not cut off), and a long choice in
    a drop-down list leaves the form as wide as it was (no sideways scrolling)."""
    from magicgui.widgets import ComboBox, Container, Label, PushButton

    from napari_segen.widgets._layout import SCROLL_NAME, fit_label, make_scrollable

    status = fit_label(Label(value="short"))
    choice = ComboBox(label="Model", choices=["a", "b"])
    form = Container(widgets=[PushButton(text="Run"), choice, status])
    make_scrollable(form)
    form.native.resize(380, 500)
    form.native.show()
    qtbot.addWidget(form.native)
    qtbot.wait(30)
    one_line = status.native.height()
    status.value = LONG
    qtbot.waitUntil(lambda: status.native.height() > 3 * one_line, timeout=2000)
    row = status.native.parentWidget()
    assert row.height() >= status.native.height()
    choice.choices = ["a", "b", "x" * 200]
    choice.value = "x" * 200
    qtbot.wait(30)
    bar = form.native.findChild(object, SCROLL_NAME).horizontalScrollBar()
    assert bar.maximum() == 0 and choice.native.toolTip() == "x" * 200


def test_train_never_defaults_to_a_hidden_ground_truth(make_napari_viewer, blobs_image):
    from napari_segen.widgets.train_widget import TrainWidget

    image, mask = blobs_image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    viewer.add_labels(mask.astype(np.uint8), name="em ground truth", visible=False)
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    viewer.add_labels(mask.astype(np.uint8), name="em labels")  # Segment's output appears
    assert w.labels_layer.value.name == "em labels"


def test_a_collapsed_fold_is_as_tall_as_its_title(qtbot):
    """No blank band under a folded section: collapsed it takes its title's height (plus a few
    pixels), expanded it shows its whole form."""
    from magicgui.widgets import FloatSpinBox, SpinBox

    from napari_segen.widgets._layout import collapsible

    section = collapsible("Advanced", [SpinBox(label="a"), FloatSpinBox(label="b")])
    qtbot.addWidget(section)
    section.show()
    qtbot.wait(30)
    title = section._toggle_btn.sizeHint().height()
    assert section.sizeHint().height() <= title + 6
    section.expand(animate=False)
    qtbot.wait(30)
    assert section.sizeHint().height() >= title + section.form.native.sizeHint().height()
