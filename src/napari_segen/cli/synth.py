"""``napari-segen synth``: train a pix2pix cGAN, generate images from masks, export synthetic pairs.

napari-segen synth train    --images I --masks M --out gen.safetensors
napari-segen synth generate --model gen.safetensors MASKS... --out DIR
napari-segen synth export   --model gen.safetensors --masks M --n 100 --out DIR
napari-segen synth evaluate --model gen.safetensors --images I --masks M
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..data.conventions import (
    DEFAULT_SYNTH_PRESET,
    SUGGESTED_SYNTHETIC_SHARE,
    SYNTHETIC_MIXING_NOTE,
)
from ..utils.generators import drive
from ..utils.jsonsafe import json_safe
from ._common import (
    UserError,
    add_source_arguments,
    expand_inputs,
    follow,
    load_source_pairs,
    progress_bar,
    resolve_model_path,
    sources_from_args,
    validation_sources,
)

#: The recipes of ``--preset`` (the trainer's ``PRESETS``; named here so that the
#: parser is built without importing torch).
PRESET_NAMES = ("pix2pix", "texture", "augment", "balanced")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="synthesize training pairs with a pix2pix cGAN (train, generate, export, evaluate)",
        description="Train a pix2pix conditional GAN on image/mask pairs, then draw images for "
        "new masks: every synthetic image comes with a correct mask.",
    )
    ss = p.add_subparsers(dest="synth_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _help(p))
    _add_train(ss)
    _add_generate(ss)
    _add_export(ss)
    _add_evaluate(ss)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_train(ss) -> None:
    t = ss.add_parser(
        "train",
        help="train a pix2pix generator on image/mask folders",
        description="Train a pix2pix cGAN (U-Net generator, PatchGAN discriminator, adversarial "
        "+ L1 loss). The generator is checkpointed atomically to --out (with its .json), the "
        "training state that --resume continues from to <name>.last.safetensors (+ .json) "
        "beside it; sample grids (mask | real | generated) go to <name>_samples/. Held-out "
        "pairs give an SSIM/PSNR/FID readout at the end. The default recipe, --preset augment, "
        "draws texture (resize-then-convolve up-sampling, per-layer noise, a 2-scale "
        "discriminator with feature matching) over a noise-free drawing held to the real "
        "image by L1, with mode seeking so the noise stays: its pairs are the ones measured "
        "to help a segmentation model. --preset pix2pix is the paper's; --preset texture "
        "and --preset balanced are the other measured variants. Texture and balanced "
        "generators have their texture strength calibrated on the held-out pairs after "
        "training (the one that beats a flat class-mean painting by the widest margin on "
        "SSIM and FID or feature distance) and recorded in the file, where generate and "
        "export take it as their default; single flags override a preset.",
    )
    add_source_arguments(t)
    t.add_argument("--val-images", help="folder of held-out images (instead of --val-split)")
    t.add_argument("--val-masks", help="folder of held-out masks")
    t.add_argument(
        "--val-split",
        type=float,
        default=0.2,
        help="fraction of pairs held out for samples and quality (default: 0.2)",
    )
    t.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names, class 0 first (default: from the masks)",
    )
    t.add_argument(
        "--channels",
        type=int,
        choices=[1, 3],
        default=None,
        help="image channels to generate (default: 3 if the images are colour, else 1)",
    )
    t.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (default: 300 on a CPU, 2000 on a GPU)",
    )
    t.add_argument("--batch-size", type=int, default=1, help="crops per step (default: 1)")
    t.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="training crop edge, a multiple of 2**depth (default: 128 on a CPU, 256 on a GPU)",
    )
    t.add_argument(
        "--ngf", type=int, default=None, help="generator width (default: 32 on a CPU, 64 on a GPU)"
    )
    t.add_argument(
        "--depth",
        type=int,
        default=None,
        help="generator down-sampling steps (default: log2(crop size), at most 8)",
    )
    t.add_argument(
        "--ndf",
        type=int,
        default=None,
        help="discriminator width (default: 32 on a CPU, 64 on a GPU)",
    )
    t.add_argument(
        "--n-layers",
        type=int,
        default=3,
        help="discriminator layers: 3 = 70x70 patches (default: 3)",
    )
    t.add_argument(
        "--norm",
        choices=["instance", "batch"],
        default="instance",
        help="normalisation layers (default: instance)",
    )
    t.add_argument(
        "--preset",
        choices=list(PRESET_NAMES),
        default=DEFAULT_SYNTH_PRESET,
        help="recipe: 'pix2pix' (the paper's), 'texture' (resize up-sampling, noise, 2-scale "
        "discriminator, feature matching 10, L1 10), 'augment' (texture with L1 100 on the "
        "noise-free drawing, feature matching 50, mode seeking 0.1: the recipe whose pairs "
        "helped a 4-image U-Net on ISBI) or 'balanced' (texture with an "
        "SSIM-trained noise-free drawing and mode seeking: L1 10 and SSIM 1000 on the "
        "noise-free drawing, feature matching 50, mode seeking 0.3; its texture strength is "
        "calibrated after training); the flags below override it (default: %(default)s, the "
        "only recipe whose pairs helped beyond the seeds' spread)",
    )
    t.add_argument(
        "--upsample",
        choices=["transpose", "resize", "bilinear"],
        default=None,
        help="generator up-sampling: transposed convolutions (the paper's), or nearest/bilinear "
        "resize then a 3x3 convolution, which leaves no checkerboard (default: the preset's)",
    )
    t.add_argument(
        "--noise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add learned-scale noise maps to the generator's decoder layers: texture that varies "
        "with the seed (default: the preset's)",
    )
    t.add_argument(
        "--d-scales",
        type=int,
        default=None,
        help="discriminators on the pair at full, half... size, 1 to 4 (pix2pixHD uses 2-3; "
        "default: the preset's)",
    )
    t.add_argument(
        "--fm-weight",
        type=float,
        default=None,
        help="weight of the discriminator feature-matching loss, 0 = off (pix2pixHD: 10; "
        "default: the preset's)",
    )
    t.add_argument(
        "--gan-loss",
        choices=["lsgan", "bce"],
        default="lsgan",
        help="adversarial loss (default: lsgan)",
    )
    t.add_argument(
        "--l1-weight",
        type=float,
        default=None,
        help="L1 weight lambda (default: the preset's: 100 for pix2pix and augment, 10 for "
        "texture and balanced)",
    )
    t.add_argument(
        "--l1-sigma",
        type=float,
        default=None,
        help="compare real and generated images through a Gaussian low-pass of this sigma "
        "(px) in the L1 term, so it holds the layout and leaves texture free; 0 = per-pixel "
        "L1 (default: the preset's)",
    )
    t.add_argument(
        "--l1-noise-free",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply the L1 term to the generator's noise-free drawing, so the noise is free "
        "to draw texture (needs a noise generator, e.g. --preset texture; default: the "
        "preset's, on for augment and balanced)",
    )
    t.add_argument(
        "--ssim-weight",
        type=float,
        default=None,
        metavar="W",
        help="weight of an SSIM term beside L1 on the drawing L1 judges (keeps local "
        "contrast; default: the preset's: 1000 for balanced, else 0)",
    )
    t.add_argument(
        "--mode-seeking",
        type=float,
        default=None,
        metavar="W",
        help="weight of a mode-seeking term that rewards different images for different "
        "noise, so the generator cannot learn to ignore its noise (needs a noise generator; "
        "default: the preset's: 0.1 for augment, 0.3 for balanced, else 0)",
    )
    t.add_argument(
        "--noise-init",
        type=float,
        default=None,
        metavar="S",
        help="starting scale of every noise map, 0 to 1 (0, as in StyleGAN, leaves all but the "
        "finest layer's noise unused in a short run; needs a noise generator; default: the "
        "preset's: 0.1 for balanced, else 0)",
    )
    t.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default: 2e-4)")
    t.add_argument(
        "--sample-every", type=int, default=200, help="steps between sample grids (default: 200)"
    )
    t.add_argument(
        "--checkpoint-every", type=int, default=500, help="steps between checkpoints (default: 500)"
    )
    t.add_argument("--samples-dir", default=None, help="folder for sample grids")
    t.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    t.add_argument("--no-eval", action="store_true", help="skip the quality readout")
    t.add_argument(
        "--no-calibrate",
        action="store_true",
        help="do not calibrate a noise generator's texture strength on the held-out pairs "
        "after training (generation then defaults to strength 1; the augment preset never "
        "calibrates: its measured gain was at strength 1)",
    )
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    t.add_argument("--out", "-o", required=True, help="generator model file (.safetensors)")
    t.add_argument(
        "--resume", action="store_true", help="continue the run saved in --out up to --steps"
    )
    _add_run_flags(t, "an existing --out", run_train)


def _add_generate(ss) -> None:
    g = ss.add_parser(
        "generate",
        help="generate images from masks",
        description="Draw an image for each mask file (2D, or a TIFF stack) with a trained "
        "generator; images are written to --out as <mask name>.png (or .tif).",
    )
    g.add_argument("masks", nargs="+", help="mask files or folders of masks")
    _add_model_and_masks(g)
    g.add_argument("--out", "-o", required=True, help="output folder")
    _add_run_flags(g, "existing images", run_generate)


def _add_export(ss) -> None:
    e = ss.add_parser(
        "export",
        help="write N synthetic image/mask pairs from randomly transformed masks",
        description="Make N new masks by random flips, rotations, scaling and elastic "
        "deformation of --masks, generate their images, and write DIR/images and DIR/masks "
        "(class-index PNGs) for 'napari-segen train --images DIR/images --masks DIR/masks'.",
    )
    e.add_argument("--masks", required=True, nargs="+", help="source mask files or folders")
    _add_model_and_masks(e)
    e.add_argument("--n", type=int, required=True, help="number of pairs to write")
    e.add_argument("--out", "-o", required=True, help="output folder (gets images/ and masks/)")
    e.add_argument("--prefix", default="synth", help="file name prefix (default: synth)")
    e.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="size of the new masks (default: each source's size)",
    )
    e.add_argument("--no-flips", action="store_true", help="no random flips")
    e.add_argument("--no-rot90", action="store_true", help="no random 90-degree rotations")
    e.add_argument(
        "--scale",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(0.8, 1.25),
        help="random zoom range (default: 0.8 1.25; 1 1 turns it off)",
    )
    e.add_argument(
        "--elastic-alpha",
        type=float,
        default=20.0,
        help="elastic displacement in pixels (default: 20; 0 turns it off)",
    )
    e.add_argument(
        "--elastic-sigma", type=float, default=8.0, help="elastic smoothness in pixels (default: 8)"
    )
    e.add_argument(
        "--cutpaste-p",
        type=float,
        default=0.0,
        help="probability of pasting a random rectangle of another source mask into each new "
        "mask: layouts no real mask has (default: 0 = off)",
    )
    e.add_argument(
        "--crop-p",
        type=float,
        default=0.0,
        help="probability of a random crop (half or three quarters of the edge) resized back: "
        "larger structures than in the real masks (default: 0 = off)",
    )
    e.add_argument(
        "--filter-model",
        default=None,
        help="segmentation model that scores each pair ('default' for the bundled one, or a "
        "model file): pairs whose image it segments with foreground Dice below --min-dice "
        "against their mask are removed; all scores go to DIR/scores.csv (default: no filter)",
    )
    e.add_argument(
        "--min-dice",
        type=float,
        default=0.7,
        help="foreground Dice a pair needs to be kept with --filter-model (default: 0.7)",
    )
    _add_run_flags(e, "existing pairs (and scores.csv)", run_export)


def _add_evaluate(ss) -> None:
    v = ss.add_parser(
        "evaluate",
        help="score a generator: SSIM/PSNR against real images of the same masks, FID/KID",
        description="Generate an image for each mask in --masks and compare it with the real "
        "image of the same name in --images (use held-out pairs).",
    )
    add_source_arguments(v)
    v.add_argument(
        "--model",
        "-m",
        required=True,
        help="generator model file (.safetensors), or 'default' for the bundled ISBI generator",
    )
    v.add_argument("--no-fid", action="store_true", help="SSIM and PSNR only")
    v.add_argument(
        "--fid-features",
        default=None,
        help="features for FID/KID: 'inception', 'unet' or a U-Net model file "
        "(default: Inception if its weights are installed, else a labelled "
        "U-Net feature distance)",
    )
    v.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    v.add_argument("--json", action="store_true", help="print the figures as JSON")
    v.set_defaults(func=run_evaluate)


def _add_run_flags(p: argparse.ArgumentParser, replaces: str, func) -> None:
    """The end of every action that writes files: --overwrite, --quiet and what runs it."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {replaces}")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=func)


