"""The Synthesize widget in a real viewer: train a few steps, generate, export, score."""

from __future__ import annotations

from pathlib import Path

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
    assert "not mixed into training unless you ask" in w.status.value  # the measured verdict
    pairs = pairs_from_folders(tmp_path / "pairs" / "images", tmp_path / "pairs" / "masks")
    assert len(pairs) == 3 and all(set(np.unique(p.mask)) <= {0, 1} for p in pairs)

    w.last_quality = None
    w.score()
    _wait(qtbot, w)
    assert w.last_quality is not None
    assert w.last_quality["ssim"]["n"] == 1


def test_bundled_generator_draws_without_training(widget, qtbot):
    """Open the widget, press Generate: the bundled ISBI generator draws an EM-like image,
    membranes (class 1) dark on a lighter cell interior, without any training first."""
    from napari_segen.models import default_generator_path

    viewer, w = widget
    assert str(w.model_path.value) == str(default_generator_path())
    w.generate()
    _wait(qtbot, w)
    image = viewer.layers["blobs labels synthetic"].data.astype(float)
    labels = viewer.layers["blobs labels"].data
    assert image.shape == labels.shape
    assert image[labels == 1].mean() < image[labels == 0].mean() - 20


def test_cancel_and_errors(widget, qtbot, tmp_path, monkeypatch):
    import napari_segen.widgets.synth_widget as mod

    viewer, w = widget
    errors = []
    monkeypatch.setattr(mod, "show_error", errors.append)
    w.model_path.value = tmp_path / "not-trained-yet.safetensors"
    w.generate()  # no generator there
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


def test_defaults_eta_and_saved_path(widget, qtbot, tmp_path):
    from qtpy.QtWidgets import QApplication

    from napari_segen.widgets import synth_widget as mod

    viewer, w = widget
    # CPU-sized form defaults where the device is a CPU, the paper's on a GPU
    fresh = mod.SynthesizeWidget(viewer)
    kind = mod.device_kind(str(fresh.device.value))
    expected = mod.DEVICE_DEFAULTS[kind]
    assert (fresh.steps.value, fresh.crop_size.value, fresh.net_width.value) == (
        expected["steps"], expected["crop_size"], expected["width"],
    )  # fmt: skip
    assert mod.DEVICE_DEFAULTS["cpu"] == {"steps": 300, "crop_size": 128, "width": 32}
    fresh.device.value = "cpu"
    assert fresh.steps.value == 300 and fresh.net_width.value == 32
    fresh.steps.value = 50  # the user's own value survives a device change
    fresh._device_kind = "gpu"
    fresh.device.value = "auto"
    fresh.device.value = "cpu"
    assert fresh.steps.value == 50
    # width is in the folded advanced section, and reaches the config
    assert fresh.advanced_section.form.native.isAncestorOf(fresh.net_width.native)
    fresh.net_width.value = 8
    assert fresh.build_config().ngf == 8

    # the remaining time appears in the status after the first steps
    w.steps.value = 25
    w.train()
    seen: list[str] = []
    w.runner.worker.yielded.connect(lambda _: seen.append(w.status.value))
    _wait(qtbot, w)
    assert any("left" in s for s in seen if s.startswith("step 10")), seen[:15]
    assert mod.format_eta(30) == "~30 s left" and mod.format_eta(600) == "~10 min left"
    # the saved generator's full path, selectable, with a Copy button
    saved = str(tmp_path / "gen.safetensors")
    assert w.saved_path.value == saved and w.saved_path.tooltip == saved
    assert not w.copy_path_button.native.isHidden()  # the window is not shown: ask Qt
    w.copy_path()
    assert QApplication.clipboard().text() == saved


def test_recipe_options_in_the_advanced_fold(widget):
    from napari_segen.synthesis.trainer import PRESETS

    _, w = widget
    w.config_overrides = {"n_layers": 2}  # two scales of 32 px crops need a smaller PatchGAN
    form = w.advanced_section.form.native
    for field in (w.preset, w.upsample, w.noise, w.d_scales, w.fm_weight, w.l1_weight,
                  w.l1_sigma, w.l1_noise_free, w.ssim_weight, w.ms_weight):  # fmt: skip
        assert form.isAncestorOf(field.native)
    cfg = w.build_config()  # the augment recipe by default; width sets both networks
    assert cfg.ngf == cfg.ndf == w.net_width.value
    assert w.preset.value == "augment"
    assert {k: getattr(cfg, k) for k in PRESETS["augment"]} == PRESETS["augment"]
    w.preset.value = "texture"
    assert w.upsample.value == "resize" and w.noise.value and w.d_scales.value == 2
    w.fm_weight.value = 3.0  # a single option still changes after choosing a recipe
    cfg = w.build_config()
    assert {k: getattr(cfg, k) for k in PRESETS["texture"]} == {**PRESETS["texture"],
                                                                "fm_weight": 3.0}  # fmt: skip
    w.l1_noise_free.value, w.ssim_weight.value, w.ms_weight.value = True, 20.0, 0.5
    w.l1_sigma.value = 1.5
    cfg = w.build_config()
    assert (cfg.l1_noise_free, cfg.ssim_weight, cfg.ms_weight, cfg.l1_sigma) == (True, 20, 0.5, 1.5)
    w.preset.value = "pix2pix"  # every recipe option is the preset's again
    assert w.upsample.value == "transpose" and not w.noise.value and w.fm_weight.value == 0
    assert {k: getattr(w.build_config(), k) for k in PRESETS["pix2pix"]} == PRESETS["pix2pix"]
    w.l1_noise_free.value = True
    with pytest.raises(ValueError, match="needs a generator with noise"):
        w.build_config()  # the loss options that need noise maps, on a generator without them


