"""The Synthesize widget in a real viewer: train a few steps, generate, export, score."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def widget(make_napari_viewer, blobs_image, tmp_path):
    from napari_segen.widgets.synth_widget import SynthesizeWidget

    image, mask = blobs_image
    viewer = make_napari_viewer()
    viewer.add_image(image[:64, :64], name="blobs")
    viewer.add_labels(mask[:64, :64].astype(np.uint8), name="blobs labels")
    w = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(w, name="Synthesize")
    w.steps.value = 6
    w.crop_size.value = 32
    w.device.value = "cpu"
    w.val_split.value = 0.0
    w.out_path.value = tmp_path / "gen.safetensors"
    w.config_overrides = dict(ngf=4, ndf=4, n_layers=2, sample_every=3, checkpoint_every=3)
    return viewer, w


def _wait(qtbot, w, timeout=120_000):
    qtbot.waitUntil(lambda: not w.runner.running and w.train_button.enabled, timeout=timeout)


def test_train_generate_export_score(widget, qtbot, tmp_path):
    from napari_segen.data.datasets import pairs_from_folders

    viewer, w = widget
    assert w.image_layer.value.name == "blobs"
    assert w.labels_layer.value.name == "blobs labels"
    w.train()
    assert w.runner.worker is not None
    _wait(qtbot, w)
    assert w.last_result is not None and w.last_result.steps == 6
    assert (tmp_path / "gen.safetensors").is_file()
    assert str(w.model_path.value) == str(tmp_path / "gen.safetensors")
    assert "pix2pix samples" in viewer.layers
    assert viewer.layers["pix2pix samples"].rgb
    # the readout: scored on the training pair as none was held out
    assert w.last_quality is not None and "ssim" in w.last_quality
    assert "SSIM" in w.readout.text
    assert w.readout.result is w.last_quality
    assert w.readout.ssim.value != "-"

    w.generate()
    _wait(qtbot, w)
    assert "blobs labels synthetic" in viewer.layers
    layer = viewer.layers["blobs labels synthetic"]
    assert layer.data.shape == (64, 64) and layer.data.dtype == np.uint8
    w.generate()  # updates the layer instead of adding another
    _wait(qtbot, w)
    assert [ly.name for ly in viewer.layers].count("blobs labels synthetic") == 1

    w.n_pairs.value = 3
    w.export_dir.value = tmp_path / "pairs"
    w.export()
    _wait(qtbot, w)
    assert w.last_export is not None and w.last_export.count == 3
    pairs = pairs_from_folders(tmp_path / "pairs" / "images", tmp_path / "pairs" / "masks")
    assert len(pairs) == 3 and all(set(np.unique(p.mask)) <= {0, 1} for p in pairs)

    w.last_quality = None
    w.score()
    _wait(qtbot, w)
    assert w.last_quality is not None
    assert w.last_quality["ssim"]["n"] == 1


def test_cancel_and_errors(widget, qtbot, tmp_path, monkeypatch):
    import napari_segen.widgets.synth_widget as mod

    viewer, w = widget
    errors = []
    monkeypatch.setattr(mod, "show_error", errors.append)
    w.generate()  # no generator yet
    assert errors and "generator" in errors[-1]
    w.steps.value = 100_000
    w.train()
    qtbot.waitUntil(lambda: w.status.value.startswith("step"), timeout=60_000)
    w.cancel_button.changed.emit(True)
    _wait(qtbot, w)
    assert w.runner.cancelled and w.last_result is None
    # checkpoints written before the cancel stay usable
    assert (tmp_path / "gen.safetensors").is_file()
    w.train()  # the file now exists: refused without overwrite/resume
    assert "already exists" in errors[-1]
