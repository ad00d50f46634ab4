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
    from napari_segen.inference import cpu_runtime

    assert cpu_runtime._active == 0  # the cancelled task's CPU setting was undone, not left on


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


# --- uncertainty, regions to correct, objects ---------------------------------------------------
def test_uncertainty_layer_and_the_prediction_kept_for_training(qtbot, widget, blobs_image):
    from napari_segen.widgets._layers import PREDICTED_KEY, PREDICTION_KEY

    viewer, w = widget
    w.image.value = viewer.add_image(blobs_image[0], name="cells", scale=(0.5, 0.5))
    w.tta.value = True
    w.uncertainty.value = True
    _run_and_wait(qtbot, w)
    u = viewer.layers["cells uncertainty"]
    assert u.data.shape == blobs_image[0].shape and u.data.dtype == np.float32
    assert u.data.min() >= 0 and u.data.max() <= 1 and u.data.max() > 0
    assert u.colormap.name == "magma" and tuple(u.contrast_limits) == (0, 1)
    assert 0.5 <= u.opacity <= 0.7 and tuple(u.scale) == (0.5, 0.5)
    labels = viewer.layers["cells labels"]
    np.testing.assert_array_equal(labels.metadata[PREDICTION_KEY], labels.data)
    assert labels.metadata[PREDICTED_KEY].shape == () and labels.metadata[PREDICTED_KEY]
    labels.data_setitem((np.array([0]), np.array([0])), 1 - labels.data[0, 0])  # a correction
    assert (labels.metadata[PREDICTION_KEY] != labels.data).sum() == 1  # a copy, not the layer
    _run_and_wait(qtbot, w)  # a second run updates the layer, no copy piles up
    assert len([n for n in viewer.layers if n.name.endswith("uncertainty")]) == 1


