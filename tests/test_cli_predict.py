"""``napari-segen predict`` on files and folders, and its errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from napari_segen.cli import main


@pytest.fixture
def image_folder(tmp_path, blobs_image):
    folder = tmp_path / "imgs"
    folder.mkdir()
    img, _ = blobs_image
    Image.fromarray(img).save(folder / "a.png")
    Image.fromarray(img.astype(np.uint16) * 200).save(folder / "b.png")  # 16-bit
    Image.fromarray(np.stack([img] * 3, -1)).save(folder / "c.png")  # RGB
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_predict_folder_writes_labels_names(tmp_path, image_folder, tiny_model_file, capsys):
    """One ``<name>_labels.png`` per input: napari's "<image> labels" name, opened as Labels."""
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(image_folder),
            "-m",
            str(tiny_model_file),
            "--out",
            str(out),
            "-q",
            "--tile-size",
            "64",
            "--probabilities",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "a_labels.png",
        "b_labels.png",
        "c_labels.png",
    ]
    lab = np.asarray(Image.open(out / "a_labels.png"))
    assert lab.shape == (96, 80) and set(np.unique(lab)) <= {0, 1}
    assert (out / "a_probs.tif").is_file()


def test_predict_never_overwrites_without_flag(tmp_path, image_folder, tiny_model_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_labels.png").write_bytes(b"user file")
    rc = main(["predict", str(image_folder), "-m", str(tiny_model_file), "--out", str(out), "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "a_labels.png").read_bytes() == b"user file"
    assert not (out / "b_labels.png").exists()  # refused before doing any work
    assert (
        main(
            [
                "predict",
                str(image_folder),
                "-m",
                str(tiny_model_file),
                "--out",
                str(out),
                "-q",
                "--overwrite",
            ]
        )
        == 0
    )
    assert (out / "a_labels.png").read_bytes() != b"user file"


def test_predict_stack_tif(tmp_path, tiny_model_file):
    import tifffile

    tifffile.imwrite(
        tmp_path / "stack.tif", np.random.default_rng(0).integers(0, 255, (3, 40, 50), np.uint8)
    )
    assert (
        main(
            [
                "predict",
                str(tmp_path / "stack.tif"),
                "-m",
                str(tiny_model_file),
                "-o",
                str(tmp_path / "o"),
                "-q",
            ]
        )
        == 0
    )
    assert tifffile.imread(tmp_path / "o" / "stack_labels.tif").shape == (3, 40, 50)


@pytest.mark.parametrize(
    "args,message",
    [
        (["predict", "missing.png", "--out", "o"], "input not found: missing.png"),
        (["predict", "{empty}", "--out", "o"], "no image files"),
        (["predict", "{img}", "-m", "nope.safetensors", "--out", "o"], "model file not found"),
        (["predict", "{img}", "-m", "{bad}", "--out", "o"], "not a valid safetensors file"),
        (["predict", "{img}", "--device", "cuda:7", "--out", "o"], "not available"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    tmp_path, image_folder, tiny_model_file, capsys, monkeypatch, args, message
):
    import torch

    if "cuda:7" in args and torch.cuda.is_available():
        pytest.skip("CUDA present")
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    shutil.copy(tiny_model_file.with_suffix(".json"), bad.with_suffix(".json"))
    args = [a.format(empty=tmp_path / "empty", img=image_folder / "a.png", bad=bad) for a in args]
    if "-m" not in args:
        args += ["-m", str(tiny_model_file)]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("predict", "train", "evaluate"):
        assert cmd in out


def test_colour_images_give_png_and_stacks_tif(tmp_path, tiny_model_file):
    import tifffile

    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (30, 40, 4), dtype=np.uint8)).save(src / "rgba.png")
    tifffile.imwrite(
        src / "stack.tif",
        rng.integers(0, 255, (2, 30, 40), dtype=np.uint8),
        photometric="minisblack",
    )
    out = tmp_path / "out"
    argv = ["predict", str(src), "-m", str(tiny_model_file), "-o", str(out), "-q"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert (out / "rgba_labels.png").is_file() and (out / "stack_labels.tif").is_file()
    assert tifffile.imread(out / "stack_labels.tif").shape == (2, 30, 40)


def test_predict_halo_option(tmp_path, tiny_model_file, blobs_image, capsys):
    """A larger --halo is accepted and gives labels of the same shape; a bad one is one line."""
    import imageio.v3 as iio

    from napari_segen.cli import main

    image, _ = blobs_image
    iio.imwrite(tmp_path / "a.png", image)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(tiny_model_file),
                 "--out", str(out), "--tile-size", "64", "--halo", "8", "-q"]) == 0  # fmt: skip
    assert iio.imread(out / "a_labels.png").shape == image.shape
    argv = ["predict", str(tmp_path / "a.png"), "--model", str(tiny_model_file),
            "--out", str(tmp_path / "o2"), "--tile-size", "64", "--halo", "40", "-q"]  # fmt: skip
    code = main(argv)
    assert code == 2
    assert "--halo must be from 0 to under half the tile size" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


def test_predict_output_reopens_as_labels(tmp_path, image_folder, tiny_model_file, capsys):
    """The reader claims what predict writes (labels, objects, a zarr store) and gives Labels
    with the values written; a zarr store that predict did not write is left to others."""
    import zarr

    from napari_segen import _reader

    out = tmp_path / "out"
    argv = ["predict", str(image_folder / "a.png"), "-m", str(tiny_model_file), "-q",
            "--tile-size", "64", "--device", "cpu"]  # fmt: skip
    assert main([*argv, "--out", str(out), "--instances"]) == 0
    capsys.readouterr()
    written = np.asarray(Image.open(out / "a_labels.png"))
    for name in ("a_labels.png", "a_objects.tif"):
        reader = _reader.napari_get_reader(str(out / name))
        assert reader is not None, name
        ((data, meta, kind),) = reader(str(out / name))
        assert kind == "labels" and meta["name"] == name.rsplit(".", 1)[0]
        if name == "a_labels.png":
            np.testing.assert_array_equal(data, written)

    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.asarray(Image.open(image_folder / "a.png")))
    argv[1] = str(tmp_path / "a.tif")  # block-wise mode reads zarr or TIFF
    store = tmp_path / "a.zarr"
    assert main([*argv, "--out", str(store), "--uncertainty", "--probabilities"]) == 0
    reader = _reader.napari_get_reader(str(store))
    assert reader is not None
    layers = reader(str(store))
    assert [(meta["name"], kind) for _, meta, kind in layers] == [
        ("a labels", "labels"),
        ("a uncertainty", "image"),
        (["a P(background)", "a P(foreground)"], "image"),
    ]
    np.testing.assert_array_equal(np.asarray(layers[0][0]), written)
    assert layers[0][1]["metadata"]["class_names"] == ["background", "foreground"]

    other = tmp_path / "other.zarr"
    zarr.open_group(str(other), mode="w")["labels"] = np.zeros((4, 4), np.uint8)
    for path in (other, tmp_path / "missing.zarr", out):
        assert _reader.napari_get_reader(str(path)) is None
