"""How closely tiled prediction matches whole-image prediction for the bundled model, by halo.

The sliding window drops each tile's outer ``halo`` pixels where tiles meet;
tiled output equals whole-image output only when the halo covers the model's
receptive field. This prints, for each tile size of ``--tiles`` and halo of
``--halos`` on a ``--size``-square mosaic of the 4 ISBI held-out slices (default
1024: each slice once; larger sizes repeat them): the largest
probability difference, the share of labels that differ from one whole-image
pass, the time, and the time relative to the first row (measured in the same run).

    python benchmarks/tiling_agreement.py [--tiles 256,512] [--halos 16,32,48,64] [--size 1024]

The overlap of each row is the one the tile planner gives for the halo: a
quarter tile, widened to ``2 * halo + 16`` (the U-Net's size multiple).
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
from napari_segen.inference.predict import size_multiple
from napari_segen.inference.sliding_window import plan_window
from napari_segen.models import default_model_path, load_model

TEST = Path(__file__).resolve().parents[1] / "sample_data" / "isbi2012" / "test" / "images"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiles", default="256", help="tile sizes, comma-separated")
    ap.add_argument("--halos", default="16,32,48,64", help="halos, comma-separated")
    ap.add_argument("--size", type=int, default=1024, help="image edge (default: 1024)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(default_model_path())
    multiple = size_multiple(model)
    slices = [read_image(p) for p in list_images(TEST)]
    n = -(-args.size // slices[0].shape[0])
    grid = [[slices[(2 * (r % 2) + c % 2)] for c in range(n)] for r in range(n)]
    image = np.block(grid)[: args.size, : args.size]
    t = time.perf_counter()
    whole = predict(model, image, tile_size=None, device="cpu", return_probabilities=True)
    t_whole = time.perf_counter() - t
    print(
        f"{image.shape[0]}x{image.shape[1]} image, {args.threads} thread(s); "
        f"whole image {t_whole:.1f}s"
    )
    print(
        f"{'tile':>6}{'halo':>6}{'overlap':>9}{'tiles':>7}{'max |dp|':>10}"
        f"{'labels differ':>15}{'time':>8}{'vs first':>10}"
    )
    base_time = None
    for tile in (int(v) for v in args.tiles.split(",")):
        for halo in (int(v) for v in args.halos.split(",")):
            layout, _ = plan_window(image.shape, tile, None, halo, multiple)
            overlap = tile - (layout.starts_x[1] - layout.starts_x[0])
            t = time.perf_counter()
            tiled = predict(
                model, image, tile_size=tile, halo=halo, device="cpu", return_probabilities=True
            )
            dt = time.perf_counter() - t
            base_time = base_time or dt
            dp = float(np.abs(tiled.probabilities - whole.probabilities).max())
            differ = float((tiled.labels != whole.labels).mean())
            print(
                f"{tile:>6}{halo:>6}{overlap:>9}{layout.num_tiles:>7}{dp:>10.4f}"
                f"{differ:>14.4%}{dt:>7.1f}s{dt / base_time:>9.2f}x"
            )


if __name__ == "__main__":
    main()