def _add_model_and_masks(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="generator model file (.safetensors), or 'default' for the bundled ISBI generator",
    )
    p.add_argument(
        "--mask-map",
        default=None,
        help="map raw mask values to classes, e.g. '0:1,255:0' (default: 0/255 masks "
        "become 0/1, other values are class indices)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="generate in blended tiles of this size (default: whole images)",
    )
    p.add_argument(
        "--stochastic", action="store_true", help="keep dropout on: varied images (pix2pix's noise)"
    )
    p.add_argument(
        "--noise-strength",
        type=float,
        default=None,
        metavar="S",
        help="scale of the texture noise of a generator trained with --noise: 1 = as trained, "
        "0 = its noise-free drawing; lower values give smoother images with less grain, "
        "higher ones more (ignored by generators without noise; default: the strength "
        "calibrated when the generator was trained, else 1)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; with a generator trained with --noise it picks the texture, "
        "image i getting seed + i (default: 0)",
    )


def _noise_strength(args: argparse.Namespace) -> float | None:
    """--noise-strength, checked before anything is read or written (None: the generator's
    recommended strength)."""
    from ..synthesis.generate import check_noise_strength

    try:
        return check_noise_strength(args.noise_strength)
    except ValueError as err:
        raise UserError(f"--noise-strength: {err}") from err


