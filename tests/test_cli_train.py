"""``napari-segen train`` / ``evaluate`` from the command line: sources, resume, JSON, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_segen.cli import main
from napari_segen.data.sources import VOC_CLASSES
from napari_segen.models import load_model
from napari_segen.training.checkpoint import last_checkpoint_path, load_checkpoint

TINY = ["--depth", "2", "--base-channels", "8", "--crop-size", "64", "--batch-size", "2",
        "--samples-per-epoch", "4", "--device", "cpu", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def small_isbi(tmp_path_factory, isbi_dir):
    """3 ISBI images and masks cropped to 96 x 96 (folders), for quick CLI runs."""
    root = tmp_path_factory.mktemp("isbi_small")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
        for i in (0, 1, 2):
            im = Image.open(isbi_dir / "train" / sub / f"{i:02d}.png")
            im.crop((0, 0, 96, 96)).save(root / sub / f"{i:02d}.png")
    return root


def test_train_folders_then_evaluate_table_and_json(tmp_path, small_isbi, capsys):
    out = tmp_path / "m.safetensors"
    data = ["--images", str(small_isbi / "images"), "--masks", str(small_isbi / "masks"),
            "--mask-map", "0:1,255:0"]  # fmt: skip
    assert main(["train", *data, *TINY, "--epochs", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err  # per-epoch lines on stdout, notes on stderr
    assert "epoch   1  loss" in text and "val dice" in text
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["model"] == str(out) and summary["epochs"] == 2
    model = load_model(out)
    assert model.spec.class_names == ["background", "foreground"]
    assert model.spec.provenance["images"] == str(small_isbi / "images")

    assert main(["evaluate", "-m", str(out), *data, "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "Dice"]
    assert lines[1].split()[0] == "background" and lines[2].split()[0] == "foreground"
    for line in lines[1:3]:
        iou, dice = map(float, line.split()[1:3])
        assert 0 <= iou <= dice <= 1  # Dice >= IoU for every class
    assert "pixel accuracy" in lines[-1] and "3 image(s)" in lines[-1]

    assert main(["evaluate", "-m", str(out), *data, "--device", "cpu", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics["per_class"]) == {"background", "foreground"}
    assert metrics["images"] == 3 and 0 <= metrics["pixel_accuracy"] <= 1
    assert metrics["foreground_dice"] == pytest.approx(metrics["per_class"]["foreground"]["dice"])


def test_resume_continues_and_overwrite_is_refused(tmp_path, small_isbi, capsys):
    out = tmp_path / "r.safetensors"
    data = ["--images", str(small_isbi / "images"), "--masks", str(small_isbi / "masks"),
            "--mask-map", "0:1,255:0"]  # fmt: skip
    # A run that stopped after 1 of 3 epochs (as if cancelled): --time-limit 0.001 stops it.
    args = ["train", *data, *TINY, "--epochs", "3", "--out", str(out)]
    assert main([*args, "--time-limit", "0.001"]) == 0
    assert load_checkpoint(last_checkpoint_path(out)).epoch == 1
    capsys.readouterr()
    # Running it again without --overwrite is refused with a sentence, not a traceback.
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert main(["train", *data, "--out", str(out), "--resume", "--device", "cpu", "-q"]) == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "resuming" in text and "epoch   2" in text and "epoch   1" not in text
    assert load_checkpoint(last_checkpoint_path(out)).epoch == 3
    assert load_model(out).spec.provenance["epochs_run"] >= 1


def _palette_png(path, values):
    im = Image.fromarray(values.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [9] * (252 * 3) + [224, 224, 192])
    im.save(path)


def test_train_on_voc_and_tiff_stacks(tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    ids = [f"2008_00000{i}" for i in range(3)]
    for i in ids:
        m = np.zeros((64, 64), np.uint8)
        m[10:40, 10:40] = 12  # dog
        m[45:60, 5:60] = 15  # person
        m[9, :] = 255
        k = m.astype(np.int64)
        rgb = np.stack([k * 10 % 256, k * 3 % 256, 255 - k], -1).astype(np.uint8)
        noise = rng.integers(0, 20, rgb.shape, dtype=np.uint8)
        Image.fromarray(rgb + noise).save(root / "JPEGImages" / f"{i}.jpg")
        _palette_png(root / "SegmentationClass" / f"{i}.png", m)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:2]))
    (root / "ImageSets/Segmentation/val.txt").write_text(ids[2])
    out = tmp_path / "voc.safetensors"
    assert main(["train", "--voc", str(tmp_path), *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert "training on 2 image(s), validating on 1" in capsys.readouterr().err
    model = load_model(out)
    assert model.spec.class_names == list(VOC_CLASSES) and model.spec.in_channels == 3
    assert (
        main(["evaluate", "-m", str(out), "--voc", str(tmp_path), "--json", "--device", "cpu"]) == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["images"] == 1 and "dog" in metrics["per_class"]

    img = rng.integers(0, 255, (3, 64, 64), dtype=np.uint8)
    lab = np.zeros((3, 64, 64), np.uint8)
    lab[0, 5:30, 5:30] = 3  # sparse: class 2
    lab[0, 40:50, 40:50] = 1  # sparse: class 0
    lab[2, 10:20, :] = 2  # sparse: class 1
    tifffile.imwrite(tmp_path / "stack.tif", img, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", lab, photometric="minisblack")
    out = tmp_path / "stack.safetensors"
    stacks = ["--stack-image", str(tmp_path / "stack.tif"), "--stack-labels",
              str(tmp_path / "labels.tif")]  # fmt: skip
    args = ["train", *stacks, "--sparse", *TINY, "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    assert "training on 1 image(s), validating on 1" in capsys.readouterr().err  # slice 1 skipped
    assert load_model(out).spec.num_classes == 3


def test_a_single_image_is_split_by_region(tmp_path, capsys):
    """One annotated image: the bottom rows validate, as in the Train widget."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (96, 64), dtype=np.uint8)
    lab = (img > 128).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", img, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="minisblack")
    out = tmp_path / "one.safetensors"
    args = ["train", "--stack-image", str(tmp_path / "img.tif"), "--stack-labels",
            str(tmp_path / "lab.tif"), "--val-split", "0.4", *TINY, "--epochs", "1",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert "training on 1 image(s), validating on 1" in capsys.readouterr().err
    assert load_model(out).spec.provenance["stack_image"] == str(tmp_path / "img.tif")


def test_source_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no data" in capsys.readouterr().err
    assert main(["train", "--voc", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "not a Pascal VOC folder" in err and "Traceback" not in err
    assert main(["train", "--images", str(tmp_path), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "give both --images and --masks" in capsys.readouterr().err
    assert main(["train", "--images", str(tmp_path), "--masks", str(tmp_path), "--distributed",
                 "--out", str(tmp_path / "x.safetensors")]) == 2  # fmt: skip
    assert "torchrun" in capsys.readouterr().err