def test_balanced_preset_sets_every_recipe_option(widget):
    from napari_segen.synthesis.trainer import PRESETS

    _, w = widget
    w.config_overrides = {"n_layers": 2}
    for recipe in PRESETS.values():
        assert set(recipe) == set(w._recipe_widgets())  # a preset sets every recipe option
    w.l1_sigma.value, w.fm_weight.value = 2.0, 7.0  # changed by hand, then a preset is chosen
    w.preset.value = "balanced"
    balanced = PRESETS["balanced"]
    assert {k: wd.value for k, wd in w._recipe_widgets().items()} == balanced
    assert (w.l1_noise_free.value, w.ssim_weight.value, w.ms_weight.value) == (True, 1000, 0.3)
    assert w.noise_init.value == 0.1 and w.build_config().noise_init == 0.1
    cfg = w.build_config()
    assert {k: getattr(cfg, k) for k in balanced} == balanced and cfg.calibrate_noise
    w.preset.value = "augment"  # the recipe synth_augmentation measured (docs/benchmarks.md)
    assert (w.l1_noise_free.value, w.l1_weight.value, w.fm_weight.value, w.ssim_weight.value,
            w.ms_weight.value) == (True, 100, 50, 0, 0.1)  # fmt: skip
    assert not w.calibrate_noise.value and not w.build_config().calibrate_noise  # as measured


def test_never_defaults_to_a_hidden_ground_truth(make_napari_viewer, blobs_image):
    from napari_segen.widgets.synth_widget import SynthesizeWidget

    image, mask = blobs_image
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    viewer.add_labels(mask.astype(np.uint8), name="em ground truth", visible=False)
    w = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(w, name="Synthesize")
    assert w.labels_layer.value.name == "em ground truth"  # the only one
    viewer.add_labels(mask.astype(np.uint8), name="em labels")  # Segment's output appears
    assert w.labels_layer.value.name == "em labels"


def test_advanced_settings_fold_sits_above_train(widget):
    _, w = widget
    layout = w._scroll_area.widget().layout()
    items = [layout.itemAt(i).widget() for i in range(layout.count())]
    section = items.index(w.advanced_section)
    train = next(i for i, x in enumerate(items) if x is not None and (
        x is w.train_button.native or x.isAncestorOf(w.train_button.native)))  # fmt: skip
    assert section == train - 1


def _score_rows(path) -> list[dict]:
    import csv

    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_export_with_the_quality_filter(widget, qtbot, tmp_path):
    """The bundled segmentation model scores the bundled generator's pairs in the export's
    task: Min Dice 0 keeps all, 1 (a perfect prediction) drops what is not perfect; the
    files left in images/ are the kept rows of scores.csv, and the status says so."""
    from napari_segen.models import default_generator_path
    from napari_segen.widgets._model_catalog import DEFAULT_CHOICE

    _, w = widget
    assert str(w.model_path.value) == str(default_generator_path())
    # folded under Export, so the dock does not grow
    for field in (w.filter_model, w.filter_file, w.min_dice):
        assert w.filter_section.form.native.isAncestorOf(field.native)
    assert w.filter_model.value.startswith("off") and w.min_dice.value == 0.7
    out = tmp_path / "filtered"
    w.n_pairs.value = 3
    w.export_dir.value = out
    w.filter_model.value = DEFAULT_CHOICE
    w.min_dice.value = 0.0
    events = []
    w.export()
    w.runner.worker.yielded.connect(events.append)
    _wait(qtbot, w)
    assert w.last_filter is not None and len(w.last_filter.kept) == 3
    assert "kept 3 of 3" in w.status.value and str(out / "scores.csv") in w.status.value
    assert max(e.total for e in events) == 6  # one task: 3 exported, then 3 scored
    assert len(_score_rows(out / "scores.csv")) == 3

    w.min_dice.value = 1.0
    w.export()  # pairs and scores.csv exist: refused without overwrite, nothing changed
    _wait(qtbot, w)
    assert w.runner.error is not None and "already exist" in w.status.value
    assert len(_score_rows(out / "scores.csv")) == 3
    w.export_overwrite.value = True
    w.export()
    _wait(qtbot, w)
    rows = _score_rows(out / "scores.csv")
    kept = sorted(r["name"] for r in rows if r["kept"] == "1")
    assert len(rows) == 3 and all(float(r["dice"]) < 1 for r in rows if r["kept"] == "0")
    assert sorted(p.name for p in (out / "images").iterdir()) == kept
    assert len(list((out / "masks").iterdir())) == len(kept)
    assert f"kept {len(kept)} of 3" in w.status.value
    assert kept == []  # no prediction of a synthetic image is perfect
    assert "dropped 3" in w.status.value


