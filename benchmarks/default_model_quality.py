"""Held-out quality of the bundled default model on ISBI slices it never saw in training.

Baseline measured in the same run: Otsu thresholding (dark pixels = membrane),
the classical no-training answer. Prints per-image and pooled membrane Dice
and pixel accuracy, and the model/baseline ratio.

    python benchmarks/default_model_quality.py [--model PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from skimage.filters import gaussian, threshold_otsu

from napari_segen._sample_data import ISBI_MASK_MAP
from napari_segen.data.files import list_images
from napari_segen.data.image_io import read_image, read_mask
from napari_segen.inference import predict
from napari_segen.metrics.segmentation import SegmentationScores
from napari_segen.models import default_model_path, load_model

TEST = Path(__file__).resolve().parents[1] / "sample_data" / "isbi2012" / "test"


def otsu_membrane(image: np.ndarray) -> np.ndarray:
    smooth = gaussian(image.astype(float), sigma=1)
    return (smooth < threshold_otsu(smooth)).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(default_model_path()))
    args = parser.parse_args()
    model = load_model(args.model)
    pooled = {"model": SegmentationScores(2), "otsu": SegmentationScores(2)}
    print(f"{'image':<8}{'model dice':>12}{'otsu dice':>12}{'model acc':>12}{'otsu acc':>12}")
    for path in list_images(TEST / "images"):
        image = read_image(path)
        truth = read_mask(TEST / "masks" / path.name, ISBI_MASK_MAP)
        m = SegmentationScores(2).update(predict(model, image).labels, truth)
        o = SegmentationScores(2).update(otsu_membrane(image), truth)
        pooled["model"].update(predict(model, image).labels, truth)
        pooled["otsu"].update(otsu_membrane(image), truth)
        print(
            f"{path.name:<8}{m.dice[1]:>12.4f}{o.dice[1]:>12.4f}{m.accuracy:>12.4f}{o.accuracy:>12.4f}"
        )
    res = {
        k: {
            "membrane_dice": float(s.dice[1]),
            "membrane_iou": float(s.iou[1]),
            "pixel_accuracy": s.accuracy,
        }
        for k, s in pooled.items()
    }
    print(f"pooled over {len(list_images(TEST / 'images'))} held-out images:")
    print(json.dumps(res, indent=2))
    ratio = res["model"]["membrane_dice"] / res["otsu"]["membrane_dice"]
    print(f"membrane Dice ratio model/otsu: {ratio:.2f}x")


if __name__ == "__main__":
    main()
