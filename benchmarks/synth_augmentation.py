"""Benchmark: do synthetic pairs help a U-Net trained on only 4 annotated ISBI images?

The "few annotations" scenario, without leaking other annotations:

1. each generator recipe (``--presets``: ``texture`` = resize up-sampling, noise
   maps, 2-scale PatchGAN + feature matching; ``pix2pix`` = the paper's) is
   trained on the 4 real ISBI pairs only (train 00-03);
2. ``--n-synthetic`` pairs are exported per generator from random transforms of
   those 4 masks, with cut-and-paste and multi-scale crops
   (``synthesis.export_pairs``);
3. a filter model (a U-Net trained on the 4 real pairs, seed 0 of the
   real-only arm) scores each synthetic pair; pairs it segments with membrane
   Dice below ``--min-dice`` are dropped (``synthesis.filter``);
4. U-Nets with the same settings and steps are trained per seed on:
   real only; the default recipe (texture, filtered, synthetic share of the
   crops capped at ``--share``); and the ablations: no filter, uncapped share
   (synthetic pairs listed as they are), the product's "pretrain" mode (half
   the steps on the filtered synthetic pairs, then half on the real ones), and
   the paper's pix2pix;
5. each is scored on the 4 held-out ISBI test images (20-23): membrane Dice,
   mean and spread over ``--seeds`` seeds, and the gain of each arm over real only.

    python benchmarks/synth_augmentation.py --out bench_out/synth_augmentation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _settings import parse_settings  # benchmarks/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "sample_data" / "isbi2012"
VALUE_MAP = {0: 1, 255: 0}  # ISBI masks: membrane = 0 (black) -> class 1
CLASSES = ["cell interior", "membrane"]


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


def train_unet(
    pairs, test, seed: int, steps: int, crop: int, batch: int, device: str, path, start=None
):
    """A U-Net (fresh, or ``start``) trained for ``steps`` steps, saved to ``path``; its
    held-out scores."""
    from napari_segen.training import TrainConfig, new_unet_spec, train_segmentation
    from napari_segen.utils.generators import drive

    spec = start if start is not None else new_unet_spec(1, CLASSES, depth=4, base_channels=16)
    epochs = 10
    cfg = TrainConfig(
        epochs=epochs, batch_size=batch, crop_size=crop, samples_per_epoch=steps * batch // epochs,
        device=device, seed=seed, patience=None, lr=2e-3,
    )  # fmt: skip
    # No validation pairs: the last epoch's model is written to ``path``.
    gen = train_segmentation(pairs, [], path, start=spec, config=cfg, overwrite=True)
    drive(gen, log_steps(50, "  unet"))
    return score_unet(path, test, device)


def score_unet(path, test, device: str) -> dict:
    """Membrane Dice and mean IoU of the U-Net in ``path`` on the held-out pairs."""
    from napari_segen.metrics.evaluate import evaluate_model, scores_to_metrics
    from napari_segen.models import load_model

    model = load_model(path)
    scores = evaluate_model(model, test, tile_size=512, device=device)
    m = scores_to_metrics(scores, CLASSES)
    return {"membrane_dice": m["foreground_dice"], "mean_iou": m["mean_iou"]}


def train_generator(preset: str, real, out: Path, args) -> tuple:
    """A generator of ``preset`` trained on the ``real`` pairs (or loaded when already there)."""
    from napari_segen.synthesis import SynthConfig, load_generator, train_pix2pix
    from napari_segen.utils.generators import drive

    path = out / f"{preset}-4pairs.safetensors"
    if path.exists() and not args.retrain:
        return load_generator(path), {"generator": str(path), "reused": True}
    settings = dict(
        steps=args.gan_steps, crop_size=128, ngf=32, ndf=32, device=args.device,
        sample_every=300, checkpoint_every=0, time_limit_s=args.gan_time_limit,
        evaluate=False,
    )  # fmt: skip
    cfg = SynthConfig.from_preset(
        preset, **{**settings, **parse_settings(args.gan_set, "--gan-set")}
    )
    print(f"training {preset} on {[p.name for p in real]}: {cfg}", file=sys.stderr)
    t0 = time.monotonic()
    res = drive(
        train_pix2pix(real, path, config=cfg, class_names=CLASSES, overwrite=True),
        log_steps(100, preset),
    )
    info = {"generator": str(path), "steps": res.steps, "seconds": time.monotonic() - t0}
    return res.model, info


def summarise(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{v.mean():.4f} +/- {v.std():.4f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/synth_augmentation")
    ap.add_argument("--presets", default="texture,pix2pix",
                    help="generator recipes; the first is the default recipe's")  # fmt: skip
    ap.add_argument(
        "--gan-set", action="append", default=[], metavar="KEY=VALUE",
        help="a SynthConfig field for the generators, e.g. --gan-set fm_weight=0 (repeatable)",
    )  # fmt: skip
    ap.add_argument("--retrain", action="store_true", help="train generators already in --out")
    ap.add_argument("--gan-steps", type=int, default=1200)
    ap.add_argument("--gan-time-limit", type=float, default=420.0)
    ap.add_argument("--n-synthetic", type=int, default=16)
    ap.add_argument("--synthetic-size", type=int, default=256)
    ap.add_argument("--min-dice", type=float, default=0.7, help="the filter's threshold")
    ap.add_argument("--share", type=float, default=1 / 3, help="cap on the synthetic crop share")
    ap.add_argument("--unet-steps", type=int, default=200)
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--reuse-unets",
        action="store_true",
        help="score U-Nets already in --out instead of training them again (only with the "
        "same settings and --threads 1, where training is deterministic: e.g. more seeds for "
        "an earlier run, or its real-only control copied into a new --out)",
    )
    ap.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms besides real only (default: all): default, nofilter, "
        "uncapped, pretrain, and the other presets' names",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_segen.data.datasets import pairs_from_folders
    from napari_segen.data.mixing import mix_sources
    from napari_segen.models import load_model
    from napari_segen.synthesis import MaskTransformConfig, export_pairs
    from napari_segen.synthesis.filter import filter_pairs

    train_all = pairs_from_folders(ISBI / "train/images", ISBI / "train/masks", value_map=VALUE_MAP)
    real = train_all[:4]
    test = pairs_from_folders(ISBI / "test/images", ISBI / "test/masks", value_map=VALUE_MAP)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    presets = args.presets.split(",")
    default = presets[0]

    def unet(pairs, seed: int, name: str, steps: int | None = None, start=None) -> dict:
        path = out / f"unet-{name}-seed{seed}.safetensors"
        if args.reuse_unets and path.exists():
            # one CPU thread trains deterministically: the same U-Net, scored again
            return score_unet(path, test, args.device)
        return train_unet(pairs, test, seed, steps or args.unet_steps, args.crop_size,
                          args.batch_size, args.device, path, start)  # fmt: skip

    def pretrained_then_real(synthetic_pairs, seed: int, name: str) -> dict:
        """The product's "pretrain" mode at the same total steps: half on the synthetic
        pairs, then half on the real ones from there."""
        first = args.unet_steps // 2
        unet(synthetic_pairs, seed, f"{name}-stage1", first)
        stage1 = load_model(out / f"unet-{name}-stage1-seed{seed}.safetensors")
        return unet(real, seed, name, args.unet_steps - first, stage1)

    # Real only first: its seed-0 model is the filter model (it saw only the 4 real pairs).
    results: dict[str, list[float]] = {"real only": []}
    for seed in range(args.seeds):
        results["real only"].append(unet(real, seed, "real")["membrane_dice"])
        print(f"real only, seed {seed}: {results['real only'][-1]:.4f}", file=sys.stderr)
    filter_model = load_model(out / "unet-real-seed0.safetensors")

    synthetic, filtered, gan_info = {}, {}, {}
    transform = MaskTransformConfig(crop_p=0.3, cutpaste_p=0.5)
    for preset in presets:
        model, gan_info[preset] = train_generator(preset, real, out, args)
        s = args.synthetic_size
        export = export_pairs(
            model, [p.mask for p in real], out / f"synthetic-{preset}", args.n_synthetic,
            out_shape=(s, s), transform=transform, seed=0, device=args.device, overwrite=True,
        )  # fmt: skip
        synthetic[preset] = pairs_from_folders(export.images_dir, export.masks_dir)
        scored = filter_pairs(
            filter_model, [(p.name, p.image, p.mask) for p in synthetic[preset]], args.min_dice
        )
        keep = {sc.name for sc in scored.kept}
        filtered[preset] = [p for p in synthetic[preset] if p.name in keep]
        gan_info[preset]["filter"] = scored.summary()
        gan_info[preset]["dice"] = [round(sc.dice, 4) for sc in scored.scores]
        print(f"{preset}: {scored.summary()}", file=sys.stderr)

    def capped(extra):
        return mix_sources(real, extra, args.share, at_most=True)

    every_arm = {
        "default": (f"default: {default}, filtered, share <= {args.share:.2f}",
                    capped(filtered[default])),
        "nofilter": (f"no filter ({default}, capped)", capped(synthetic[default])),
        "uncapped": (f"uncapped ({default}, filtered)", real + filtered[default]),
        "pretrain": (f"pre-train on {default} (filtered), then real",
                     ("pretrain", filtered[default])),
    }  # fmt: skip
    for preset in presets[1:]:
        every_arm[preset] = (f"{preset}, filtered, capped", capped(filtered[preset]))
    wanted = args.arms.split(",") if args.arms else list(every_arm)
    unknown = set(wanted) - set(every_arm)
    if unknown:
        ap.error(f"unknown arm(s) {', '.join(sorted(unknown))}; choose from {', '.join(every_arm)}")
    arms = dict(every_arm[k] for k in wanted)
    real_ids = {id(r) for r in real}
    shares = {}  # the synthetic share of the annotated pixels = of the training crops
    for name, pairs in arms.items():
        results[name] = []
        if isinstance(pairs, tuple):  # pre-training: half the steps are synthetic
            shares[name] = 0.5
            continue
        synth_px = sum(int(p.mask.size) for p in pairs if id(p) not in real_ids)
        shares[name] = synth_px / sum(int(p.mask.size) for p in pairs)
    for seed in range(args.seeds):
        for i, (name, pairs) in enumerate(arms.items()):
            if isinstance(pairs, tuple):
                r = pretrained_then_real(pairs[1], seed, f"arm{i}")
            else:
                r = unet(pairs, seed, f"arm{i}")
            results[name].append(r["membrane_dice"])
            print(f"{name}, seed {seed}: {results[name][-1]:.4f}", file=sys.stderr)
    total_s = time.monotonic() - t0

    print()
    print(
        f"ISBI 2012: U-Net (depth 4, width 16), {args.unet_steps} steps of {args.batch_size}x"
        f"{args.crop_size}px crops, seeds 0-{args.seeds - 1}; membrane Dice on the 4 held-out "
        f"test images. Generators trained on the same 4 pairs; {args.n_synthetic} synthetic "
        f"{args.synthetic_size}px pairs each; filter: Dice >= {args.min_dice} by the seed-0 "
        f"real-only U-Net."
    )
    for preset in presets:
        print(f"  {preset}: {gan_info[preset]['filter']}")
    base = np.asarray(results["real only"])
    print(f"{'training data':44s} {'synth. crops':>12s} {'Dice mean +/- std':>18s} "
          f"{'gain':>8s}   per seed")  # fmt: skip
    for name, v in results.items():
        share = shares.get(name, 0.0)
        gain = np.mean(v) - base.mean()
        per = ", ".join(f"{x:.4f}" for x in v)
        print(f"{name:44s} {share:>12.0%} {summarise(v):>18s} {gain:>+8.4f}   {per}")
    d = list(results)[1]  # the first arm run (the default recipe unless --arms)
    # the spread of the two arms compared (an ablation's own instability is not the default's)
    spread = max(np.std(results[d]), base.std())
    verdict = "helps" if np.mean(results[d]) - base.mean() > spread else "does NOT help"
    print(f"largest spread of real only and {d}: {spread:.4f}: it {verdict} beyond the spread")
    paired = np.asarray(results[d]) - base
    print(
        f"paired by seed: {paired.mean():+.4f} +/- {paired.std():.4f}, better on "
        f"{int((paired > 0).sum())} of {len(paired)} seeds; largest spread of all arms "
        f"{max(np.std(v) for v in results.values()):.4f}"
    )
    (out / "results.json").write_text(json.dumps({
        "config": vars(args), "gan": gan_info, "total_seconds": round(total_s, 1),
        "results": results, "synthetic_crop_share": shares,
    }, indent=2, default=str))  # fmt: skip
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
