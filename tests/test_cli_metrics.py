"""``napari-segen metrics REAL_DIR FAKE_DIR``: pairs by name, JSON, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from napari_segen.cli import main


@pytest.fixture
def folders(isbi_dir, tmp_path):
    """real/ with 4 ISBI crops; fake/ with noisy versions of 3 of them (+ one unpaired file)."""
    from napari_segen.data.image_io import read_image

    image = read_image(isbi_dir / "test" / "images" / "20.png")
    rng = np.random.default_rng(0)
    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    crops = [image[i * 40 : i * 40 + 40, :40] for i in range(4)]
    for i, c in enumerate(crops):
        Image.fromarray(c).save(real / f"{i:02d}.png")
    for i, c in enumerate(crops[:3]):
        noisy = np.clip(c + rng.normal(0, 10, c.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(fake / f"{i:02d}.tif")  # other suffix: paired by stem
    Image.fromarray(crops[3][::-1]).save(fake / "extra.png")
    return real, fake, crops


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    from napari_segen.metrics import features

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(features.WEIGHTS_ENV, raising=False)


def test_json_pairs_by_name_and_sets(folders, no_weights, capsys):
    from napari_segen.data.image_io import read_image
    from napari_segen.metrics.image_quality import paired_quality

    real, fake, _ = folders
    assert main(["metrics", str(real), str(fake), "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_pairs"] == 3 and out["unpaired_real"] == 1 and out["unpaired_fake"] == 1
    expected = paired_quality(
        [read_image(real / f"{i:02d}.png") for i in range(3)],
        [read_image(fake / f"{i:02d}.tif") for i in range(3)],
    )
    assert out["ssim"]["mean"] == pytest.approx(expected["ssim"]["mean"])
    assert out["psnr"]["mean"] == pytest.approx(expected["psnr"]["mean"])
    assert out["ssim"]["n"] == 3
    # the sets use every file; no weights -> no FID, a labelled feature distance
    assert out["n_real"] == 4 and out["n_fake"] == 4
    assert out["fid"] is None and out["kid_mean"] is None
    assert out["feature"].startswith("feature distance (")
    assert out["feature_distance"] is not None
    assert "weights-inception-2015-12-05-6726825d.pth" in out["message"]


def test_table_without_fid(folders, capsys):
    real, fake, _ = folders
    assert main(["metrics", str(real), str(fake), "--no-fid"]) == 0
    text = capsys.readouterr().out
    assert "3 image pair(s) matched by name" in text
    assert "SSIM" in text and "PSNR" in text and "FID" not in text


def test_float_images_need_data_range(tmp_path, capsys):
    import tifffile

    real, fake = tmp_path / "r", tmp_path / "f"
    real.mkdir()
    fake.mkdir()
    rng = np.random.default_rng(1)
    a = rng.random((32, 32)).astype(np.float32)
    tifffile.imwrite(real / "a.tif", a)
    tifffile.imwrite(fake / "a.tif", a * 0.9)
    assert main(["metrics", str(real), str(fake), "--no-fid"]) == 2
    assert "data range" in capsys.readouterr().err
    assert main(["metrics", str(real), str(fake), "--no-fid", "--json", "--data-range", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["ssim"]["mean"] < 1


def test_bad_input_is_one_line_and_exit_2(folders, tmp_path, capsys):
    real, fake, _ = folders
    assert main(["metrics", str(real), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a folder" in err and len(err.splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["metrics", str(real), str(empty)]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["metrics", str(real), str(fake), "--fid-weights", str(tmp_path / "w.pth")]) == 2
    assert "FID weights file not found" in capsys.readouterr().err


def test_json_is_strict_when_scores_are_not_finite(tmp_path, capsys):
    """Identical images have an infinite PSNR: strict JSON says null, never Infinity/NaN."""
    real, fake = tmp_path / "r", tmp_path / "f"
    real.mkdir()
    fake.mkdir()
    img = np.random.default_rng(2).integers(0, 255, (32, 32), dtype=np.uint8)
    Image.fromarray(img).save(real / "a.png")
    Image.fromarray(img).save(fake / "a.png")
    assert main(["metrics", str(real), str(fake), "--no-fid", "--json"]) == 0
    text = capsys.readouterr().out
    out = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert out["ssim"]["mean"] == pytest.approx(1.0)
    assert out["psnr"]["mean"] is None