def _tile_of(viewer, image_layer, size):
    """The (y, x) corner of the ``size`` tile under the camera centre (data coordinates)."""
    from napari_segen.widgets._layers import viewer_camera

    point = list(viewer.dims.point)
    for d, c in zip(viewer.dims.displayed, viewer_camera(viewer).center[-2:], strict=True):
        point[d] = c
    y, x = image_layer.world_to_data(point)[-2:]
    return int(y // size) * size, int(x // size) * size


def test_next_region_goes_to_the_most_uncertain_tiles_in_turn(qtbot, widget):
    from napari_segen.inference.uncertainty import rank_regions

    viewer, w = widget
    img = np.random.default_rng(2).integers(0, 255, (192, 256), np.uint8)
    layer = viewer.add_image(img, name="em", scale=(2.0, 2.0), translate=(10, -4))
    w.image.value = layer
    w.region_size = 64
    assert w.next_region() is None  # nothing segmented yet: it segments first
    assert "segmenting first" in w.status.value
    qtbot.waitUntil(lambda: "region 1 of 12" in w.status.value, timeout=60_000)
    ranked = rank_regions(w.last.uncertainty, 64)
    first = ranked[0]
    assert _tile_of(viewer, layer, 64) == (first.y, first.x)
    assert f"mean uncertainty {first.score:.2f}" in w.status.value
    shapes = viewer.layers["em regions to correct"]
    assert len(shapes.data) == 1 and shapes.shape_type == ["rectangle"]
    np.testing.assert_allclose(shapes.data[0], first.corners())
    assert tuple(shapes.scale) == (2.0, 2.0)
    assert (shapes.face_color[:, 3] == 0).all() and shapes.edge_color[0, 3] == 1
    # the tile fills most of the canvas
    from napari_segen.widgets._layers import canvas_size, viewer_camera

    assert 64 * 2.0 * viewer_camera(viewer).zoom >= 0.5 * min(canvas_size(viewer))
    assert viewer.layers.selection.active.name == "em labels"  # ready to paint

    second = w.next_region()
    assert (second.y, second.x) == (ranked[1].y, ranked[1].x) != (first.y, first.x)
    assert _tile_of(viewer, layer, 64) == (second.y, second.x)
    assert len(shapes.data) == 2 and "region 2 of 12" in w.status.value
    for _ in range(10):
        w.next_region()
    assert "region 12 of 12" in w.status.value
    w.next_region()  # all visited: back to the most uncertain one
    assert _tile_of(viewer, layer, 64) == (first.y, first.x)


def test_next_region_on_the_displayed_slice_of_a_stack(qtbot, widget):
    viewer, w = widget
    stack = np.random.default_rng(3).integers(0, 255, (3, 96, 96), np.uint8)
    layer = viewer.add_image(stack, name="stack")
    w.image.value = layer
    w.region_size = 48
    viewer.dims.set_current_step(0, 1)
    w.next_region()  # segments slice 1 only, then shows its most uncertain region
    qtbot.waitUntil(lambda: "region 1 of 4" in w.status.value, timeout=60_000)
    labels = viewer.layers["stack labels"]
    assert labels.data[1].any() and not labels.data[[0, 2]].any()
    rect = viewer.layers["stack regions to correct"].data[0]
    assert rect.shape == (4, 3) and (rect[:, 0] == 1).all()  # drawn on slice 1 only
    viewer.dims.set_current_step(0, 2)  # another slice: segmented first as well
    w.next_region()
    qtbot.waitUntil(lambda: "region 1 of 4" in w.status.value, timeout=60_000)
    assert labels.data[2].any()


def test_objects_layer_has_features_and_a_count(qtbot, widget, blobs_image):
    viewer, w = widget
    w.image.value = viewer.add_image(blobs_image[0], name="cells")
    w.objects.value = True
    _run_and_wait(qtbot, w)
    objects = viewer.layers["cells objects"]
    n = int(objects.data.max())
    assert objects.data.shape == blobs_image[0].shape and n > 0
    f = objects.features
    for column in ("label", "area", "centroid_y", "centroid_x"):
        assert column in f.columns and len(f[column]) == n
    assert f["area"].sum() == (objects.data > 0).sum()
    assert f"{n} objects" in w.status.value
    assert not any(lyr.name.startswith("cells P(") for lyr in viewer.layers)  # not asked for


def test_status_says_a_model_is_loading(qtbot, widget, blobs_image, monkeypatch):
    import napari_segen.widgets.segment_widget as sw

    viewer, w = widget
    w.image.value = viewer.add_image(blobs_image[0], name="cells")
    seen: list[str] = []
    real = sw.load_model

    def load(path):
        seen.append(w.status.value)
        return real(path)

    monkeypatch.setattr(sw, "load_model", load)
    _run_and_wait(qtbot, w)
    assert seen == ["loading model tiny.safetensors..."]
    assert w.status.value.startswith("done")


def _notes(before: int, text: str) -> list[str]:
    """Messages of the notifications since ``before`` that contain ``text``."""
    from napari.utils.notifications import notification_manager

    return [n.message for n in notification_manager.records[before:] if text in n.message]


def _image_folder(folder, image) -> list:
    from PIL import Image

    folder.mkdir()
    paths = [folder / "a.png", folder / "b.png"]
    Image.fromarray(image).save(paths[0])
    Image.fromarray(np.ascontiguousarray(image[::-1])).save(paths[1])
    return paths


def test_segment_folder_writes_label_files_like_predict(
    qtbot, widget, blobs_image, tiny_model_file, tmp_path
):
    from napari_segen.data.image_io import read_image
    from napari_segen.inference import predict
    from napari_segen.models import load_model

    viewer, w = widget
    w.device.value = "cpu"
    img, _ = blobs_image
    inputs = _image_folder(tmp_path / "images", img)
    w.folder_in.value = tmp_path / "images"
    w.folder_out.value = tmp_path / "out"
    w.segment_folder()
    pbar, worker = w.runner.pbar, w.runner.worker
    steps: list[int] = []
    pbar.events.value.connect(lambda e: steps.append(e.value))
    qtbot.waitUntil(lambda: not worker.is_running and w.folder_button.enabled, timeout=60_000)
    assert steps[-1] == pbar.total == 2  # one step per image
    model = load_model(tiny_model_file)
    for src in inputs:
        out = tmp_path / "out" / f"{src.stem}_labels.png"
        expected = predict(model, read_image(src), tile_size=64, device="cpu").labels
        np.testing.assert_array_equal(read_image(out), expected)
    assert w.status.value == f"wrote 2 of 2 label image(s) to {tmp_path / 'out'}"
    assert len(viewer.layers) == 0  # files only


def test_segment_folder_writes_what_the_also_add_options_ask_for(
    qtbot, widget, blobs_image, tmp_path
):
    import csv

    import tifffile

    viewer, w = widget
    w.device.value = "cpu"
    img, _ = blobs_image
    _image_folder(tmp_path / "images", img)
    w.folder_in.value, w.folder_out.value = tmp_path / "images", tmp_path / "out"
    w.uncertainty.value = w.objects.value = True
    w.segment_folder()
    worker = w.runner.worker
    qtbot.waitUntil(lambda: not worker.is_running and w.folder_button.enabled, timeout=60_000)
    total = 0
    for stem in ("a", "b"):
        objects = tifffile.imread(tmp_path / "out" / f"{stem}_objects.tif")
        with open(tmp_path / "out" / f"{stem}_objects.csv") as f:
            rows = list(csv.DictReader(f))
        assert {int(r["label"]) for r in rows} == set(np.unique(objects)) - {0}
        total += len(rows)
        unsure = tifffile.imread(tmp_path / "out" / f"{stem}_uncertainty.tif")
        assert unsure.shape == img.shape[:2] and 0 <= unsure.min() <= unsure.max() <= 1
        assert not (tmp_path / "out" / f"{stem}_probs.tif").exists()  # not ticked
    assert total > 0 and w.status.value.endswith(f"({total} objects in all)")


def test_segment_folder_never_overwrites_and_says_so_once(qtbot, widget, blobs_image, tmp_path):
    from napari.utils.notifications import notification_manager

    _, w = widget
    _image_folder(tmp_path / "images", blobs_image[0])
    (tmp_path / "out").mkdir()
    kept = tmp_path / "out" / "b_labels.png"
    kept.write_bytes(b"mine")
    w.folder_in.value = tmp_path / "images"
    w.folder_out.value = tmp_path / "out"
    before = len(notification_manager.records)
    w.segment_folder()
    assert w.runner.worker is None  # nothing started, nothing written
    assert kept.read_bytes() == b"mine" and not (tmp_path / "out" / "a_labels.png").exists()
    (note,) = _notes(before, "already exists")
    assert str(kept) in note and "move the existing files away" in note
    assert "\n" not in note and "--overwrite" not in note
    assert "already exists" in w.status.value


def test_segment_folder_skips_unreadable_files_one_line_each(qtbot, widget, blobs_image, tmp_path):
    from napari.utils.notifications import notification_manager

    _, w = widget
    _image_folder(tmp_path / "images", blobs_image[0])
    (tmp_path / "images" / "c.png").write_bytes(b"not an image")
    (tmp_path / "images" / "d.tif").write_bytes(b"nor this")
    w.folder_in.value = tmp_path / "images"
    w.folder_out.value = tmp_path / "out"
    before = len(notification_manager.records)
    w.segment_folder()
    worker = w.runner.worker
    qtbot.waitUntil(lambda: not worker.is_running and w.folder_button.enabled, timeout=60_000)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_labels.png", "b_labels.png"]
    assert w.status.value.startswith("wrote 2 of 4 label image(s)")
    (note,) = _notes(before, "skipped")
    lines = note.splitlines()
    assert len(lines) == 3 and lines[1].startswith("skipped c.png: ")
    assert lines[2].startswith("skipped d.tif: ") and "Traceback" not in note


def test_segment_folder_needs_both_folders(widget, tmp_path):
    from napari.utils.notifications import notification_manager

    _, w = widget
    before = len(notification_manager.records)
    w.segment_folder()
    assert w.runner.worker is None and _notes(before, "Folder > Images")


# --- only the visible region ---------------------------------------------------


@pytest.fixture(scope="module")
def big_image():
    """A smooth 1024x1024 uint8 image (the tiny untrained model labels about half of it)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    noisy = rng.normal(100, 40, (1024, 1024)).clip(0, 255).astype(np.uint8)
    return ndi.gaussian_filter(noisy, 3)


@pytest.fixture(scope="module")
def big_expected(big_image, tiny_unet, one_thread):
    """``predict`` of the whole image, as the widget's settings (tile 64) give it."""
    from napari_segen.inference import predict

    return predict(tiny_unet, big_image, tile_size=64).labels


def _look_at(viewer, y0, y1, x0, x1):
    """Centre the camera on the box and zoom so that it fills the canvas's narrower side."""
    from napari_segen.widgets._layers import canvas_size, viewer_camera

    camera = viewer_camera(viewer)
    camera.center = ((y0 + y1) / 2, (x0 + x1) / 2)
    ch, cw = canvas_size(viewer)
    camera.zoom = min(ch / (y1 - y0), cw / (x1 - x0))


def _region_box(viewer, layer, want):
    from napari_segen.widgets._layers import visible_box

    index, *box = visible_box(viewer, layer)
    y0, y1, x0, x1 = box
    assert index == ()
    # the view holds the asked-for region (clipped to the image), and not the whole image
    assert y0 <= max(want[0], 0) and y1 >= min(want[1], 1024)
    assert x0 <= max(want[2], 0) and x1 >= min(want[3], 1024)
    assert 0 <= y0 < y1 <= 1024 and 0 <= x0 < x1 <= 1024 and (y1 - y0) * (x1 - x0) < 1024**2 / 4
    return tuple(box)


def test_only_the_visible_region_is_segmented_and_regions_add_up(
    qtbot, widget, big_image, big_expected
):
    from napari_segen.widgets._layers import (
        PREDICTED_KEY,
        PREDICTED_REGION_KEY,
        PREDICTION_KEY,
    )

    viewer, w = widget
    layer = viewer.add_image(big_image, name="big")
    w.image.value = layer
    w.visible_region.value = True
    _look_at(viewer, 400, 600, 300, 600)  # a 200x300 region
    first = _region_box(viewer, layer, (400, 600, 300, 600))
    _run_and_wait(qtbot, w, timeout=120_000)
    out = viewer.layers["big labels"]
    assert out.data.shape == big_image.shape
    written = np.zeros(big_image.shape, bool)
    y0, y1, x0, x1 = first
    written[y0:y1, x0:x1] = True
    # inside the box: the whole-image labels, right up to the box border (margin 0)
    np.testing.assert_array_equal(out.data[written], big_expected[written])
    assert not out.data[~written].any()  # the rest untouched
    assert big_expected[written].any() and not big_expected[written].all()
    assert w.status.value.startswith("done: big labels [")
    # the prediction is kept for the box only; the image is not marked as segmented whole
    np.testing.assert_array_equal(out.metadata[PREDICTION_KEY], out.data)
    np.testing.assert_array_equal(out.metadata[PREDICTED_REGION_KEY], written)
    assert not out.metadata[PREDICTED_KEY]

    # pan to a corner (the view runs past the image: the box is clipped) and add a region
    _look_at(viewer, 900, 1100, 850, 1150)
    second = _region_box(viewer, layer, (900, 1100, 850, 1150))
    assert second[1] == 1024 and second[3] == 1024
    _run_and_wait(qtbot, w, timeout=120_000)
    assert viewer.layers["big labels"] is out
    y0, y1, x0, x1 = second
    written[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(out.data[written], big_expected[written])  # both regions
    assert not out.data[~written].any()
    np.testing.assert_array_equal(out.metadata[PREDICTED_REGION_KEY], written)


def test_visible_region_leaves_the_rest_of_a_chosen_layer_as_it_was(
    qtbot, widget, big_image, big_expected
):
    viewer, w = widget
    layer = viewer.add_image(big_image, name="big")
    mine = viewer.add_labels(np.full(big_image.shape, 3, np.uint8), name="mine")
    w.image.value = layer
    w.output.value = "mine"
    w.visible_region.value = True
    _look_at(viewer, 100, 300, 500, 800)
    y0, y1, x0, x1 = _region_box(viewer, layer, (100, 300, 500, 800))
    _run_and_wait(qtbot, w, timeout=120_000)
    inside = np.zeros(big_image.shape, bool)
    inside[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(mine.data[inside], big_expected[inside])
    assert (mine.data[~inside] == 3).all()
    mine.undo()  # one undoable step restores the user's labels
    assert (mine.data == 3).all()


def test_visible_region_of_a_multiscale_image_reads_level_0(qtbot, widget, big_image):
    viewer, w = widget
    layer = viewer.add_image([big_image, big_image[::4, ::4]], name="pyramid", multiscale=True)
    w.image.value = layer
    w.visible_region.value = True
    _look_at(viewer, 400, 600, 300, 600)
    y0, y1, x0, x1 = _region_box(viewer, layer, (400, 600, 300, 600))
    _run_and_wait(qtbot, w, timeout=120_000)
    out = viewer.layers["pyramid labels"]
    assert out.data.shape == big_image.shape  # level 0's
    inside = np.zeros(big_image.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert out.data[inside].any() and not out.data[~inside].any()


def test_visible_region_of_a_stack_is_in_the_displayed_slice(
    qtbot, widget, big_image, tiny_unet, one_thread
):
    from napari_segen.inference import predict
    from napari_segen.widgets._layers import visible_box

    viewer, w = widget
    stack = np.stack([big_image[:512, :512], big_image[512:, 512:], big_image[:512, 512:]])
    layer = viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 2)
    w.image.value = layer
    w.visible_region.value = True
    _look_at(viewer, 100, 250, 200, 400)
    index, y0, y1, x0, x1 = visible_box(viewer, layer)
    assert index == (2,) and (y1 - y0) * (x1 - x0) < 512**2 / 2
    _run_and_wait(qtbot, w, timeout=120_000)
    out = viewer.layers["stack labels"]
    expected = predict(tiny_unet, stack[2], tile_size=64).labels
    np.testing.assert_array_equal(out.data[2, y0:y1, x0:x1], expected[y0:y1, x0:x1])
    out.data[2, y0:y1, x0:x1] = 0
    assert not out.data.any()  # nothing else was written


def test_cancel_after_the_task_returned_keeps_its_result(qtbot, make_napari_viewer):
    """A Cancel that lands between the task's return and its end is moot: the result is
    delivered, not dropped as cancelled."""
    from magicgui.widgets import Label, PushButton

    from napari_segen.widgets._worker import TaskRunner

    make_napari_viewer()
    runner, done = TaskRunner(PushButton(), PushButton(), Label()), []

    def quick():
        yield
        return 42

    worker = runner.start(quick, description="Quick", on_done=done.append)
    worker.returned.connect(lambda _: runner.cancel())  # after the runner's own handler
    qtbot.waitUntil(lambda: not runner.running, timeout=30_000)
    assert done == [42] and not runner.cancelled
