"""``napari-segen evaluate``: score a model on image/mask folders (per-class IoU, Dice, accuracy)."""

from __future__ import annotations

import argparse
import json

from ._common import add_data_arguments, add_model_argument, load_pairs, resolve_model_path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a model against ground-truth masks",
        description="Segment each image and compare with its mask: per-class IoU and Dice and "
        "pixel accuracy, as a table (or JSON with --json).",
    )
    add_model_argument(p)
    add_data_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--tile-size", type=int, default=512, help="tile edge in pixels (default: 512)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..training.trainer import evaluate_model, scores_to_metrics

    model = load_model(resolve_model_path(args.model))
    pairs = load_pairs(args)
    scores = evaluate_model(model, pairs, args.tile_size, args.device)
    metrics = scores_to_metrics(scores, model.spec.class_names)
    metrics["images"] = len(pairs)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    width = max(len(n) for n in model.spec.class_names) + 2
    print(f"{'class':<{width}}{'IoU':>8}{'Dice':>8}")
    for name, m in metrics["per_class"].items():
        print(f"{name:<{width}}{m['iou']:>8.4f}{m['dice']:>8.4f}")
    print(f"{'mean':<{width}}{metrics['mean_iou']:>8.4f}{metrics['mean_dice']:>8.4f}")
    print(f"pixel accuracy {metrics['pixel_accuracy']:.4f} over {len(pairs)} image(s)")
    return 0
