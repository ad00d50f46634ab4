"""Benchmark: how realistic are pix2pix images of ISBI 2012 membranes?

Trains the pix2pix cGAN on the 20 ISBI training pairs (CPU-sized: 128 px crops,
32-wide networks), then generates an image for each of the 4 held-out masks and
scores it against the real held-out image:

* SSIM and PSNR, paired (``napari_segen.metrics.image_quality.paired_quality``);
* FID/KID between the generated and real sets
  (``napari_segen.metrics.fid.set_distance``). Without the Inception weights
  file this is the labelled U-Net feature distance, not FID. Set distances use
  the 16 256x256 quarter crops of the 4 held-out images (4 images are too few).

Two baselines are measured in the same run, on the same masks: (a) the same
generator untrained, (b) a trivial mapping painting each class with its mean
training intensity. A reference distance real-train vs real-held-out crops shows
the floor of the set distance. A montage of 256x256 crops (mask | real |
pix2pix | class mean | untrained) is written for looking at.

    python benchmarks/synth_quality.py --out bench_out/synth_quality \
        --montage docs/synth_isbi_montage.png

``--preset texture`` trains the texture variant instead (resize-then-convolve
up-sampling, decoder noise, 2-scale discriminator, feature matching; see
``synthesis.trainer.PRESETS``), ``--set KEY=VALUE`` changes single
``SynthConfig`` fields (ablations), and ``--compare FILE`` scores generators
trained before (e.g. the other preset's) in the same table and montage.
Generated images use seed ``--seed + i`` for held-out mask ``i`` (it picks a
noise generator's noise).
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


def quarters(images: list[np.ndarray]) -> list[np.ndarray]:
    """The four 256x256 quarter crops of each 512x512 image (the core's ``half_crops``)."""
    from napari_segen.synthesis.calibrate import half_crops

    return half_crops(images)


def class_mean_images(train_pairs, test_pairs, model) -> list[np.ndarray]:
    """Baseline (b): each class painted with its mean training intensity, [0, 1] scale
    (the core's ``class_mean_painting``)."""
    from napari_segen.synthesis.calibrate import class_mean_painting

    return class_mean_painting(train_pairs, [p.mask for p in test_pairs], model)


def _bench_row(scores: dict) -> dict:
    """The core's scores without its ``distance`` alias (the table names FID or features)."""
    return {k: v for k, v in scores.items() if k != "distance"}


def score(reals, fakes, real_crops_train, device) -> dict:
    from napari_segen.synthesis.calibrate import score_images

    return _bench_row(score_images(reals, fakes, device=device))


def montage(masks, columns, path: Path, size: int = 256) -> None:
    """Rows: held-out images; columns: mask, then ``columns`` (real | generated | ... )."""
    from PIL import Image

    rows = []
    for i, m in enumerate(masks):
        h, w = m.shape
        y, x = (h - size) // 2, (w - size) // 2
        cells = [(1 - m[y : y + size, x : x + size]).astype(np.float32)]  # membrane dark
        cells += [c[i][y : y + size, x : x + size] for c in columns]
        cells = [np.clip(c * 255, 0, 255).astype(np.uint8) for c in cells]
        sep = np.full((size, 4), 255, np.uint8)
        row = cells[0]
        for c in cells[1:]:
            row = np.concatenate([row, sep, c], axis=1)
        rows.append(row)
        rows.append(np.full((4, row.shape[1]), 255, np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows[:-1], axis=0)).save(path)


def calibrate(args, model, train, dev) -> dict:
    """Score the noise strengths on the last ``args.calibrate`` training pairs against the
    class-mean painting (means from the other training pairs) and pick one (see --calibrate).

    The scores and the rule are the core's
    (:func:`napari_segen.synthesis.calibrate.iter_calibrate_noise_strength`)."""
    from napari_segen.synthesis.calibrate import iter_calibrate_noise_strength
    from napari_segen.utils.generators import drive

    fit, held = train[: -args.calibrate], train[-args.calibrate :]
    strengths = sorted({1.0, *args.noise_strengths}, reverse=True)
    result = drive(
        iter_calibrate_noise_strength(
            model, fit, held, strengths=strengths, device=dev, seed=args.seed + 100
        )
    )
    painted = _bench_row(result.painted)
    rows = {s: _bench_row(result.rows[s]) for s in strengths}
    key = "fid" if painted["fid"] is not None else "feature_distance"
    chosen, why = result.chosen, result.reason
    names = [p.name for p in held]
    print(f"calibration on {', '.join(names)} ({key}):")
    print(f"  class-mean painting  SSIM {painted['ssim']:.4f}  {painted[key]:.4f}")
    for strength, r in rows.items():
        print(f"  noise x{strength:<5g}         SSIM {r['ssim']:.4f}  {r[key]:.4f}")
    return {
        "slices": names, "chosen": chosen, "why": why, "painted": painted,
        "rows": {str(k): v for k, v in rows.items()},
    }  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/synth_quality", help="folder for the run's files")
    ap.add_argument(
        "--montage",
        default=None,
        help="montage file (default: docs/synth_isbi_montage.png, or "
        "docs/synth_isbi_montage_<preset>.png for another preset)",
    )
    ap.add_argument(
        "--preset", default="pix2pix", help="training recipe: pix2pix (the paper's) or texture"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a SynthConfig field, e.g. --set fm_weight=0 (repeatable)",
    )
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="FILE",
        help="also score this generator file (trained before) in the same table",
    )
    ap.add_argument(
        "--generator",
        default=None,
        metavar="FILE",
        help="score this generator (e.g. the bundled one) instead of training one; "
        "--preset then only names it",
    )
    ap.add_argument(
        "--noise-strengths",
        type=lambda text: [float(v) for v in text.split(",")],
        default=[],
        metavar="S,S,...",
        help="also score the generator with its noise maps scaled by each S (0 = its "
        "noise-free drawing): the texture/SSIM trade-off of one generator",
    )
    ap.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="N",
        help="choose the noise strength (among 1 and --noise-strengths) on the last N ISBI "
        "training pairs, which the generator must not have seen (train it on the others), by "
        "the core's rule (the widest margin over the class-mean painting on SSIM and "
        "features); the held-out table then names the chosen row. 0: no calibration",
    )
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--width", type=int, default=32, help="ngf and ndf")
    ap.add_argument("--time-limit", type=float, default=780.0, help="training seconds at most")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest on a busy 2-core machine)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.montage is None:
        suffix = "" if args.preset == "pix2pix" else f"_{args.preset}"
        args.montage = f"docs/synth_isbi_montage{suffix}.png"

    from napari_segen.data.datasets import pairs_from_folders
    from napari_segen.models import build_model
    from napari_segen.models.model_file import LoadedModel
    from napari_segen.synthesis.calibrate import recommended_noise_strength
    from napari_segen.synthesis.generate import generate_tensor, load_generator, to_unit
    from napari_segen.synthesis.quality import real_to_unit
    from napari_segen.synthesis.trainer import SynthConfig, _init_weights, train_pix2pix
    from napari_segen.utils.generators import drive

    train = pairs_from_folders(ISBI / "train/images", ISBI / "train/masks", value_map=VALUE_MAP)
    test = pairs_from_folders(ISBI / "test/images", ISBI / "test/masks", value_map=VALUE_MAP)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen_path = out / f"isbi-{args.preset}.safetensors"
    cfg = SynthConfig.from_preset(
        args.preset,
        **{
            **dict(
                steps=args.steps, crop_size=args.crop_size, ngf=args.width, ndf=args.width,
                device=args.device, seed=args.seed, sample_every=200, checkpoint_every=400,
                time_limit_s=args.time_limit, evaluate=False,
            ),
            **parse_settings(args.set),
        },
    )  # fmt: skip
    if args.generator:
        model = load_generator(args.generator)
        gen_path, steps, history, train_s = Path(args.generator), "?", [], 0.0
        steps = model.spec.provenance.get("steps", "?")
    else:
        print(f"training {args.preset} on {len(train)} ISBI pairs: {cfg}", file=sys.stderr)
        t0 = time.monotonic()
        gen = train_pix2pix(
            train, gen_path, config=cfg, class_names=["cell interior", "membrane"], overwrite=True,
            provenance={"benchmark": "benchmarks/synth_quality.py"},
        )  # fmt: skip

        def log_steps(ev) -> None:
            if ev.kind == "step" and ev.step % 100 == 0:
                el = time.monotonic() - t0
                print(
                    f"step {ev.step}/{ev.total_steps}  l1 {ev.losses['l1']:.3f}  "
                    f"d {ev.losses['d']:.3f}  {el:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )

        result = drive(gen, log_steps)
        train_s = time.monotonic() - t0
        model, steps, history = result.model, result.steps, result.history
    dev = args.device

    # baseline (a): the same architecture, untrained (same initialisation)
    torch.manual_seed(args.seed)
    untrained_mod = build_model(model.spec.architecture, **model.spec.arch_kwargs)
    _init_weights(untrained_mod)
    untrained = LoadedModel(untrained_mod.eval(), model.spec)

    reals = [real_to_unit(p.image, model) for p in test]
    real_train = [real_to_unit(p.image, model) for p in train]

    def gen_all(m, tile=None, strength=1.0):
        return [
            to_unit(generate_tensor(m, p.mask, device=dev, tile_size=tile, seed=args.seed + i,
                                    noise_strength=strength))
            for i, p in enumerate(test)
        ]  # fmt: skip

    calibration = calibrate(args, model, train, dev) if args.calibrate else None
    main_name = f"{args.preset} (whole image)"
    fakes = {
        main_name: gen_all(model),
        f"{args.preset} (tiles of {args.crop_size * 2})": gen_all(model, args.crop_size * 2),
    }
    for strength in args.noise_strengths:
        fakes[f"{args.preset} (noise x{strength:g})"] = gen_all(model, strength=strength)
    recorded = None  # the strength calibrated when the generator was trained, if any
    if "noise_calibration" in model.spec.provenance:
        recorded = f"{args.preset} (its calibrated x{recommended_noise_strength(model):g})"
        fakes[recorded] = gen_all(model, strength=recommended_noise_strength(model))
    compared = []
    for path in args.compare:
        name = f"{Path(path).stem} (file)"
        fakes[name] = gen_all(load_generator(path))
        compared.append(name)
    fakes["baseline: class-mean intensity"] = class_mean_images(train, test, model)
    fakes["baseline: untrained generator"] = gen_all(untrained)
    scores = {name: score(reals, f, None, dev) for name, f in fakes.items()}
    from napari_segen.metrics.fid import set_distance

    ref = set_distance(quarters(real_train[:4]), quarters(reals), device=dev, data_range=1.0)
    reference = {
        "feature": ref.get("feature"), "fid": ref.get("fid"),
        "feature_distance": ref.get("feature_distance"),
    }  # fmt: skip
    shown = recorded or main_name  # the montage shows the calibrated strength if there is one
    if calibration is not None and calibration["chosen"] != 1.0:
        shown = f"{args.preset} (noise x{calibration['chosen']:g})"
    montage(
        [p.mask for p in test],
        [reals, fakes[shown], *(fakes[n] for n in compared),
         fakes["baseline: class-mean intensity"], fakes["baseline: untrained generator"]],
        Path(args.montage),
    )  # fmt: skip

    m = scores[main_name]
    dist_key = "fid" if m["fid"] is not None else "feature_distance"
    width = model.spec.arch_kwargs.get("ngf", args.width)
    trained = f"in {train_s:.0f} s" if train_s else f"({gen_path})"
    print(
        f"ISBI 2012, 4 held-out masks; {args.preset} {steps} steps {trained} "
        f"(crop {args.crop_size}, width {width}, CPU threads {args.threads})"
    )
    print(
        f"set distance: {m['feature']}"
        + (
            ""
            if m["fid"] is not None
            else "  [NOT FID: no Inception weights; comparable only within this run]"
        )
    )
    print(f"{'':40s} {'SSIM':>7s} {'PSNR dB':>8s} {dist_key:>17s}")
    for name, s in scores.items():
        print(f"{name:40s} {s['ssim']:7.4f} {s['psnr']:8.2f} {s[dist_key]:17.4f}")
    print(f"{'reference: real train vs held-out':40s} {'':7s} {'':8s} {reference[dist_key]:17.4f}")
    if recorded is not None:
        r, b = scores[recorded], scores["baseline: class-mean intensity"]
        wins = r["ssim"] > b["ssim"] and r[dist_key] < b[dist_key]
        print(
            f"at the strength recorded in the file: SSIM {r['ssim']:.4f} vs {b['ssim']:.4f}, "
            f"{dist_key} {r[dist_key]:.4f} vs {b[dist_key]:.4f}: "
            + ("beats" if wins else "does not beat")
            + " the class-mean painting on both"
        )
    for base in ("baseline: class-mean intensity", "baseline: untrained generator", *compared):
        b = scores[base]
        print(
            f"{args.preset} vs {base.removeprefix('baseline: ')}: "
            f"SSIM {m['ssim'] - b['ssim']:+.4f}, "
            f"PSNR {m['psnr'] - b['psnr']:+.2f} dB, {dist_key} x{m[dist_key] / b[dist_key]:.3f}"
        )
    if calibration is not None:
        chosen = calibration["chosen"]
        c = scores[shown]
        b = scores["baseline: class-mean intensity"]
        print(
            f"calibrated on training slices {calibration['slices']}: noise x{chosen:g} "
            f"({calibration['why']}); held out at x{chosen:g}: SSIM {c['ssim']:.4f} vs "
            f"{b['ssim']:.4f}, {dist_key} {c[dist_key]:.4f} vs {b[dist_key]:.4f}: "
            + ("beats" if c["ssim"] > b["ssim"] and c[dist_key] < b[dist_key] else "does not beat")
            + " the class-mean painting on both"
        )
    summary = {
        "calibration": calibration,
        "steps": steps, "train_seconds": round(train_s, 1), "config": vars(args),
        "synth_config": vars(cfg),
        "scores": scores, "reference_real_vs_real": reference,
        "history": history, "generator": str(gen_path), "montage": args.montage,
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nwrote {out / 'results.json'} and {args.montage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