def _load_generator(path: str):
    """The generator in ``path`` ('default': the bundled ISBI one), on the CPU: the core
    moves it to the device it runs on."""
    from ..synthesis.generate import load_generator

    return load_generator(resolve_model_path(path, generator=True))


def _read_masks(items: list[str], mask_map: str | None):
    """``(path, mask)`` of each mask file; every mask is 2D or a ``(Z, H, W)`` stack."""
    from ..data.image_io import parse_value_map, read_mask

    vm = parse_value_map(mask_map)
    masks = [(p, read_mask(p, vm)) for p in expand_inputs(items)]
    for path, mask in masks:
        if mask.ndim not in (2, 3):
            raise UserError(f"{path}: masks must be 2D or a (Z, H, W) stack, got {mask.shape}")
    return masks


def run_train(args: argparse.Namespace) -> int:
    from ..metrics.report import format_quality_report
    from ..synthesis.calibrate import has_noise_maps, recommended_noise_strength
    from ..synthesis.device_defaults import device_defaults
    from ..synthesis.trainer import SynthConfig, train_pix2pix
    from ..training.assembly import assemble_pix2pix

    chosen = dict(
        upsample=args.upsample,
        noise=args.noise,
        d_scales=args.d_scales,
        fm_weight=args.fm_weight,
        l1_weight=args.l1_weight,
        l1_sigma=args.l1_sigma,
        l1_noise_free=args.l1_noise_free,
        ms_weight=args.mode_seeking,
        noise_init=args.noise_init,
        calibrate_noise=False if args.no_calibrate else None,
        ssim_weight=args.ssim_weight,
    )
    sizes, defaulted = device_defaults(
        args.device, steps=args.steps, crop_size=args.crop_size, ngf=args.ngf, ndf=args.ndf
    )
    cfg = SynthConfig.from_preset(
        args.preset,
        **{k: v for k, v in chosen.items() if v is not None},
        **sizes,
        batch_size=args.batch_size,
        depth=args.depth,
        n_layers=args.n_layers,
        norm=args.norm,
        gan_loss=args.gan_loss,
        lr=args.lr,
        out_channels=args.channels,
        device=args.device,
        seed=args.seed,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        time_limit_s=args.time_limit,
        evaluate=not args.no_eval,
    )
    cfg.check()  # a setting the networks cannot take is told before the images are read
    if defaulted and not args.resume:
        flags = ", ".join(f"--{n.replace('_', '-')} {sizes[n]}" for n in defaulted)
        print(f"settings for this machine: {flags} (set them to change)", file=sys.stderr)
    names = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    assembled = drive(
        assemble_pix2pix(
            sources_from_args(args, "train"),
            val_fraction=args.val_split,
            seed=args.seed,
            val_sources=validation_sources(args),
            class_names=names,
            masks_are=args.masks_are,
            instance_mode=args.instance_mode,
        )
    )
    for note in assembled.notes:
        print(note, file=sys.stderr)
    print(
        f"training pix2pix on {len(assembled.train)} pair(s), {len(assembled.val)} held out",
        file=sys.stderr,
    )
    gen = train_pix2pix(
        assembled.train,
        args.out,
        config=cfg,
        val_pairs=assembled.val,
        class_names=assembled.class_names,
        resume=args.resume,
        overwrite=args.overwrite,
        samples_dir=args.samples_dir,
        provenance={
            "command": "napari-segen " + " ".join(sys.argv[1:]),
            **assembled.provenance,
        },
    )
    bar = progress_bar(cfg.steps, "pix2pix", args.quiet)
    calibration: list[str] = []

    def on_event(ev) -> None:
        if ev.kind == "step":
            bar.n = ev.step
            bar.set_postfix(l1=f"{ev.losses['l1']:.3f}", d=f"{ev.losses['d']:.3f}", refresh=True)
        elif ev.kind == "sample" and ev.path:
            bar.write(f"step {ev.step:6d}  samples -> {ev.path}")
        elif ev.kind == "saved":
            bar.write(f"step {ev.step:6d}  checkpoint -> {ev.path}")
        elif ev.kind == "calibrating":
            bar.set_postfix_str(ev.message, refresh=True)
        elif ev.kind == "calibration":
            calibration.append(ev.message)

    try:
        result = drive(gen, on_event)
    finally:
        bar.close()
    for line in calibration:
        print(line)
    if result.quality:
        print("held-out quality (generated vs real images of the same masks):")
        print(format_quality_report(result.quality))
    summary = {
        "model": str(result.path),
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "final_losses": result.history[-1] if result.history else {},
        "ssim": result.quality.get("ssim", {}).get("mean"),
        "psnr": result.quality.get("psnr", {}).get("mean"),
        "fid": result.quality.get("fid"),
        "feature_distance": result.quality.get("feature_distance"),
        "noise_strength": (
            recommended_noise_strength(result.model) if has_noise_maps(result.model) else None
        ),
    }
    print(json.dumps(summary))
    return 0


