"""Objects in the GUI: the Metrics widget's objects readout, its honest 16-bit range, and the
Train widget reading instance masks and saying when a run is not done (real viewer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error, variation_of_information

from napari_segen.cli import main
from test_objects_cli import disc_image, tiny_generator, touching_discs

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]


def _wait(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: not w.runner.running and w.run_button.enabled, timeout=timeout)


def test_metrics_widget_objects_readout(make_napari_viewer, qtbot):
    from napari_segen.metrics.instance import average_precision
    from napari_segen.widgets.metrics_widget import MetricsWidget

    truth = touching_discs().astype(np.int32)
    pred = truth.copy()
    pred[pred == 9] = 8  # two objects merged
    pred[pred == 1] = 0  # one missed
    viewer = make_napari_viewer()
    viewer.add_image(disc_image(truth), name="discs")
    viewer.add_labels(truth, name="true cells")
    viewer.add_labels(pred, name="found cells")
    w = MetricsWidget(viewer)
    viewer.window.add_dock_widget(w, name="Metrics")
    assert w.objects_readout._rows["ap@0.5"][0].value == ""  # nothing before a comparison
    w.objects_pred.value, w.objects_true.value = "found cells", "true cells"
    w.compare_objects()
    assert w.runner.running and not w.objects_button.enabled
    _wait(qtbot, w)
    got = w.last_objects
    ap = average_precision(truth, pred)
    err, _, _ = adapted_rand_error(truth, pred, ignore_labels=(0,))
    split, merge = variation_of_information(truth, pred, ignore_labels=(0,))
    assert got["ap@0.5"] == pytest.approx(ap[0.5]) and got["ap@0.75"] == pytest.approx(ap[0.75])
    assert got["objects_true"] == 9 and got["objects_predicted"] == 7
    assert got["rand_error"] == pytest.approx(err)
    assert got["voi"] == pytest.approx(split + merge)
    rows = w.objects_readout._rows
    assert rows["ap@0.5"][0].value.startswith(f"{ap[0.5]:.3f}  (TP 7, FP 0, FN 2)")
    assert rows["rand_error"][0].value == f"{err:.4f}"
    assert rows["voi"][0].value.startswith(f"{split + merge:.3f}")
    assert rows["objects"][0].value == "9 true, 7 predicted"
    assert "Rand error" in w.objects_readout.text and w.status.value == "done"

    # one layer against itself is refused in one line, nothing runs
    import napari_segen.widgets.metrics_widget as mw

    errors: list[str] = []
    mw_show_error, mw.show_error = mw.show_error, errors.append
    try:
        w.objects_pred.value = "true cells"
        w.compare_objects()
    finally:
        mw.show_error = mw_show_error
    assert errors == ["choose two different Labels layers (predicted and true)"]
    assert not w.runner.running


def test_sixteen_bit_readouts_agree_cli_widget_synthesis(
    make_napari_viewer, qtbot, tmp_path, capsys
):
    from napari_segen.data.datasets import LabeledImage
    from napari_segen.synthesis.generate import generate_image
    from napari_segen.synthesis.quality import evaluate_generator
    from napari_segen.widgets.metrics_widget import MetricsReadout, MetricsWidget

    rng = np.random.default_rng(1)
    real = np.clip(30 + 180 * (touching_discs(48) > 0) + rng.normal(0, 8, (48, 48)), 0, 235)
    real = real.astype(np.uint16)
    mask = (real > 120).astype(np.int64)
    model = tiny_generator({"mode": "range", "min": 0.0, "max": 235.0, "output_dtype": "uint16"})
    fake = generate_image(model, mask, device="cpu")
    assert fake.dtype == np.uint16

    for sub, im in (("real", real), ("fake", fake)):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "a.tif", im)
    assert main(["metrics", str(tmp_path / "real"), str(tmp_path / "fake"), "--no-fid",
                 "--json"]) == 0  # fmt: skip
    cli = json.loads(capsys.readouterr().out)
    assert cli["data_range_source"] == "observed"

    viewer = make_napari_viewer()
    viewer.add_image(real, name="real")
    viewer.add_image(fake, name="fake")
    w = MetricsWidget(viewer)
    w.real.value, w.fake.value = "real", "fake"
    w.sets.value = False
    w.run()
    _wait(qtbot, w)
    assert w.last_result["ssim"]["mean"] == pytest.approx(cli["ssim"]["mean"], abs=1e-12)
    assert w.last_result["psnr"]["mean"] == pytest.approx(cli["psnr"]["mean"], abs=1e-12)
    assert "use a small part of the uint16 range" in w.readout.notes.value
    assert w.readout.ssim.value.startswith(f"{cli['ssim']['mean']:.4f}")

    synth = evaluate_generator(model, [LabeledImage(real, mask)], fid=False, device="cpu")
    assert synth["ssim"]["mean"] == pytest.approx(cli["ssim"]["mean"], abs=1e-9)
    readout = MetricsReadout()  # the Synthesize widget's readout
    readout.set_result(synth)
    assert readout.ssim.value == w.readout.ssim.value
    assert "use a small part of the uint16 range" in readout.notes.value


def test_train_widget_reads_instance_labels_and_says_it_is_not_done(
    make_napari_viewer, qtbot, tmp_path
):
    from napari_segen.models import load_model
    from napari_segen.widgets.train_widget import _SCRATCH_CHOICE, TrainWidget

    inst = touching_discs()
    viewer = make_napari_viewer()
    viewer.add_image(disc_image(inst), name="cells")
    viewer.add_labels(inst.astype(np.int32), name="cells labels")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    assert w.masks_are.value == "auto"
    w.start_model.value = _SCRATCH_CHOICE
    w.scratch_arch = {"depth": 2, "base_channels": 8}
    w.device.value = "cpu"
    w.val_split.value = 0.4
    w.epochs.value = 2
    w.out_path.value = tmp_path / "cells.safetensors"
    w.config_overrides = dict(crop_size=32, batch_size=2, samples_per_epoch=4, patience=None)
    w.start()
    qtbot.waitUntil(
        lambda: not w.runner.running and w.start_button.enabled and w.last_result is not None,
        timeout=120_000,
    )
    status = w.status.value
    assert status.startswith("done in")
    assert "masks look like instance label images" in status
    assert "validation was still improving at the last epoch: train longer" in status
    assert load_model(tmp_path / "cells.safetensors").spec.class_names == [
        "background",
        "interior",
        "boundary",
    ]
    assert connected_components(inst > 0).max() == 1  # touching: only the classes keep them apart
