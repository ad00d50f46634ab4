"""The Segment widget in a real napari viewer: run, update undoably, cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segen.widgets.segment_widget import SegmentWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer, tiny_model_file):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.value = "model file..."
    w.model_file.value = tiny_model_file
    w.tile_size.value = 64
    return viewer, w


def _run_and_wait(qtbot, w, timeout=60_000):
    w.run()
    worker = w.runner.worker
    qtbot.waitUntil(lambda: not worker.is_running and w.run_button.enabled, timeout=timeout)


def test_segment_creates_named_labels_layer(qtbot, widget, blobs_image):
    viewer, w = widget
    img, _ = blobs_image
    layer = viewer.add_image(img, name="cells", scale=(0.5, 0.5))
    w.image.value = layer
    assert "0: background" in w.classes.value
    w.probabilities.value = True
    w.run()
    pbar, worker = w.runner.pbar, w.runner.worker
    tiles: list[int] = []  # what napari's activity dock is told
    pbar.events.value.connect(lambda e: tiles.append(e.value))
    qtbot.waitUntil(lambda: not worker.is_running and w.run_button.enabled, timeout=60_000)
    assert tiles and tiles[-1] == pbar.total > 0 and w.runner.pbar is None
    out = viewer.layers["cells labels"]
    assert out.data.shape == img.shape and out.data.dtype == np.uint8
    assert tuple(out.scale) == (0.5, 0.5)
    assert out.features["class"].tolist() == ["background", "foreground"]
    assert "cells P(foreground)" in viewer.layers
    assert w.status.value.startswith("done")


def test_second_run_updates_layer_and_can_be_undone(qtbot, widget, blobs_image):
    viewer, w = widget
    img, _ = blobs_image
    w.image.value = viewer.add_image(img, name="cells")
    _run_and_wait(qtbot, w)
    out = viewer.layers["cells labels"]
    first = out.data.copy()
    # the user paints corrections, then re-segments into the same layer
    out.data_setitem(np.nonzero(np.ones((5, 5), bool)), 1)
    corrected = out.data.copy()
    w.image.value.data = img[::-1].copy()
    _run_and_wait(qtbot, w)
    assert len([lyr for lyr in viewer.layers if lyr.name.startswith("cells labels")]) == 1
    assert viewer.layers["cells labels"] is out
    if not np.array_equal(out.data, corrected):
        out.undo()
        np.testing.assert_array_equal(out.data, corrected)
    assert first.shape == out.data.shape


def test_write_into_chosen_labels_layer(qtbot, widget, blobs_image):
    viewer, w = widget
    img, _ = blobs_image
    w.image.value = viewer.add_image(img, name="cells")
    mine = viewer.add_labels(np.zeros(img.shape, np.uint8), name="my annotations")
    w.output.value = "my annotations"
    _run_and_wait(qtbot, w)
    assert "cells labels" not in viewer.layers
    assert mine.data.any()


def test_cancel_leaves_layers_untouched(qtbot, widget):
    viewer, w = widget
    big = np.random.default_rng(0).integers(0, 255, (6, 512, 512), np.uint8)
    w.image.value = viewer.add_image(big, name="stack")
    w.run()
    worker = w.runner.worker
    qtbot.waitUntil(lambda: worker.is_running, timeout=10_000)
    w.cancel_button.changed.emit(True)  # as a click
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=5_000)
    assert "stack labels" not in viewer.layers
    assert "cancelled" in w.status.value


def test_no_image_and_bad_model_are_reported_not_raised(qtbot, widget, tmp_path):
    viewer, w = widget
    w.run()  # no image layer
    assert w.runner.worker is None
    w.image.value = viewer.add_image(np.zeros((32, 32), np.uint8))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    w.model_file.value = bad
    w.run()
    assert w.runner.worker is None and len(viewer.layers) == 1


def test_plugin_loaded_after_opengl_does_not_crash():
    """napari opens its OpenGL context before loading plugins; with Mesa's llvmpipe that used to
    segfault once torchvision pulled in Triton (two LLVMs in one process)."""
    import subprocess
    import sys

    code = (
        "import napari; v = napari.Viewer(show=False); "
        "import napari_segen.widgets.segment_widget; "
        "from napari_segen.models import build_model; build_model('fcn_resnet50'); "
        "v.close(); print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


def test_only_the_displayed_slice_of_a_stack(qtbot, widget):
    viewer, w = widget
    stack = np.random.default_rng(1).integers(0, 255, (4, 48, 40), np.uint8)
    w.image.value = viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 2)
    w.current_slice.value = True
    _run_and_wait(qtbot, w)
    out = viewer.layers["stack labels"]
    assert out.data.shape == stack.shape
    assert out.data[2].any() and not out.data[[0, 1, 3]].any()
    # a second slice goes into the same layer, leaving slice 2 as it was
    before = out.data[2].copy()
    viewer.dims.set_current_step(0, 0)
    _run_and_wait(qtbot, w)
    assert out.data[0].any()
    np.testing.assert_array_equal(out.data[2], before)


def test_closed_widget_ignores_later_events(qtbot, widget, tiny_model_file):
    from napari_segen.widgets._model_catalog import catalog

    viewer, w = widget
    w.native.close()
    w.native.deleteLater()
    qtbot.wait(50)
    catalog.add(tiny_model_file)  # the Train widget does this when a run ends
    viewer.add_image(np.zeros((8, 8)))


def test_double_click_starts_one_task(qtbot, widget, blobs_image):
    viewer, w = widget
    w.image.value = viewer.add_image(blobs_image[0], name="cells")
    w.run()
    first = w.runner.worker
    w.run()  # a second click before the thread has started
    assert w.runner.worker is first
    qtbot.waitUntil(lambda: w.run_button.enabled, timeout=60_000)


def test_a_worker_error_does_not_abort_a_script():
    """Driven from a script without napari.run(), a failing task must not end the process
    (superqt's default handler re-raised the error in a Qt slot, which aborts under PyQt6)."""
    import subprocess
    import sys

    code = """
import time
import napari
from magicgui.widgets import Label, PushButton
from qtpy.QtWidgets import QApplication
from napari_segen.widgets._worker import TaskRunner

def boom():
    yield
    raise ValueError("boom")

viewer = napari.Viewer(show=False)
status = Label()
runner = TaskRunner(PushButton(), PushButton(), status)
runner.start(boom, description="Boom")
app, t0 = QApplication.instance(), time.monotonic()
while runner.running and time.monotonic() - t0 < 60:
    app.processEvents()
    time.sleep(0.01)
app.processEvents()
print("alive:", status.value)
viewer.close()
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "alive: Boom failed: boom" in res.stdout