def run_generate(args: argparse.Namespace) -> int:
    """One image per mask file, streamed; a bad mask is reported and skipped (exit 1)."""
    from ..data.image_io import (
        ImageReadError,
        check_mask_classes,
        image_info,
        parse_value_map,
        read_mask,
    )
    from ..synthesis.generate import generated_suffix, iter_generate, write_image
    from ..utils.atomic import OverwriteError, ensure_writable_dir, plan_outputs
    from . import SkippedInputs

    noise_strength = _noise_strength(args)
    model = _load_generator(args.model)
    value_map = parse_value_map(args.mask_map)
    files = expand_inputs(args.masks)
    out = Path(args.out)
    skipped = SkippedInputs("synth generate")
    planned = []  # every output name checked before the first write
    for path in files:
        try:
            stack = image_info(path).is_stack
        except ImageReadError as err:
            skipped.skip(path, err)
            continue
        planned.append((path, out / f"{path.stem}{generated_suffix(model, stack)}"))
    plan_outputs(
        [(target, f"the image of {path.name}") for path, target in planned],
        inputs=files,
        overwrite=args.overwrite,
    )
    ensure_writable_dir(out)
    written = 0
    bar = progress_bar(len(planned), "generating", args.quiet)
    try:
        for i, (path, target) in enumerate(planned):
            try:
                mask = read_mask(path, value_map)
                if mask.ndim not in (2, 3):
                    raise ImageReadError(f"masks are 2D or a (Z, H, W) stack, not {mask.shape}")
                check_mask_classes(path.name, mask, model.spec.num_classes)
                image = drive(
                    iter_generate(
                        model,
                        mask,
                        device=args.device,
                        tile_size=args.tile_size,
                        stochastic=args.stochastic,
                        seed=args.seed + i,
                        noise_strength=noise_strength,
                    ),
                )
                write_image(target, image, overwrite=args.overwrite)
            except (ImageReadError, OverwriteError) as err:
                skipped.skip(path, err)
            else:
                written += 1
                bar.write(f"{path.name} -> {target}")
            bar.update(1)
    finally:
        bar.close()
    print(json.dumps({"images": written, "out": str(out), "skipped": skipped.paths}))
    return skipped.exit_code(len(files))


