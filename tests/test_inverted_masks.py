"""Masks whose convention is opposite to the model's classes are pointed out, not just scored."""

from __future__ import annotations

import shutil

import numpy as np

from napari_segen.metrics.evaluate import inverted_masks_warning
from napari_segen.metrics.segmentation import SegmentationScores


def _scores(pred: np.ndarray, mask: np.ndarray, n: int = 2) -> SegmentationScores:
    return SegmentationScores(n).update(pred, mask)


def test_warning_only_when_the_swapped_masks_match_far_better():
    rng = np.random.default_rng(0)
    mask = (rng.random((64, 64)) < 0.3).astype(np.int64)
    pred = mask.copy()
    pred[:4] = 1 - pred[:4]  # a good but imperfect prediction
    assert inverted_masks_warning(_scores(pred, mask), ["bg", "membrane"]) is None
    text = inverted_masks_warning(_scores(pred, 1 - mask), ["bg", "membrane"])
    assert text is not None and "inverted" in text and "--mask-map 0:1,255:0" in text
    assert "'membrane'" in text
    # a poor prediction that matches neither way is not called inverted
    noise = (rng.random((64, 64)) < 0.5).astype(np.int64)
    assert inverted_masks_warning(_scores(noise, mask)) is None
    # not two classes: no opinion
    assert inverted_masks_warning(_scores(pred, mask, 3)) is None
    assert inverted_masks_warning(SegmentationScores(2)) is None


def test_evaluate_warns_on_isbi_masks_without_the_map(isbi_dir, tmp_path, capsys):
    from napari_segen.cli import main

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        shutil.copy(isbi_dir / "test" / sub / "20.png", tmp_path / sub / "20.png")
    argv = ["evaluate", "--model", "default", "--images", str(tmp_path / "images"),
            "--masks", str(tmp_path / "masks"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "look inverted" in err and "--mask-map 0:1,255:0" in err
    assert main([*argv, "--mask-map", "0:1,255:0"]) == 0
    assert "inverted" not in capsys.readouterr().err
