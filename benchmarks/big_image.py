"""Peak memory of block-wise prediction on images bigger than memory (issue 11).

Makes zarr images of 4096^2, 8192^2 and 16384^2 pixels by tiling the ISBI 2012
slices (written chunk by chunk, never whole in memory), then segments each one
block by block (:func:`napari_segen.inference.blockwise.predict_blocks`) in a
fresh subprocess that reports its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``)
and wall time. Baselines in the same run: a subprocess that only imports and
loads the model (the floor), and in-memory ``predict`` at 4096^2.

The model is a small random U-Net (depth 2, base width ``--width``, default 8): memory behaviour
depends on block, tile and image sizes, not on the weights, and the small model
keeps the run within 2 shared CPU cores.

    python benchmarks/big_image.py [--sizes 4096 8192 16384] [--block-size 2048]

The speed comparison with MONAI's ``sliding_window_inference`` (in memory,
2048^2, the bundled model) is ``benchmarks/sliding_window_vs_monai.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_segen.data.conventions import DEFAULT_TILE_SIZE

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "sample_data" / "isbi2012"


def make_input(path: Path, size: int) -> None:
    """A ``size``-square uint8 zarr array tiled with the ISBI slices (512x512 each)."""
    import zarr

    from napari_segen.data.image_io import read_image

    slices = [read_image(f) for f in sorted((ISBI / "train" / "images").iterdir())]
    tile = slices[0].shape[0]
    z = zarr.open_array(
        str(path), mode="w", shape=(size, size), chunks=(tile, tile), dtype=np.uint8
    )
    k = 0
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            z[y : y + tile, x : x + tile] = slices[k % len(slices)][: size - y, : size - x]
            k += 1


def make_model(path: Path, width: int) -> Path:
    import torch

    from napari_segen.models import ModelSpec, build_model, save_model

    torch.manual_seed(0)
    spec = ModelSpec(
        architecture="unet",
        arch_kwargs={"in_channels": 1, "num_classes": 2, "depth": 2, "base_channels": width},
        in_channels=1,
        class_names=["membrane", "cell"],
    )
    module = build_model("unet", **spec.arch_kwargs).eval()
    return save_model(path, module, spec, overwrite=True)


def child(args) -> None:
    """One measurement, in its own process: print a JSON line with peak RSS and time."""
    import torch

    from napari_segen.inference import predict
    from napari_segen.inference.blockwise import BlockSettings, predict_blocks
    from napari_segen.models import load_model

    torch.set_num_threads(2)
    model = load_model(args.model, device="cpu")
    start = time.perf_counter()
    if args.child == "blockwise":
        settings = BlockSettings(block_size=args.block_size, tile_size=args.tile_size)
        predict_blocks(model, args.input, args.out, settings=settings, device="cpu")
    elif args.child == "inmemory":
        import zarr

        image = zarr.open_array(args.input, mode="r")[...]
        predict(model, image, tile_size=args.tile_size, device="cpu")
    seconds = time.perf_counter() - start
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss_kb / 1024}))


def measure(kind: str, model: Path, inp: Path | None, out: Path | None, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--model", str(model)]
    cmd += ["--block-size", str(args.block_size), "--tile-size", str(args.tile_size)]
    if inp is not None:
        cmd += ["--input", str(inp)]
    if out is not None:
        cmd += ["--out", str(out)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument(
        "--tile-size", type=int, default=DEFAULT_TILE_SIZE, help="tile edge (default: predict's)"
    )
    parser.add_argument("--width", type=int, default=8, help="U-Net base width (default: 8)")
    parser.add_argument("--workdir", default=None, help="where inputs and outputs go (temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="segen-big-"))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work / "small-unet.safetensors", args.width)
    print(
        f"block {args.block_size}, tile {args.tile_size}, small random U-Net (depth 2, "
        f"width {args.width}), CPU, one fresh process per row; work dir {work}"
    )
    floor = measure("noop", model, None, None, args)
    print(f"  {'imports + model only':<34} peak RSS {floor['peak_rss_mb']:8.0f} MB")
    rows = {}
    for size in args.sizes:
        inp = work / f"in_{size}.zarr"
        if not inp.exists():
            make_input(inp, size)
        if size == min(args.sizes):
            r = measure("inmemory", model, inp, None, args)
            print(
                f"  {f'in-memory predict {size}^2':<34} peak RSS {r['peak_rss_mb']:8.0f} MB"
                f"  {r['seconds']:7.1f} s"
            )
            sys.stdout.flush()
        out = work / f"out_{size}.zarr"
        r = measure("blockwise", model, inp, out, args)
        rows[size] = r
        mpx = size * size / 1e6
        print(
            f"  {f'block-wise {size}^2':<34} peak RSS {r['peak_rss_mb']:8.0f} MB"
            f"  {r['seconds']:7.1f} s  ({mpx / r['seconds']:.2f} Mpx/s)"
        )
        sys.stdout.flush()
    lo, hi = min(rows), max(rows)
    ratio = rows[hi]["peak_rss_mb"] / rows[lo]["peak_rss_mb"]
    print(f"peak RSS ratio {hi}^2 / {lo}^2 (block-wise): {ratio:.2f}x")


if __name__ == "__main__":
    main()