def run_export(args: argparse.Namespace) -> int:
    from ..synthesis.filter import iter_export_filtered
    from ..synthesis.masks import MaskTransformConfig

    noise_strength = _noise_strength(args)
    model = _load_generator(args.model)
    sources = []
    for _, mask in _read_masks(args.masks, args.mask_map):
        sources.extend(mask if mask.ndim == 3 else [mask])
    try:
        transform = MaskTransformConfig(
            flips=not args.no_flips,
            rot90=not args.no_rot90,
            scale_range=tuple(args.scale),
            elastic_alpha=args.elastic_alpha,
            elastic_sigma=args.elastic_sigma,
            cutpaste_p=args.cutpaste_p,
            crop_p=args.crop_p,
        )
    except ValueError as err:
        raise UserError(str(err)) from err
    filter_model = _filter_setup(args)
    desc = "exporting pairs" if filter_model is None else "exporting and filtering pairs"
    bar = progress_bar(args.n, desc, args.quiet)
    on_event = follow(bar)
    stops: list = []
    task = iter_export_filtered(
        model,
        sources,
        args.out,
        args.n,
        filter_model=filter_model,
        min_dice=args.min_dice,
        transform=transform,
        out_shape=tuple(args.size) if args.size else None,
        seed=args.seed,
        stochastic=args.stochastic,
        noise_strength=noise_strength,
        tile_size=args.tile_size,
        device=args.device,
        prefix=args.prefix,
        overwrite=args.overwrite,
        on_stop=stops.append,
    )
    try:
        result = drive(task, on_event)
    finally:
        bar.close()
        if stops:  # stopped before its end: what it left on disk
            print(f"napari-segen synth export: {stops[-1].summary()}", file=sys.stderr)
    export = result.export
    summary = {
        "pairs": result.count,
        "images": str(export.images_dir),
        "masks": str(export.masks_dir),
    }
    if result.filter is not None:
        print(result.filter.summary(), file=sys.stderr)
        summary.update(
            exported=export.count,
            dropped=len(result.filter.dropped),
            dropped_reasons=result.filter.reasons(),
            scores=str(result.scores_path),
        )
    print(
        f"wrote {summary['pairs']} pairs; mix them into a training run with: napari-segen "
        f"train ... --synthetic-images {export.images_dir} --synthetic-masks "
        f"{export.masks_dir} --synthetic-share {SUGGESTED_SYNTHETIC_SHARE:g} (a cap on their "
        f"share of the crops; check "
        f"held-out Dice with and without them). Note: {SYNTHETIC_MIXING_NOTE}",
        file=sys.stderr,
    )
    print(json.dumps(summary))
    return 0


