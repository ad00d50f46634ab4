"""The ISBI 2012 challenge's own metrics for the bundled model, beside Otsu + watershed.

On the held-out sample slices 20-23 (never seen in training), cells are the
regions enclosed by membrane: for the ground truth, the connected components of
its interior; for the model, :func:`napari_segen.inference.instances.find_instances`
(seeded watershed over the membrane probability); for the baseline, Otsu's
threshold of the smoothed image as membrane, seeds from the eroded interior,
watershed over the inverted intensity (membranes are dark). Printed per method,
averaged over the slices:

* pixel error: fraction of pixels whose membrane/interior class is wrong;
* adapted Rand error and variation of information (split + merge), ground-truth
  label 0 (membrane) ignored, from ``skimage.metrics``.

The U-Net paper's figures on the challenge's own (hidden) test set are printed
for orientation only: other data, other ground truth.

    python benchmarks/em_segmentation_metrics.py [--model PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import label as connected_components
from skimage.morphology import disk, remove_small_objects
from skimage.segmentation import watershed

from napari_segen._sample_data import ISBI_MASK_MAP
from napari_segen.data.files import list_images
from napari_segen.data.image_io import read_image, read_mask
from napari_segen.inference import predict
from napari_segen.inference.instances import find_instances
from napari_segen.metrics.instance import EMScores
from napari_segen.models import default_model_path, load_model

TEST = Path(__file__).resolve().parents[1] / "sample_data" / "isbi2012" / "test"
UNET_PAPER = {"pixel_error": 0.0611, "rand_error": 0.0382}


def otsu_watershed(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Membrane classes (1 = membrane) and cell regions from Otsu + seeded watershed."""
    smooth = gaussian(image.astype(float), sigma=2)
    membrane = smooth < threshold_otsu(smooth)
    seeds = connected_components(
        remove_small_objects(ndimage.binary_erosion(~membrane, structure=disk(3)), max_size=15)
    )
    regions = watershed(-smooth, seeds)
    return membrane.astype(np.int64), regions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=str(default_model_path()))
    args = parser.parse_args()
    model = load_model(args.model)
    em = {"model": EMScores(), "otsu+watershed": EMScores()}
    pixel_err: dict[str, list[float]] = {k: [] for k in em}
    paths = list_images(TEST / "images")
    for path in paths:
        image = read_image(path)
        truth = read_mask(TEST / "masks" / path.name, ISBI_MASK_MAP)
        gt_cells = connected_components(truth == 0)
        pred = predict(model, image, return_probabilities=True)
        cells = find_instances(pred.probabilities, model.spec.class_names).labels
        em["model"].update(gt_cells, cells)
        pixel_err["model"].append(float((pred.labels != truth).mean()))
        membrane, regions = otsu_watershed(image)
        em["otsu+watershed"].update(gt_cells, regions)
        pixel_err["otsu+watershed"].append(float((membrane != truth).mean()))
    res = {k: {"pixel_error": float(np.mean(pixel_err[k])), **em[k].as_dict()} for k in em}
    print(f"held-out ISBI slices: {', '.join(p.name for p in paths)}")
    print(f"{'method':<16}{'pixel error':>12}{'Rand error':>12}{'VOI split':>11}{'VOI merge':>11}")
    for k, r in res.items():
        print(
            f"{k:<16}{r['pixel_error']:>12.4f}{r['rand_error']:>12.4f}"
            f"{r['voi_split']:>11.3f}{r['voi_merge']:>11.3f}"
        )
    print(
        f"{'U-Net paper*':<16}{UNET_PAPER['pixel_error']:>12.4f}{UNET_PAPER['rand_error']:>12.4f}"
        "  (*challenge test set; orientation only)"
    )
    ratio = res["otsu+watershed"]["rand_error"] / max(res["model"]["rand_error"], 1e-12)
    print(f"Rand error, baseline / model: {ratio:.2f}x (higher = model better)")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
