"""How closely tiled prediction matches whole-image prediction for the bundled model, by halo.

The sliding window drops each tile's outer ``halo`` pixels where tiles meet;
tiled output equals whole-image output only when the halo covers the model's
receptive field. This prints, for tiles of ``--tile`` px on a 1024x1024 mosaic
of the 4 ISBI held-out slices: the largest probability difference, the
share of labels that differ from one whole-image pass, and the time relative to
the default halo (measured in the same run).

    python benchmarks/tiling_agreement.py [--tile 256] [--halos default,32,48,64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_segen.data.files import list_images
from napari_segen.data.image_io import read_image
from napari_segen.inference import predict
from napari_segen.models import default_model_path, load_model

TEST = Path(__file__).resolve().parents[1] / "sample_data" / "isbi2012" / "test" / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--halos", default="default,32,48,64")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_model(default_model_path())
    slices = [read_image(p) for p in list_images(TEST)]
    image = np.block([[slices[0], slices[1]], [slices[2], slices[3]]])
    t = time.perf_counter()
    whole = predict(model, image, tile_size=None, device="cpu", return_probabilities=True)
    t_whole = time.perf_counter() - t
    print(f"{image.shape[0]}x{image.shape[1]} image, tile {args.tile}; whole image {t_whole:.1f}s")
    print(f"{'halo':>8}{'overlap':>9}{'max |dp|':>10}{'labels differ':>15}{'time vs default':>17}")
    base_time = None
    for h in args.halos.split(","):
        halo = None if h == "default" else int(h)
        overlap = None if halo is None else max(args.tile // 4, 2 * halo + 16)
        t = time.perf_counter()
        tiled = predict(
            model, image, tile_size=args.tile, overlap=overlap, halo=halo, device="cpu",
            return_probabilities=True,
        )  # fmt: skip
        dt = time.perf_counter() - t
        base_time = base_time or dt
        dp = float(np.abs(tiled.probabilities - whole.probabilities).max())
        differ = float((tiled.labels != whole.labels).mean())
        shown_halo = halo if halo is not None else (args.tile // 4) // 4
        shown_ov = overlap if overlap is not None else args.tile // 4
        print(f"{shown_halo:>8}{shown_ov:>9}{dp:>10.4f}{differ:>14.4%}{dt / base_time:>16.2f}x")


if __name__ == "__main__":
    main()
