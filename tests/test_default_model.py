"""The bundled default model: loads, generalises to held-out ISBI slices, drives the demo."""

from __future__ import annotations

import numpy as np
from PIL import Image

from napari_segen._sample_data import ISBI_MASK_MAP
from napari_segen.cli import main
from napari_segen.data.files import list_images
from napari_segen.data.image_io import read_image, read_mask
from napari_segen.inference import predict
from napari_segen.metrics.segmentation import SegmentationScores
from napari_segen.models import default_model_path, load_model


def test_default_model_is_described_for_users():
    model = load_model(str(default_model_path()))
    spec = model.spec
    assert spec.class_names == ["cell interior", "membrane"]
    assert spec.class_colors[0] is None  # background transparent, membrane visible
    held_out = {"20.png", "21.png", "22.png", "23.png"}
    assert not held_out & set(spec.provenance["train_images"] + spec.provenance["val_images"])
    assert default_model_path().stat().st_size < 10_000_000


def test_default_model_generalises_to_unseen_slices(isbi_dir):
    """Issue requirement: membrane Dice >= 0.80 and pixel accuracy >= 0.90 on unseen images."""
    model = load_model(str(default_model_path()))
    scores = SegmentationScores(2)
    test = isbi_dir / "test"
    for path in list_images(test / "images"):
        labels = predict(model, read_image(path)).labels
        scores.update(labels, read_mask(test / "masks" / path.name, ISBI_MASK_MAP))
    print(f"held-out membrane Dice {scores.dice[1]:.4f}, accuracy {scores.accuracy:.4f}")
    assert scores.dice[1] >= 0.80
    assert scores.accuracy >= 0.90


def test_headless_demo_writes_result(tmp_path, capsys):
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "membrane Dice" in out
    labels = np.asarray(Image.open(tmp_path / "isbi_20_labels.png"))
    assert labels.shape == (512, 512) and set(np.unique(labels)) == {0, 1}
    assert (tmp_path / "isbi_20_overlay.png").is_file()


def test_napari_discovers_the_plugin():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-segen")
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"Segment", "Train", "Synthesize", "Image quality metrics"} <= widgets
    assert [s.key for s in manifest.contributions.sample_data] == ["isbi_em"]
    assert manifest.contributions.readers and manifest.contributions.writers
