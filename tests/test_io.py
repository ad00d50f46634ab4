"""Reading images and masks, writing labels, and the npe2 reader/writer/sample contributions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_segen import _reader, _sample_data, _writer
from napari_segen.data import (
    ImageReadError,
    parse_value_map,
    read_image,
    read_mask,
    write_labels,
)
from napari_segen.utils.atomic import OverwriteError

REPO = Path(__file__).resolve().parents[1]


def test_binary_masks_map_to_classes_and_value_maps_apply(tmp_path):
    raw = np.zeros((8, 8), np.uint8)
    raw[2:5, 2:5] = 255
    Image.fromarray(raw).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), raw // 255)
    inverted = read_mask(tmp_path / "m.png", parse_value_map("0:1,255:0"))
    np.testing.assert_array_equal(inverted, 1 - raw // 255)


def test_palette_png_gives_indices(tmp_path):
    idx = np.array([[0, 1, 2], [15, 255, 0]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [7] * (256 * 3 - 9))
    im.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png"), idx)


def test_colour_image_is_not_a_mask(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageReadError, match="colour image, not a mask"):
        read_mask(tmp_path / "rgb.png")


def test_images_keep_their_dtype(tmp_path):
    img16 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(img16).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 8, 8), np.float32), photometric="minisblack")
    assert read_image(tmp_path / "a.png").dtype == np.uint16
    assert read_image(tmp_path / "s.tif").shape == (3, 8, 8)
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(tmp_path / "bad.png")


def test_write_labels_png_tif_and_no_silent_overwrite(tmp_path):
    labels = np.array([[0, 1], [2, 300]])
    write_labels(tmp_path / "l.png", labels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "l.png")), labels)
    with pytest.raises(OverwriteError, match="already exists"):
        write_labels(tmp_path / "l.png", labels * 0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "l.png")), labels)
    stack = np.random.default_rng(0).integers(0, 5, (3, 6, 6))
    write_labels(tmp_path / "s.tif", stack)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"), stack)
    with pytest.raises(ValueError, match="save stacks"):
        write_labels(tmp_path / "s.png", stack)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png", "s.tif"]  # no temp files left


def test_bad_value_map_is_explained():
    with pytest.raises(ValueError, match="write pairs like"):
        parse_value_map("0=1")


def test_reader_claims_only_label_files(tmp_path):
    write_labels(tmp_path / "cells_labels.tif", np.eye(5, dtype=int) * 3)
    assert _reader.napari_get_reader(str(tmp_path / "image.png")) is None
    reader = _reader.napari_get_reader(str(tmp_path / "cells_labels.tif"))
    ((data, meta, kind),) = reader(str(tmp_path / "cells_labels.tif"))
    assert kind == "labels" and meta["name"] == "cells_labels" and data.max() == 3


def test_writer_round_trips_through_reader(tmp_path):
    data = np.random.default_rng(0).integers(0, 4, (16, 16))
    (path,) = _writer.write_labels(str(tmp_path / "out_labels.png"), data, {})
    ((back, _, _),) = _reader.napari_get_reader(path)(path)
    np.testing.assert_array_equal(back, data)


def test_sample_data_is_image_plus_membrane_labels():
    (img, img_meta, k1), (lab, lab_meta, k2) = _sample_data.isbi_sample()
    assert (k1, k2) == ("image", "labels")
    assert img.shape == lab.shape == (512, 512) and img.dtype == np.uint8
    # membrane (label 1, visible) is the minority class in ISBI (~22% of pixels)
    assert 0.1 < (lab == 1).mean() < 0.35
    assert lab_meta["metadata"]["class_names"][1] == "membrane"


def test_manifest_is_valid_and_shipped_copy_matches():
    from npe2 import PluginManifest

    pkg = REPO / "src" / "napari_segen" / "napari.yaml"
    assert (REPO / "napari.yaml").read_text() == pkg.read_text()
    manifest = PluginManifest.from_file(pkg)
    contrib = manifest.contributions
    assert {w.display_name for w in contrib.widgets} >= {"Segment", "Train", "Synthesize"}
    assert contrib.readers and contrib.writers and contrib.sample_data
    # every command points at an importable object
    import importlib

    for cmd in contrib.commands:
        module, attr = cmd.python_name.split(":")
        assert hasattr(importlib.import_module(module), attr), cmd.python_name


def test_core_does_not_import_qt_or_napari():
    import subprocess
    import sys

    code = (
        "import sys; import napari_segen.models, napari_segen.data, napari_segen.inference, "
        "napari_segen.training, napari_segen.metrics, napari_segen.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', "
        "'PySide6', 'magicgui')]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_channels_follow_the_one_layout_rule():
    from napari_segen.data.layout import is_rgb_shape
    from napari_segen.data.normalize import to_channels_first

    rgba = np.zeros((5, 6, 4), np.uint8)
    assert is_rgb_shape(rgba.shape) and to_channels_first(rgba, 3).shape == (3, 5, 6)
    assert to_channels_first(rgba, 1, rgb=None).shape == (1, 5, 6)
    with pytest.raises(ValueError, match="2D grayscale or"):
        to_channels_first(rgba, 3, rgb=False)  # told it is not colour: a stack, not one image
    assert to_channels_first(np.zeros((5, 6)), 3, rgb=True).shape == (3, 5, 6)


def test_headers_are_read_before_pixels(tmp_path):
    from napari_segen.data.image_io import image_info

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 30), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:50])  # the header survives, the pixels do not
    info = image_info(path)
    assert info.shape == (40, 30) and info.pixels == 1200 and not info.is_stack
    with pytest.raises(ImageReadError, match="cannot read"):
        read_image(path)


def test_channel_layouts(tmp_path):
    Image.fromarray(np.zeros((6, 5, 2), np.uint8)).save(tmp_path / "la.png")  # gray + alpha
    assert read_image(tmp_path / "la.png").shape == (6, 5)
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((40, 50, 2), np.uint8))
    with pytest.raises(ImageReadError, match="2 channels per pixel"):
        read_image(tmp_path / "two.tif")
    # ImageJ says which axis is which: 40 slices of 50 x 2 pixels is what it holds
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((40, 50, 2), np.uint8), imagej=True)
    assert read_image(tmp_path / "ij.tif").shape == (40, 50, 2)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").shape == (8, 9, 3)
    with pytest.raises(ImageReadError, match="colour image, not a mask"):
        read_mask(tmp_path / "rgb.tif")


def test_reader_claims_layer_names_and_objects(tmp_path):
    """``<layer> labels.png`` (napari saves under the layer's name) and ``*_objects.tif`` read."""
    data = np.eye(6, dtype=np.uint8) * 2
    for name in ("ISBI EM labels.png", "cells labels.tif", "x_mask.tiff", "x_objects.tif"):
        write_labels(tmp_path / name, data)
        reader = _reader.napari_get_reader(str(tmp_path / name))
        assert reader is not None, name
        ((back, meta, kind),) = reader(str(tmp_path / name))
        assert kind == "labels" and meta["name"] == Path(name).stem
    Image.fromarray(data).save(tmp_path / "labels notes.png")  # the marker must end the name
    assert _reader.napari_get_reader(str(tmp_path / "labels notes.png")) is None
    (tmp_path / "broken labels.png").write_bytes(b"not a png")
    assert _reader.napari_get_reader(str(tmp_path / "broken labels.png")) is None


@pytest.mark.gui
def test_napari_save_and_open_round_trip(make_napari_viewer, tmp_path, tiny_model_file):
    """A Labels layer saved from napari under its own name, and predict's labels, objects
    and zarr store, reopen as Labels through napari (File > Open offers napari-segen)."""
    from napari.layers import Labels
    from napari.plugins._npe2 import get_readers

    from napari_segen.cli import main

    viewer = make_napari_viewer()
    data = np.zeros((32, 32), np.uint8)
    data[4:12, 4:12], data[20:30, 18:28] = 1, 2
    viewer.add_labels(data, name="ISBI EM labels")
    path = tmp_path / "ISBI EM labels.png"
    (written,) = viewer.layers.save(str(path), plugin="napari-segen")
    assert Path(written) == path
    assert "napari-segen" in get_readers(str(path))
    (layer,) = viewer.open(str(path), plugin="napari-segen")
    assert isinstance(layer, Labels) and layer.name.startswith("ISBI EM labels")
    np.testing.assert_array_equal(layer.data, data)
    # saved with napari's own choice of writer (File > Save Selected Layers), the same
    viewer.layers.selection = {viewer.layers["ISBI EM labels"]}
    other = tmp_path / "X labels.tif"
    viewer.layers.save(str(other), selected=True)
    (layer,) = viewer.open(str(other), plugin="napari-segen")
    assert isinstance(layer, Labels)
    np.testing.assert_array_equal(layer.data, data)

    Image.fromarray((data * 100).astype(np.uint8)).save(tmp_path / "cells.png")
    out = tmp_path / "pred"
    argv = ["predict", str(tmp_path / "cells.png"), "-m", str(tiny_model_file), "--out", str(out)]
    assert main([*argv, "--instances", "--device", "cpu", "-q"]) == 0
    labels = out / "cells_labels.png"
    assert "napari-segen" in get_readers(str(labels))
    (layer,) = viewer.open(str(labels), plugin="napari-segen")
    assert isinstance(layer, Labels) and layer.name == "cells_labels"
    np.testing.assert_array_equal(layer.data, np.asarray(Image.open(labels)))
    objects = out / "cells_objects.tif"
    assert "napari-segen" in get_readers(str(objects))
    (layer,) = viewer.open(str(objects), plugin="napari-segen")
    assert isinstance(layer, Labels) and layer.data.shape == (32, 32)

    tifffile.imwrite(tmp_path / "cells.tif", (data * 100).astype(np.uint8))  # block-wise: TIFF
    store = tmp_path / "cells.zarr"
    argv = ["predict", str(tmp_path / "cells.tif"), "-m", str(tiny_model_file), "--out", str(store)]
    assert main([*argv, "--uncertainty", "--device", "cpu", "-q"]) == 0
    assert "napari-segen" in get_readers(str(store))
    layers = viewer.open(str(store), plugin="napari-segen")
    assert [type(la).__name__ for la in layers] == ["Labels", "Image"]
    assert layers[0].name == "cells labels"
    np.testing.assert_array_equal(np.asarray(layers[0].data), np.asarray(Image.open(labels)))
