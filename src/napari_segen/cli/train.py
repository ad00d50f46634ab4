"""``napari-segen train``: train or fine-tune a segmentation model on image/mask folders."""

from __future__ import annotations

import argparse
import json
import sys

from ._common import UserError, add_data_arguments, load_pairs, progress_bar, resolve_model_path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a segmentation model",
        description="Train a U-Net (or FCN) from scratch, or fine-tune an existing model file "
        "(--from), on folders of images and masks. The best model on the validation split is "
        "written atomically to --out (a .safetensors file plus its .json description).",
    )
    add_data_arguments(p)
    p.add_argument("--val-images", help="folder of held-out validation images (instead of --val-split)")
    p.add_argument("--val-masks", help="folder of held-out validation masks")
    p.add_argument("--val-split", type=float, default=0.2,
                   help="fraction of pairs held out for validation (default: 0.2)")
    p.add_argument("--from", dest="start", default=None,
                   help="model file to fine-tune, or 'default' (default: train from scratch)")
    p.add_argument("--arch", default="unet", choices=["unet", "fcn_resnet50"],
                   help="architecture when training from scratch (default: unet)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names, class 0 first (default: background,foreground "
                   "or as many as the masks hold)")
    p.add_argument("--in-channels", type=int, default=None,
                   help="image channels (default: from the first image: 1 gray, 3 colour)")
    p.add_argument("--depth", type=int, default=4, help="U-Net depth (default: 4)")
    p.add_argument("--base-channels", type=int, default=16, help="U-Net base width (default: 16)")
    p.add_argument("--pretrained", default=None,
                   help="local torchvision weights file for --arch fcn_resnet50 (nothing is downloaded)")
    p.add_argument("--epochs", type=int, default=50, help="maximum epochs (default: 50)")
    p.add_argument("--samples-per-epoch", type=int, default=None, help="random crops per epoch")
    p.add_argument("--batch-size", type=int, default=4, help="crops per step (default: 4)")
    p.add_argument("--crop-size", type=int, default=256, help="training crop edge (default: 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument("--dice-weight", type=float, default=0.5, help="soft-Dice loss weight (default: 0.5)")
    p.add_argument("--patience", type=int, default=15,
                   help="stop after this many epochs without improvement (0: never; default: 15)")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-augment", action="store_true", help="plain random crops, no augmentation")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", "-o", required=True, help="output model file (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output model")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_start(args, pairs):
    """The model to fine-tune, or the spec of a new one, from the arguments."""
    from ..data.datasets import split_pairs  # noqa: F401  (kept close to its use)
    from ..models import ModelSpec, load_model
    from ..training import new_unet_spec

    if args.start:
        return load_model(resolve_model_path(args.start))
    first = pairs[0].image
    in_ch = args.in_channels or (3 if first.ndim == 3 and first.shape[-1] in (3, 4) else 1)
    top = max(int(p.mask.max()) for p in pairs)
    if args.classes:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
    else:
        names = ["background"] + [f"class {i}" for i in range(1, max(top, 1) + 1)]
        if len(names) == 2:
            names[1] = "foreground"
    if len(names) <= top:
        raise UserError(f"the masks hold class {top} but only {len(names)} class names were given")
    if args.arch == "unet":
        return new_unet_spec(in_ch, names, args.depth, args.base_channels)
    return ModelSpec(
        architecture=args.arch,
        arch_kwargs={"in_channels": in_ch, "num_classes": len(names)},
        in_channels=in_ch,
        class_names=names,
    )


def run(args: argparse.Namespace) -> int:
    from ..data.augment import AugmentConfig
    from ..data.datasets import split_pairs
    from ..training import TrainConfig, train_segmentation

    pairs = load_pairs(args)
    if args.val_images or args.val_masks:
        if not (args.val_images and args.val_masks):
            raise UserError("give both --val-images and --val-masks")
        train_pairs, val_pairs = pairs, load_pairs(args, args.val_images, args.val_masks)
    else:
        train_pairs, val_pairs = split_pairs(pairs, args.val_split, seed=args.seed)
    start = build_start(args, pairs)
    if args.pretrained:
        if args.start or args.arch != "fcn_resnet50":
            raise UserError("--pretrained applies to a new --arch fcn_resnet50 only")
        from ..models import build_model
        from ..models.model_file import LoadedModel

        module = build_model(start.architecture, **start.arch_kwargs)
        module.load_pretrained(args.pretrained)
        start = LoadedModel(module, start)
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, crop_size=args.crop_size,
        samples_per_epoch=args.samples_per_epoch, lr=args.lr, dice_weight=args.dice_weight,
        device=args.device, seed=args.seed, patience=args.patience or None,
        time_limit_s=args.time_limit,
        augment=AugmentConfig(flips=False, rot90=False, intensity=0, elastic_p=0)
        if args.no_augment else AugmentConfig(),
    )
    print(
        f"training on {len(train_pairs)} image(s), validating on {len(val_pairs)}",
        file=sys.stderr,
    )
    gen = train_segmentation(
        train_pairs, val_pairs, args.out, start=start, config=cfg, overwrite=args.overwrite,
        provenance={"command": "napari-segen " + " ".join(sys.argv[1:]) if sys.argv else "",
                    "images": str(args.images), "masks": str(args.masks)},
    )
    bar = progress_bar(None, "training", args.quiet)
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if ev.kind == "step":
                bar.total = ev.total_steps
                bar.n = ev.step
                bar.set_postfix(epoch=ev.epoch, loss=f"{ev.loss:.3f}", refresh=True)
            elif ev.kind == "epoch":
                m = ev.metrics
                line = f"epoch {ev.epoch:3d}  loss {m['loss']:.4f}"
                if "foreground_dice" in m:
                    line += (f"  val dice {m['foreground_dice']:.4f}  mIoU {m['mean_iou']:.4f}"
                             f"  acc {m['pixel_accuracy']:.4f}")
                bar.write(line)
            elif ev.kind == "saved":
                bar.write(f"  saved best model -> {ev.message}")
    finally:
        bar.close()
    print(json.dumps({"model": str(result.path), "best": result.best_metrics.get("foreground_dice"),
                      "epochs": len(result.history), "seconds": round(result.seconds, 1)}))
    return 0