def test_filter_model_must_segment(widget, monkeypatch, tmp_path):
    import napari_segen.widgets.synth_widget as mod
    from napari_segen.models import default_generator_path

    _, w = widget
    errors = []
    monkeypatch.setattr(mod, "show_error", errors.append)
    w.export_dir.value = tmp_path / "pairs"
    w.filter_model.value = mod.FILTER_FILE
    assert not w.filter_file.native.isHidden()
    w.filter_file.value = default_generator_path()  # a generator, not a segmentation model
    w.export()
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "needs a segmentation model" in errors[0]
    assert not w.runner.running and not (tmp_path / "pairs").exists()
    w.filter_model.value = mod.FILTER_OFF
    assert w.filter_file.native.isHidden()


def test_texture_strength_reaches_generate_and_export(widget, qtbot, tmp_path):
    from PIL import Image

    from napari_segen.synthesis import generate_image, load_generator

    viewer, w = widget
    labels = viewer.layers["blobs labels"].data
    model = load_generator(w.generator_path())
    core_zero = generate_image(model, labels, device="cpu", seed=0, noise_strength=0.0)
    assert (w.texture_strength.value, w.texture_strength.min, w.texture_strength.max,
            w.texture_strength.step) == (1.0, 0.0, 4.0, 0.25)  # fmt: skip
    w.generate()
    _wait(qtbot, w)
    as_trained = viewer.layers["blobs labels synthetic"].data.copy()
    w.texture_strength.value = 0.0
    w.generate()
    _wait(qtbot, w)
    drawn = viewer.layers["blobs labels synthetic"].data
    np.testing.assert_array_equal(drawn, core_zero)
    assert not np.array_equal(as_trained, core_zero)
    # export draws with it too (from a randomly transformed mask: the core draws from that)
    w.n_pairs.value = 1
    w.export_dir.value = tmp_path / "pairs"
    w.export()
    _wait(qtbot, w)
    mask = np.asarray(Image.open(tmp_path / "pairs" / "masks" / "synth_0000.png"))
    image = np.asarray(Image.open(tmp_path / "pairs" / "images" / "synth_0000.png"))
    np.testing.assert_array_equal(
        image, generate_image(model, mask, device="cpu", seed=0, noise_strength=0.0)
    )


def test_texture_strength_follows_the_generator_file(widget, tmp_path):
    """Choosing a generator file sets Texture strength to its calibrated strength (1 when
    it has none); the user can still change it."""
    from napari_segen.models import default_generator_path, load_model
    from napari_segen.models.model_file import save_model

    _, w = widget
    bundled = load_model(default_generator_path())

    def saved(name: str, calibration: dict | None) -> Path:
        spec = bundled.spec
        spec.provenance.pop("noise_calibration", None)
        if calibration is not None:
            spec.provenance["noise_calibration"] = calibration
        return save_model(tmp_path / name, bundled.module, spec, overwrite=True)

    calibrated = saved("calibrated.safetensors", {"chosen": 0.4375})
    plain = saved("plain.safetensors", None)

    w.model_path.value = calibrated
    assert w.texture_strength.value == 0.4375
    w.texture_strength.value = 1.5  # an explicit value stays until another file is chosen
    assert w.texture_strength.value == 1.5
    w.model_path.value = plain
    assert w.texture_strength.value == 1.0
    w.model_path.value = calibrated
    assert w.texture_strength.value == 0.4375
    saved("plain.safetensors", {"chosen": "lots"})  # untrusted: ignored
    w.model_path.value = plain
    assert w.texture_strength.value == 1.0
    # a finished training adopts its generator: the strength and the calibration line follow
    from types import SimpleNamespace

    from napari_segen.synthesis.trainer import SynthEvent

    line = "texture strength x0.44: beats the flat painting on SSIM (...)"
    w._on_train_event(SynthEvent("calibration", 6, 6, message=line))
    assert w.status.value == line
    w.model_path.value = calibrated  # the checkpoints already named it: no change signal
    w.texture_strength.value = 1.0
    w._on_trained(SimpleNamespace(path=calibrated, steps=6, seconds=1.0, quality={}))
    assert w.texture_strength.value == 0.4375
    assert w.status.value.startswith(line) and "trained 6 steps" in w.status.value
