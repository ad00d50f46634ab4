"""The Image quality metrics widget and readout in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.gui


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """No Inception weights anywhere: the widget must fall back to the feature distance."""
    from napari_segen.metrics import features

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(features.WEIGHTS_ENV, raising=False)


@pytest.fixture
def stacks(isbi_dir):
    """Three 48x48 real crops of ISBI slice 20 and noisy versions, as (3, 48, 48) uint8 stacks."""
    from napari_segen.data.image_io import read_image

    image = read_image(isbi_dir / "test" / "images" / "20.png")
    real = np.stack([image[i * 48 : i * 48 + 48, :48] for i in range(3)])
    rng = np.random.default_rng(0)
    fake = np.clip(real + rng.normal(0, 15, real.shape), 0, 255).astype(np.uint8)
    return real, fake


def _wait(qtbot, w, timeout=120_000):
    qtbot.waitUntil(lambda: not w.runner.running and w.run_button.enabled, timeout=timeout)


def test_two_layers_paired_and_sets(make_napari_viewer, qtbot, stacks, no_weights):
    from napari_segen.metrics.image_quality import paired_quality
    from napari_segen.widgets.metrics_widget import MetricsWidget

    real, fake = stacks
    viewer = make_napari_viewer()
    viewer.add_image(real, name="real")
    viewer.add_image(fake, name="fake")
    w = MetricsWidget(viewer)
    assert "No Inception weights" in w.weights_status.value
    w.real.value, w.fake.value = "real", "fake"
    w.device.value = "cpu"
    w.run()
    assert w.runner.worker is not None
    with qtbot.waitSignal(w.runner.worker.finished, timeout=120_000):
        pass
    _wait(qtbot, w)
    result = w.last_result
    assert result is not None
    expected = paired_quality(list(real), list(fake))
    assert result["ssim"]["n"] == 3
    assert result["ssim"]["mean"] == pytest.approx(expected["ssim"]["mean"])
    assert result["psnr"]["mean"] == pytest.approx(expected["psnr"]["mean"])
    # no weights: no FID, the labelled feature distance instead
    assert result["fid"] is None and result["feature_distance"] is not None
    assert w.readout.fid.label == "Feature distance"
    assert "not FID" in w.readout.fid_help.value
    assert "weights-inception" in w.readout.notes.value
    assert w.readout.ssim.value.startswith(f"{expected['ssim']['mean']:.4f}")
    assert w.status.value == "done"


def test_layer_against_folder_paired_only(make_napari_viewer, qtbot, stacks, tmp_path):
    from napari_segen.widgets.metrics_widget import MetricsWidget

    real, fake = stacks
    folder = tmp_path / "fake"
    folder.mkdir()
    for i, plane in enumerate(fake):
        Image.fromarray(plane).save(folder / f"{i:02d}.png")
    viewer = make_napari_viewer()
    viewer.add_image(real, name="real")
    w = MetricsWidget(viewer)
    viewer.window.add_dock_widget(w, name="Image quality metrics")
    w.real.value = "real"
    assert w.fake_folder.native.isHidden()  # the window is not shown: ask Qt directly
    w.fake.value = "folder..."
    assert not w.fake_folder.native.isHidden()
    w.fake_folder.value = folder
    w.sets.value = False
    w.run()
    _wait(qtbot, w)
    assert w.last_result["ssim"]["n"] == 3
    assert "fid" not in w.last_result
    assert w.readout.fid.value == "-"


def test_mismatched_counts_are_refused(make_napari_viewer, stacks, monkeypatch):
    from napari_segen.widgets import metrics_widget

    errors = []
    monkeypatch.setattr(metrics_widget, "show_error", errors.append)
    real, fake = stacks
    viewer = make_napari_viewer()
    viewer.add_image(real, name="real")
    viewer.add_image(fake[:2], name="fake")
    w = metrics_widget.MetricsWidget(viewer)
    w.real.value, w.fake.value = "real", "fake"
    w.run()
    assert w.runner.worker is None
    assert errors and "counts must match" in errors[0]
    w.fid_weights.value = "/nonexistent/weights.pth"
    w.paired.value = False
    w.run()
    assert "FID weights file not found" in errors[-1]


def test_readout_shows_fid_and_kid():
    from napari_segen.widgets.metrics_widget import MetricsReadout

    r = MetricsReadout()
    r.set_result(
        {
            "ssim": {"mean": 0.8, "std": 0.01, "n": 4},
            "psnr": {"mean": float("inf"), "std": 0.0, "n": 4},
            "fid": 12.5,
            "kid_mean": 0.0123,
            "kid_std": 0.001,
            "feature": "Inception-v3 pool3",
            "n_real": 4,
            "n_fake": 4,
            "warnings": ["small set"],
            "message": "FID and KID from ...",
        }
    )
    assert r.fid.label == "FID" and r.fid.value == "12.500"
    assert r.kid.value.startswith("0.01230")
    assert r.psnr.value.startswith("inf")
    assert "small set" in r.notes.value
    assert "Wang" in r.ssim.tooltip
    r.clear()
    assert r.fid.value == "-" and r.result is None


def test_cancel_stops_the_worker(make_napari_viewer, qtbot, stacks, no_weights):
    from napari_segen.widgets.metrics_widget import MetricsWidget

    real, fake = stacks
    viewer = make_napari_viewer()
    viewer.add_image(real, name="real")
    viewer.add_image(fake, name="fake")
    w = MetricsWidget(viewer)
    w.real.value, w.fake.value = "real", "fake"
    w.device.value = "cpu"
    w.run()
    assert w.cancel_button.enabled and not w.run_button.enabled
    qtbot.waitUntil(lambda: w.runner.running, timeout=10_000)  # the thread has started
    w.runner.pbar.cancel()  # what Cancel on napari's activity bar does
    _wait(qtbot, w)
    assert w.runner.cancelled
    assert w.last_result is None
    assert w.status.value == "cancelled"


def test_picks_two_different_layers(make_napari_viewer, stacks):
    from napari_segen.widgets.metrics_widget import MetricsWidget

    real, fake = stacks
    viewer = make_napari_viewer()
    viewer.add_image(real, name="real")
    viewer.add_image(fake, name="fake")
    viewer.add_labels(np.zeros((3, 48, 48), np.uint8), name="truth")
    viewer.add_labels(np.zeros((3, 48, 48), np.uint8), name="predicted")
    w = MetricsWidget(viewer)
    assert w.real.value != w.fake.value and w.fake.value != "folder..."
    assert w.objects_pred.value != w.objects_true.value
    viewer.window.add_dock_widget(w, name="Image quality metrics")
    w.fake.value = "real"
    w.reset_choices()  # what napari does when layers change
    assert w.fake.value == "fake"