def _filter_setup(args: argparse.Namespace):
    """The filter's segmentation model (None without --filter-model); the export checks
    scores.csv before any pair is made."""
    if args.filter_model is None:
        return None
    from ..models.model_file import ModelFileError, load_model
    from ..synthesis.filter import check_filter_spec

    if not 0 <= args.min_dice <= 1:
        raise UserError(f"--min-dice is a Dice score between 0 and 1, got {args.min_dice}")
    try:
        model = load_model(resolve_model_path(args.filter_model))
    except ModelFileError as err:
        raise UserError(f"cannot use {args.filter_model} as the filter model: {err}") from err
    try:
        check_filter_spec(model.spec, args.filter_model)
    except ValueError as err:
        raise UserError(str(err)) from err
    return model


def run_evaluate(args: argparse.Namespace) -> int:
    from ..metrics.report import format_quality_report
    from ..synthesis.quality import evaluate_generator
    from ..training.assembly import masks_to_classes, read_masks_as

    model = _load_generator(args.model)
    pairs, _, _ = load_source_pairs(args, "val")
    reading = read_masks_as(pairs, args.masks_are, args.instance_mode, model.spec.num_classes)
    if reading.note:
        print(reading.note, file=sys.stderr)
    pairs = masks_to_classes(pairs, reading, args.instance_mode)
    q = evaluate_generator(
        model, pairs, device=args.device, fid=not args.no_fid, extractor=args.fid_features
    )
    if "ssim" not in q:
        raise UserError(q.get("message", "image-quality metrics are not available"))
    if args.json:
        print(json.dumps(json_safe(q), allow_nan=False))
    else:
        print(f"{args.model}: generated vs real images of {len(pairs)} mask(s)")
        print(format_quality_report(q))
    return 0
