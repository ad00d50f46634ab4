"""Wrong synthetic folders are refused in one line before a run starts (CLI and Train widget),
and what only the run can tell is still one line naming the folder and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import napari_segen.training.assembly as assembly
import napari_segen.training.synthetic_data as synthetic_data
from napari_segen.cli import main
from napari_segen.data.image_io import write_labels
from napari_segen.training.synthetic_data import (
    SYNTHETIC_SAMPLES,
    KnownClasses,
    check_synthetic,
    choose_synthetic,
    classes_before_reading,
    real_colour,
)

SIZE = 40


class RunStarted(Exception):
    """Raised instead of assembling the run: the pre-check let the folders through."""


def _write_pairs(root: Path, prefix: str, n: int, *, value: int = 1, rgb: bool = False) -> None:
    """``root/images`` and ``root/masks``: ``n`` pairs of a bright disc (class ``value``)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(len(prefix) + n)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for k in range(n):
        cy, cx = rng.integers(10, 30, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        img = (40 + 150 * disc + rng.normal(0, 8, disc.shape)).clip(0, 255).astype(np.uint8)
        if rgb:
            img = np.stack([img, img // 2, img], axis=-1)
        Image.fromarray(img).save(root / "images" / f"{prefix}{k}.png")
        write_labels(root / "masks" / f"{prefix}{k}.png", (disc * value).astype(np.uint8))


@pytest.fixture
def data(tmp_path) -> Path:
    """``real/`` (4 grey pairs) and ``synth/`` (3 grey pairs, classes 0-1)."""
    _write_pairs(tmp_path / "real", "real", 4)
    _write_pairs(tmp_path / "synth", "synth", 3)
    return tmp_path


@pytest.fixture
def no_run(monkeypatch):
    """Fail loudly if the run is assembled: a refusal must come before it."""

    def refuse(*_, **__):
        raise RunStarted

    monkeypatch.setattr(assembly, "assemble_segmentation", refuse)


def _train(data: Path, out: Path, *extra: str, synth: Path | None = None) -> list[str]:
    synth = synth or data / "synth"
    return [
        "train", "--images", str(data / "real" / "images"),
        "--masks", str(data / "real" / "masks"),
        "--synthetic-images", str(synth / "images"), "--synthetic-masks", str(synth / "masks"),
        "--synthetic-share", "0.3",
        "--epochs", "1", "--crop-size", "32", "--depth", "2", "--base-channels", "4",
        "--batch-size", "2", "--samples-per-epoch", "4", "--device", "cpu", "--quiet",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _refused(args: list[str], out: Path, capsys) -> str:
    """Run the CLI; it must exit 2 with one error line and write no model. The line."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("napari-segen train: error: ")
    assert not list(out.parent.glob(f"{out.stem}.*"))  # no model, checkpoint or stage-1 file
    return err


# --- the CLI: each folder mistake, before the run ----------------------------------------------
def test_unpaired_names_are_refused(data, tmp_path, capsys, no_run):
    masks = data / "synth" / "masks"
    for f in masks.iterdir():
        f.rename(masks / f"other_{f.name}")
    out = tmp_path / "m.safetensors"
    err = _refused(_train(data, out), out, capsys)
    assert "no synthetic image in" in err and "has a mask of its name" in err
    assert "--synthetic-masks" in err and str(masks) in err


def test_some_images_without_masks_are_refused(data, tmp_path, capsys, no_run):
    (data / "synth" / "masks" / "synth1.png").unlink()
    out = tmp_path / "m.safetensors"
    err = _refused(_train(data, out), out, capsys)
    assert "1 of 3 synthetic images" in err and "synth1.png" in err
    assert "choose the masks exported with these images (--synthetic-masks)" in err


def test_an_empty_folder_is_refused(data, tmp_path, capsys, no_run):
    shutil.rmtree(data / "synth" / "masks")
    (data / "synth" / "masks").mkdir()
    out = tmp_path / "m.safetensors"
    err = _refused(_train(data, out), out, capsys)
    assert "holds no image files" in err and "(--synthetic-masks)" in err


def test_a_mask_folder_holding_images_is_refused(data, tmp_path, capsys, no_run):
    shutil.rmtree(data / "synth" / "masks")
    shutil.copytree(data / "synth" / "images", data / "synth" / "masks")
    out = tmp_path / "m.safetensors"
    err = _refused(_train(data, out), out, capsys)
    assert "synthetic masks seem to be images" in err and "(--synthetic-masks)" in err


def test_classes_beyond_the_models_are_refused(tmp_path, data, tiny_model_file, capsys, no_run):
    _write_pairs(tmp_path / "three", "synth", 3, value=2)  # classes 0-2 for a 2-class model
    out = tmp_path / "m.safetensors"
    args = _train(data, out, "--from", str(tiny_model_file), "--masks-are", "classes",
                  synth=tmp_path / "three")  # fmt: skip
    err = _refused(args, out, capsys)
    assert "has the value 2, but the model has 2 classes (0-1)" in err
    assert "export the pairs with a generator trained on these classes" in err
    assert str(tmp_path / "three" / "masks") in err


def test_named_classes_bound_the_synthetic_masks(tmp_path, data, capsys, no_run):
    _write_pairs(tmp_path / "three", "synth", 3, value=2)
    out = tmp_path / "m.safetensors"
    args = _train(data, out, "--classes", "background,cell", synth=tmp_path / "three")
    err = _refused(args, out, capsys)
    assert "--classes names 2 classes (0-1)" in err


def test_colour_images_for_grey_real_ones_are_refused(tmp_path, data, capsys, no_run):
    _write_pairs(tmp_path / "colour", "synth", 3, rgb=True)
    out = tmp_path / "m.safetensors"
    err = _refused(_train(data, out, synth=tmp_path / "colour"), out, capsys)
    assert "is colour but the real images are grey" in err and "(--synthetic-images)" in err


def test_good_folders_reach_the_run(data, tmp_path, tiny_model_file, no_run):
    out = tmp_path / "m.safetensors"
    with pytest.raises(RunStarted):
        main(_train(data, out, "--from", str(tiny_model_file)))


# --- what only the run can tell: still one line -------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_the_run_refuses_classes_the_precheck_could_not_know(tmp_path, data, tiny_model_file,
                                                             capsys):  # fmt: skip
    """Masks 'auto': the real masks might have been instances (3 classes), so value 2 passes
    the pre-check; reading shows they are classes, and the run refuses in one line."""
    _write_pairs(tmp_path / "three", "synth", 3, value=2)
    out = tmp_path / "m.safetensors"
    args = _train(data, out, "--from", str(tiny_model_file), synth=tmp_path / "three")
    err = _refused(args, out, capsys)
    assert "synthetic mask for synth0.png in" in err and str(tmp_path / "three" / "masks") in err
    assert "has the value 2, but the model has 2 classes (0-1)" in err


# --- the core ---------------------------------------------------------------------------------
def test_the_precheck_reads_only_a_few_of_hundreds_of_pairs(tmp_path, monkeypatch):
    root = tmp_path / "many"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tile = np.zeros((8, 8), np.uint8)
    tile[2:6, 2:6] = 1
    for k in range(300):
        Image.fromarray(tile * 200).save(root / "images" / f"s{k:03d}.png")
        write_labels(root / "masks" / f"s{k:03d}_mask.png", tile)
    read: list[Path] = []
    real_read_mask = synthetic_data.read_mask
    monkeypatch.setattr(synthetic_data, "read_mask", lambda p, *a, **k: read.append(p) or
                        real_read_mask(p, *a, **k))  # fmt: skip
    synthetic = choose_synthetic(root / "images", root / "masks", 0.3, False)
    check_synthetic(synthetic, classes=KnownClasses(2, "the model has 2 classes"), colour=False)
    assert 1 <= len(read) <= SYNTHETIC_SAMPLES
    assert read[0].name == "s000_mask.png" and read[-1].name == "s299_mask.png"


def test_what_is_known_before_reading():
    from napari_segen.models import ModelSpec

    spec = ModelSpec(
        architecture="unet",
        arch_kwargs={"in_channels": 1, "num_classes": 2},
        in_channels=1,
        class_names=["background", "foreground"],
    )
    assert classes_before_reading(None) is None  # a new model: the masks decide
    assert classes_before_reading(spec, masks_are="classes").count == 2
    assert classes_before_reading(spec, masks_are="auto").count == 3  # maybe instances
    assert classes_before_reading(spec, ["a", "b", "c", "d"]).count == 4
    assert classes_before_reading(None, masks_are="instances", instance_mode="binary").count == 2


def test_real_colour_from_headers(data, tmp_path):
    from napari_segen.data.sources import ArraySource, FolderSource

    grey = FolderSource(data / "real" / "images", data / "real" / "masks")
    assert real_colour([grey]) is False
    _write_pairs(tmp_path / "colour", "c", 1, rgb=True)
    colour = FolderSource(tmp_path / "colour" / "images", tmp_path / "colour" / "masks")
    assert real_colour([colour]) is True
    assert real_colour([grey, colour]) is None  # mixed: the run decides
    layer = ArraySource(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), rgb=True)
    assert real_colour([layer]) is True


# --- the Train widget ---------------------------------------------------------------------------
@pytest.fixture
def widget(make_napari_viewer, tiny_model_file, tmp_path, data):
    from napari_segen.data.image_io import read_image, read_mask
    from napari_segen.widgets.train_widget import _FILE_CHOICE, TrainWidget

    viewer = make_napari_viewer()
    viewer.add_image(read_image(data / "real" / "images" / "real0.png"), name="em")
    viewer.add_labels(read_mask(data / "real" / "masks" / "real0.png").astype(np.uint8),
                      name="em labels")  # fmt: skip
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.start_model.value = _FILE_CHOICE
    w.start_file.value = tiny_model_file
    w.device.value = "cpu"
    w.live_preview.value = False
    w.epochs.value = 1
    w.out_path.value = tmp_path / "retrained.safetensors"
    w.config_overrides = dict(crop_size=32, batch_size=2, samples_per_epoch=4, patience=None)
    return w


@pytest.mark.gui
def test_widget_refuses_wrong_classes_in_the_status_and_starts_nothing(
    widget, tmp_path, monkeypatch
):
    import napari_segen.widgets.train_widget as tw

    shown: list[str] = []
    monkeypatch.setattr(tw, "show_error", shown.append)
    _write_pairs(tmp_path / "four", "synth", 3, value=3)  # beyond 2 classes, even as instances
    widget.synthetic_images.value = tmp_path / "four" / "images"
    widget.synthetic_masks.value = tmp_path / "four" / "masks"
    widget.synthetic_share.value = 0.3
    widget.start()
    status = str(widget.status.value)
    assert "\n" not in status and status.startswith("cannot train: ")
    assert "has the value 3, but the model has 2 classes (0-1)" in status
    assert "the synthetic masks folder under Advanced settings" in status
    assert len(shown) == 1 and widget.runner.worker is None and not widget.runner.running
    assert not (tmp_path / "retrained.safetensors").exists()


@pytest.mark.gui
def test_widget_refuses_colour_synthetic_images_for_a_grey_layer(widget, tmp_path, monkeypatch):
    import napari_segen.widgets.train_widget as tw

    monkeypatch.setattr(tw, "show_error", lambda _: None)
    _write_pairs(tmp_path / "colour", "synth", 3, rgb=True)
    widget.synthetic_images.value = tmp_path / "colour" / "images"
    widget.synthetic_masks.value = tmp_path / "colour" / "masks"
    widget.synthetic_pretrain.value = True
    widget.start()
    assert "is colour but the real images are grey" in widget.status.value
    assert "the synthetic images folder under Advanced settings" in widget.status.value
    assert widget.runner.worker is None


@pytest.mark.gui
@pytest.mark.usefixtures("one_thread")
def test_widget_shows_the_runs_refusal_as_one_line(widget, qtbot, tmp_path):
    """Value 2 passes the pre-check ('auto': the labels might be instances); the run finds
    class masks, refuses in the worker, and the status holds its one line."""
    _write_pairs(tmp_path / "three", "synth", 3, value=2)
    widget.synthetic_images.value = tmp_path / "three" / "images"
    widget.synthetic_masks.value = tmp_path / "three" / "masks"
    widget.synthetic_share.value = 0.3
    widget.start()
    assert widget.runner.worker is not None  # the pre-check let it through
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    status = str(widget.status.value)
    assert widget.runner.error is not None and "\n" not in status
    assert status.startswith("Training on em failed: synthetic mask for synth0.png in ")
    assert "has the value 2, but the model has 2 classes (0-1)" in status
    assert not (tmp_path / "retrained.safetensors").exists()
