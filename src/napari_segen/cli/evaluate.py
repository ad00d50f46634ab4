"""``napari-segen evaluate``: score a model against masks (per-class IoU, Dice, accuracy)."""

from __future__ import annotations

import argparse
import json
import math

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
        "pixel accuracy, as a table (or JSON with --json). Data: image/mask folders, a Pascal "
        "VOC folder (its val split by default) or TIFF stacks.",
    )
    add_model_argument(p)
    add_source_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--tile-size", type=int, default=512, help="tile edge in pixels (default: 512)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _fmt(v: float) -> str:
    return f"{v:>8.4f}" if v is not None and math.isfinite(v) else f"{'-':>8}"


def format_table(metrics: dict, class_names: list[str]) -> str:
    """The per-class IoU/Dice table with its mean and pixel-accuracy lines."""
    width = max(len(n) for n in [*class_names, "mean", "foreground"]) + 2
    lines = [f"{'class':<{width}}{'IoU':>8}{'Dice':>8}"]
    for name, m in metrics["per_class"].items():
        lines.append(f"{name:<{width}}{_fmt(m['iou'])}{_fmt(m['dice'])}")
    lines.append(f"{'mean':<{width}}{_fmt(metrics['mean_iou'])}{_fmt(metrics['mean_dice'])}")
    lines.append(f"{'foreground':<{width}}{'':>8}{_fmt(metrics['foreground_dice'])}")
    lines.append(
        f"pixel accuracy {metrics['pixel_accuracy']:.4f} over {metrics['images']} image(s)"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..metrics.evaluate import evaluate_model, scores_to_metrics
    from ..models import load_model
    from ..utils.devices import resolve_device

    device = resolve_device(args.device)  # fail before any work on a bad device
    model = load_model(resolve_model_path(args.model))
    pairs, _, _ = load_source_pairs(args, "val")
    top = max(int(p.mask.max()) for p in pairs)
    if top >= model.spec.num_classes:
        raise UserError(
            f"the masks hold class {top} but {model.name} knows {model.spec.num_classes} classes "
            f"({', '.join(model.spec.class_names)}); check --mask-map or the model"
        )
    scores = evaluate_model(model, pairs, args.tile_size, device)
    metrics = scores_to_metrics(scores, model.spec.class_names)
    metrics["images"] = len(pairs)
    metrics["model"] = str(model.path)
    if args.json:
        print(json.dumps(json_safe(metrics), indent=2, allow_nan=False))
        return 0
    print(format_table(metrics, model.spec.class_names))
    return 0
