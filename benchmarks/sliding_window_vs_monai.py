"""Our sliding window against MONAI's ``sliding_window_inference`` (issue 11).

Same model (the bundled ISBI U-Net), same 2048x2048 in-memory image (16 ISBI
training slices tiled 4x4), same normalisation, tiles, overlap, batch and
Gaussian blending (sigma 0.125 of the tile), one CPU thread. Each run is a fresh
process (``--child``) so that one method's process-wide settings (our malloc
thresholds) cannot help the other; the methods alternate round by round.

A run segments the image end to end as a user would: normalise, slide, blend,
take the labels (ours: :func:`napari_segen.inference.predict`; MONAI:
``sliding_window_inference`` of the softmax, then ``argmax``), probabilities
included. It prints per method the median wall and CPU time, the throughput
ratio ours/MONAI (MONAI's median time over ours), and the largest probability
and mean probability difference from one whole-image pass (the module on the
whole image, computed once) and the share of labels that differ from it.

The row ``monai + our CPU settings`` gives MONAI the two CPU settings of
:mod:`napari_segen.inference.cpu_runtime` (malloc thresholds, channels-last
weights), to show what of the gain is those settings and what is the rest.

MONAI is a benchmark-only dependency: ``pip install -e .[benchmarks]``.

    python benchmarks/sliding_window_vs_monai.py [--rounds 3] [--halo 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "sample_data" / "isbi2012" / "train" / "images"
METHODS = {
    "ours": "napari-segen predict",
    "monai": "MONAI sliding_window_inference",
    "monai-tuned": "MONAI + our CPU settings",
}


def mosaic(size: int) -> np.ndarray:
    """A ``size``-square uint8 image tiled with the ISBI training slices (512x512 each)."""
    from napari_segen.data.files import list_images
    from napari_segen.data.image_io import read_image

    slices = [read_image(p) for p in list_images(TRAIN)]
    n = size // slices[0].shape[0]
    rows = [np.hstack([slices[(r * n + c) % len(slices)] for c in range(n)]) for r in range(n)]
    return np.vstack(rows)[:size, :size]


def network_input(model, image: np.ndarray):
    import torch

    from napari_segen.data.normalize import normalize_image, to_channels_first

    chw = normalize_image(
        to_channels_first(image, model.spec.in_channels, rgb=False),
        model.spec.normalization,
        source_dtype=image.dtype,
    )
    return torch.from_numpy(np.ascontiguousarray(chw))


def child(args) -> None:
    """One run in this process: save the probabilities, print a JSON line of times."""
    import torch

    from napari_segen.inference import predict
    from napari_segen.inference.cpu_runtime import fewer_page_faults, prefer_channels_last
    from napari_segen.models import default_model_path, load_model

    torch.set_num_threads(1)
    model = load_model(default_model_path(), device="cpu")
    image = mosaic(args.size)
    overlap = args.tile - args.stride
    if args.child == "whole":  # the reference: the module on the whole image, no tiling
        with torch.inference_mode():
            x = network_input(model, image)[None]
            probs = torch.softmax(model.module.eval()(x), 1)[0].numpy()
        np.save(args.probs, probs)
        return
    if args.child == "ours":

        def run(img):
            out = predict(
                model,
                img,
                tile_size=args.tile,
                overlap=overlap,
                halo=args.halo,
                batch_size=args.batch,
                device="cpu",
                return_probabilities=True,
            )
            return out.labels, out.probabilities

    else:
        from monai.inferers import sliding_window_inference

        module = model.module.eval()
        tuned = args.child == "monai-tuned"
        if tuned:
            prefer_channels_last(module, torch.device("cpu"))

        def predictor(batch):
            return torch.softmax(module(batch), 1)

        def run(img):
            with torch.inference_mode(), fewer_page_faults() if tuned else nullcontext():
                p = sliding_window_inference(
                    network_input(model, img)[None],
                    roi_size=(args.tile, args.tile),
                    sw_batch_size=args.batch,
                    predictor=predictor,
                    overlap=overlap / args.tile,
                    mode="gaussian",
                    sigma_scale=0.125,
                )[0]
                return p.argmax(0).to(torch.uint8).numpy(), p.numpy()

    run(image[: 2 * args.tile, : 2 * args.tile])  # warm-up: first-call set-up is not timed
    cpu0, t0 = time.process_time(), time.perf_counter()
    labels, probs = run(image)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    np.save(args.probs, probs)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(json.dumps({"wall": wall, "cpu": cpu, "minor_faults": faults}))


def spawn(method: str, probs: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--probs", str(probs)]
    cmd += ["--size", str(args.size), "--tile", str(args.tile), "--stride", str(args.stride)]
    cmd += ["--batch", str(args.batch), "--halo", str(args.halo)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def compare(args, methods: list[str], num_tiles: int, work: Path) -> None:
    """Run the methods in interleaved rounds and print the table."""
    overlap = args.tile - args.stride
    spawn("whole", work / "whole.npy", args)
    whole = np.load(work / "whole.npy")
    whole_labels = whole.argmax(0)
    print(
        f"{args.size}x{args.size} ISBI mosaic, bundled U-Net, tile {args.tile}, overlap "
        f"{overlap} (MONAI overlap={overlap / args.tile:.4f}), our halo {args.halo}, "
        f"batch {args.batch}, Gaussian sigma 0.125, {num_tiles} tiles, 1 CPU thread, "
        f"{args.rounds} interleaved rounds, a fresh process per run"
    )
    times: dict[str, list[dict]] = {m: [] for m in methods}
    agree: dict[str, tuple[float, float, float]] = {}
    for r in range(args.rounds):
        for m in methods if r % 2 == 0 else methods[::-1]:
            probs = work / f"{m}.npy"
            times[m].append(spawn(m, probs, args))
            p = np.load(probs)
            dp = np.abs(p - whole)
            differ = float((p.argmax(0) != whole_labels).mean())
            agree[m] = (float(dp.max()), float(dp.mean()), differ)
            print(f"  round {r + 1} {m:<12} {times[m][-1]['wall']:6.1f} s", flush=True)
    med = {m: statistics.median(t["wall"] for t in times[m]) for m in methods}
    cpu = {m: statistics.median(t["cpu"] for t in times[m]) for m in methods}
    ref = "monai" if "monai" in methods else methods[0]
    print(
        f"{'method':<32}{'wall':>8}{'CPU':>8}{'Mpx/s':>7}{'vs MONAI wall':>15}"
        f"{'CPU':>7}{'max |dp|':>10}{'mean |dp|':>11}{'labels differ':>15}"
    )
    for m in methods:
        dp, mean_dp, differ = agree[m]
        print(
            f"{METHODS[m]:<32}{med[m]:>7.1f}s{cpu[m]:>7.1f}s{args.size**2 / 1e6 / med[m]:>7.2f}"
            f"{med[ref] / med[m]:>14.2f}x{cpu[ref] / cpu[m]:>6.2f}x"
            f"{dp:>10.4f}{mean_dp:>11.2e}{differ:>14.4%}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--halo", type=int, default=16, help="our halo (MONAI has none)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probs", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    from napari_segen.inference.predict import size_multiple
    from napari_segen.inference.sliding_window import plan_window
    from napari_segen.models import default_model_path, load_model

    # our tiles for this halo; MONAI is given the same overlap (so the same tiles)
    multiple = size_multiple(load_model(default_model_path()))
    layout, _ = plan_window((args.size, args.size), args.tile, None, args.halo, multiple)
    args.stride = layout.starts_x[1] - layout.starts_x[0]
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory(prefix="segen-monai-") as tmp:
        compare(args, methods, layout.num_tiles, Path(tmp))


if __name__ == "__main__":
    main()
