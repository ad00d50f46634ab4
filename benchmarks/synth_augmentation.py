"""Benchmark: do pix2pix pairs help a U-Net trained on only 4 annotated ISBI images?

The "few annotations" scenario, without leaking other annotations:

1. a pix2pix cGAN is trained on 4 real ISBI pairs only (train 00-03);
2. N synthetic pairs are exported from random transforms (flips, rot90, zoom,
   elastic) of those 4 masks (``synthesis.export_pairs``);
3. two U-Nets with the same seed, settings and number of optimisation steps
   are trained: on the 4 real pairs alone, and on the 4 real + N synthetic pairs;
4. both are scored on the 4 held-out ISBI test images
   (``metrics.evaluate.evaluate_model``): membrane Dice, mean IoU.

Each arm is repeated for ``--seeds`` seeds; the script prints both Dice figures
and their difference, whichever way it comes out.

    python benchmarks/synth_augmentation.py --out bench_out/synth_augmentation

``--preset texture`` trains the texture variant of the generator instead of the
paper's pix2pix (see ``synthesis.trainer.PRESETS``); ``--gan-set KEY=VALUE``
changes single ``SynthConfig`` fields.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "sample_data" / "isbi2012"
VALUE_MAP = {0: 1, 255: 0}  # ISBI masks: membrane = 0 (black) -> class 1
CLASSES = ["cell interior", "membrane"]


def parse_settings(items: list[str]) -> dict:
    """``["fm_weight=0", "upsample=resize"]`` -> ``{"fm_weight": 0, "upsample": "resize"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--gan-set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def log_steps(every: int, label: str):
    """An ``on_event`` for ``drive``: a line on stderr every ``every`` training steps."""
    t0 = time.monotonic()

    def on_event(ev) -> None:
        if ev.kind == "step" and ev.step % every == 0:
            loss = ev.losses["l1"] if hasattr(ev, "losses") else ev.loss
            print(
                f"{label} step {ev.step}/{ev.total_steps} loss {loss:.3f} "
                f"{time.monotonic() - t0:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    return on_event


def train_unet(pairs, test, seed: int, steps: int, crop: int, batch: int, device: str, path):
    """A fresh U-Net trained for ``steps`` steps, saved to ``path``; its held-out scores."""
    from napari_segen.metrics.evaluate import evaluate_model, scores_to_metrics
    from napari_segen.models import load_model
    from napari_segen.training import TrainConfig, new_unet_spec, train_segmentation
    from napari_segen.utils.generators import drive

    spec = new_unet_spec(1, CLASSES, depth=4, base_channels=16)
    epochs = 10
    cfg = TrainConfig(
        epochs=epochs, batch_size=batch, crop_size=crop, samples_per_epoch=steps * batch // epochs,
        device=device, seed=seed, patience=None, lr=2e-3,
    )  # fmt: skip
    # No validation pairs: the last epoch's model is written to ``path``.
    gen = train_segmentation(pairs, [], path, start=spec, config=cfg, overwrite=True)
    drive(gen, log_steps(50, "  unet"))
    model = load_model(path)
    scores = evaluate_model(model, test, tile_size=512, device=device)
    m = scores_to_metrics(scores, CLASSES)
    return {"membrane_dice": m["foreground_dice"], "mean_iou": m["mean_iou"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/synth_augmentation")
    ap.add_argument(
        "--generator",
        default=None,
        help="reuse this generator instead of training one on the 4 pairs "
        "(leaks annotations if it saw more than those 4)",
    )
    ap.add_argument(
        "--preset", default="pix2pix", help="generator recipe: pix2pix (the paper's) or texture"
    )
    ap.add_argument(
        "--gan-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a SynthConfig field for the generator, e.g. --gan-set fm_weight=0 (repeatable)",
    )
    ap.add_argument("--gan-steps", type=int, default=900)
    ap.add_argument("--gan-time-limit", type=float, default=420.0)
    ap.add_argument("--n-synthetic", type=int, default=16)
    ap.add_argument("--synthetic-size", type=int, default=256)
    ap.add_argument("--unet-steps", type=int, default=200)
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_segen.data.datasets import pairs_from_folders
    from napari_segen.synthesis import (
        MaskTransformConfig,
        SynthConfig,
        export_pairs,
        load_generator,
        train_pix2pix,
    )
    from napari_segen.utils.generators import drive

    train_all = pairs_from_folders(ISBI / "train/images", ISBI / "train/masks", value_map=VALUE_MAP)
    real = train_all[:4]
    test = pairs_from_folders(ISBI / "test/images", ISBI / "test/masks", value_map=VALUE_MAP)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    if args.generator:
        model = load_generator(args.generator)
        gan_info = {
            "generator": args.generator,
            "trained_on": model.spec.provenance.get("train_images"),
        }
    else:
        settings = dict(
            steps=args.gan_steps, crop_size=128, ngf=32, ndf=32, device=args.device,
            sample_every=300, checkpoint_every=0, time_limit_s=args.gan_time_limit,
            evaluate=False,
        )  # fmt: skip
        cfg = SynthConfig.from_preset(args.preset, **{**settings, **parse_settings(args.gan_set)})
        print(f"training {args.preset} on {[p.name for p in real]}: {cfg}", file=sys.stderr)
        res = drive(
            train_pix2pix(real, out / f"{args.preset}-4pairs.safetensors", config=cfg,
                          class_names=CLASSES, overwrite=True), log_steps(100, args.preset),
        )  # fmt: skip
        model = res.model
        gan_info = {
            "generator": str(res.path),
            "preset": args.preset,
            "config": vars(cfg),
            "steps": res.steps,
            "trained_on": [p.name for p in real],
        }
    gan_s = time.monotonic() - t0
    syn_dir = out / "synthetic"
    s = args.synthetic_size
    export = export_pairs(
        model, [p.mask for p in real], syn_dir, args.n_synthetic, out_shape=(s, s),
        transform=MaskTransformConfig(), seed=0, device=args.device, overwrite=True,
    )  # fmt: skip
    synthetic = pairs_from_folders(export.images_dir, export.masks_dir)
    print(f"exported {len(synthetic)} synthetic pairs to {syn_dir}", file=sys.stderr)

    arms = {"4 real": real, f"4 real + {len(synthetic)} synthetic": real + synthetic}
    results: dict[str, list[dict]] = {name: [] for name in arms}
    for seed in range(args.seeds):
        for name, pairs in arms.items():
            print(f"U-Net '{name}', seed {seed}", file=sys.stderr)
            results[name].append(
                train_unet(pairs, test, seed, args.unet_steps, args.crop_size, args.batch_size,
                           args.device, out / f"unet-{len(pairs)}pairs-seed{seed}.safetensors")
            )  # fmt: skip
    total_s = time.monotonic() - t0

    print()
    print(
        f"ISBI 2012: U-Net (depth 4, width 16) for {args.unet_steps} steps of "
        f"{args.batch_size}x{args.crop_size}px crops, {args.seeds} seed(s); scored on the 4 "
        f"held-out test images. Generator ({args.preset}) trained on the same 4 pairs "
        f"({gan_s:.0f} s)."
    )
    print(f"{'training data':34s} {'membrane Dice':>20s} {'mean IoU':>10s}")
    summary = {}
    for name, rs in results.items():
        d = np.array([r["membrane_dice"] for r in rs])
        iou = np.array([r["mean_iou"] for r in rs])
        summary[name] = {
            "dice_mean": float(d.mean()),
            "dice_per_seed": d.tolist(),
            "iou_mean": float(iou.mean()),
        }
        per = ", ".join(f"{x:.4f}" for x in d)
        print(f"{name:34s} {d.mean():8.4f} ({per}) {iou.mean():10.4f}")
    base, aug = (summary[n]["dice_mean"] for n in arms)
    print(
        f"difference (synthetic-augmented - real only): {aug - base:+.4f} Dice "
        f"(ratio {aug / base:.3f})"
    )
    (out / "results.json").write_text(json.dumps({
        "config": vars(args), "gan": gan_info, "gan_seconds": round(gan_s, 1),
        "total_seconds": round(total_s, 1), "results": summary,
        "per_seed": results,
    }, indent=2))  # fmt: skip
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
