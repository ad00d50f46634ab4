"""``napari-segen evaluate``: score a model against masks (IoU, Dice, accuracy; objects)."""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..utils.jsonsafe import json_safe
from ._common import (
    UserError,
    add_model_argument,
    add_source_arguments,
    load_source_pairs,
    resolve_model_path,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model against ground-truth masks",
        description="Segment each image and compare with its mask: per-class IoU and Dice and "
        "pixel accuracy, as a table (or JSON with --json); --objects adds object scores. Data: "
        "image/mask folders, a Pascal VOC folder (its val split by default) or TIFF stacks. "
        "Masks may be class masks or instance label images (one id per object).",
    )
    add_model_argument(p)
    add_source_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--tile-size", type=int, default=512, help="tile edge in pixels (default: 512)")
    p.add_argument(
        "--objects",
        action="store_true",
        help="also score objects: AP at IoU 0.5 and 0.75 (as DSB 2018 / cellpose) and object "
        "counts; for membrane models also the adapted Rand error and variation of information "
        "(ISBI 2012). True objects: the masks' ids for instance label images, else connected "
        "regions of the objects' class; predicted: seeded watershed on the model's probabilities",
    )
    p.add_argument(
        "--min-object-size",
        type=int,
        default=16,
        metavar="PIXELS",
        help="with --objects: drop predicted objects smaller than this (default: 16)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _fmt(v: float) -> str:
    return f"{v:>8.4f}" if v is not None and math.isfinite(v) else f"{'-':>8}"


def format_table(metrics: dict, class_names: list[str]) -> str:
    """The per-class IoU/Dice table with its mean and pixel-accuracy lines (and the objects)."""
    width = max(len(n) for n in [*class_names, "mean", "foreground"]) + 2
    lines = [f"{'class':<{width}}{'IoU':>8}{'Dice':>8}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<{width}}{_fmt(m['iou'])}{_fmt(m['dice'])}")
    lines.append(f"{'mean':<{width}}{_fmt(metrics['mean_iou'])}{_fmt(metrics['mean_dice'])}")
    lines.append(f"{'foreground':<{width}}{'':>8}{_fmt(metrics['foreground_dice'])}")
    lines.append(
        f"pixel accuracy {metrics['pixel_accuracy']:.4f} over {metrics['images']} image(s)"
    )
    objects = metrics.get("objects")
    if objects:
        from ..metrics.report import format_quality_report

        lines.append(f"objects ({objects['method']} rule; ground truth: {objects['ground_truth']})")
        lines.append(format_quality_report(objects))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import LabeledImage
    from ..metrics.evaluate import evaluate_model, inverted_masks_warning, scores_to_metrics
    from ..metrics.instance import iter_score_objects, truth_objects
    from ..models import load_model
    from ..models.heads import check_segmentation_model
    from ..utils.devices import resolve_device
    from ..utils.generators import drive

    if args.min_object_size < 0:
        raise UserError(f"--min-object-size must be 0 or more, got {args.min_object_size}")
    device = resolve_device(args.device)  # fail before any work on a bad device
    model = load_model(resolve_model_path(args.model))
    check_segmentation_model(model, "the model")
    names = list(model.spec.class_names)
    pairs, _, _ = load_source_pairs(args, "val")
    truths = [truth_objects(p.mask, names, args.masks_are) for p in pairs]
    pairs = [
        LabeledImage(p.image, t.classes, p.name, p.rgb) for p, t in zip(pairs, truths, strict=True)
    ]
    instances = sum(t.source.startswith("the instance ids") for t in truths)
    if instances and not args.json:
        print(
            f"{instances} of {len(pairs)} mask(s) read as instance label images (one id per "
            f"object), scored in {model.name}'s classes",
            file=sys.stderr,
        )
    top = max(int(p.mask.max()) for p in pairs)
    if top >= model.spec.num_classes:
        raise UserError(
            f"the masks hold class {top} but {model.name} knows {model.spec.num_classes} classes "
            f"({', '.join(names)}); check --mask-map or --masks-are, or the model"
        )
    objects = None
    if args.objects:
        evaluation = drive(
            iter_score_objects(
                model,
                pairs,
                [t.objects for t in truths],
                tile_size=args.tile_size,
                device=device,
                min_size=args.min_object_size,
            )
        )
        evaluation.ground_truth = "; ".join(sorted({t.source for t in truths}))
        scores, objects = evaluation.pixels, evaluation.as_dict()
    else:
        scores = evaluate_model(model, pairs, args.tile_size, device)
    metrics = scores_to_metrics(scores, names)
    metrics["images"] = len(pairs)
    inverted = inverted_masks_warning(scores, names)
    if inverted:
        metrics["warnings"] = [inverted]
        if not args.json:
            print(f"warning: {inverted}", file=sys.stderr)
    metrics["model"] = str(model.path)
    if objects is not None:
        metrics["objects"] = objects
    if args.json:
        print(json.dumps(json_safe(metrics), indent=2, allow_nan=False))
        return 0
    print(format_table(metrics, names))
    return 0
