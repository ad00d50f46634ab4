"""Speed of tiled inference against a naive tile loop, measured in the same run.

Baseline ("naive"): one tile per forward pass under ``torch.no_grad``, the way a
first implementation usually looks. Compared with napari-segen's
``predict`` (batched tiles, ``torch.inference_mode``, blending included) at
batch sizes 1 and 4, and with a single whole-image forward pass (no tiling).
Runs interleaved rounds and reports medians, since shared machines are noisy.

    python benchmarks/inference_speed.py [--size 1024] [--rounds 5] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from napari_segen.data.normalize import normalize_image, to_channels_first
from napari_segen.inference import predict
from napari_segen.inference.tiling import plan_tiles
from napari_segen.models import default_model_path, load_model
from napari_segen.utils.devices import resolve_device


def naive_tiled(model, image, tile, dev):
    x = torch.from_numpy(normalize_image(to_channels_first(image, 1), model.spec.normalization))
    h, w = image.shape
    layout = plan_tiles((h, w), tile, tile // 4, tile // 16, 16)
    out = torch.zeros((model.spec.num_classes, h, w))
    cnt = torch.zeros((h, w))
    th, tw = layout.tile
    with torch.no_grad():
        for y, xx in layout.tiles():
            p = torch.softmax(model.module(x[None, :, y : y + th, xx : xx + tw].to(dev)), 1)[
                0
            ].cpu()
            out[:, y : y + th, xx : xx + tw] += p
            cnt[y : y + th, xx : xx + tw] += 1
    return (out / cnt).argmax(0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    dev = resolve_device(args.device)
    model = load_model(str(default_model_path()), device=dev)
    image = np.random.default_rng(0).integers(0, 255, (args.size, args.size), np.uint8)
    runs = {
        "naive (1 tile/pass, no_grad)": lambda: naive_tiled(model, image, args.tile, dev),
        "predict batch 1": lambda: predict(
            model, image, tile_size=args.tile, batch_size=1, device=dev
        ),
        "predict batch 4": lambda: predict(
            model, image, tile_size=args.tile, batch_size=4, device=dev
        ),
        "whole image, no tiling": lambda: predict(model, image, tile_size=None, device=dev),
    }
    for fn in runs.values():  # warm-up
        fn()
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["naive (1 tile/pass, no_grad)"])
    size = f"{args.size}x{args.size}"
    print(f"{size} image, tile {args.tile}, device {dev}, {args.rounds} rounds (median)")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"  {k:<32} {med * 1000:9.1f} ms   speed vs naive: {base / med:5.2f}x")


if __name__ == "__main__":
    main()
