"""``napari-segen predict``: segment image files or folders into label images."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import UserError, add_model_argument, expand_inputs, progress_bar, resolve_model_path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images into label images",
        description="Segment image files (or every image in the given folders) and write one "
        "label image per input, with the same name, into --out. Existing files are kept "
        "unless --overwrite is given.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    add_model_argument(p)
    p.add_argument("--out", "-o", required=True, help="output folder for the label images")
    p.add_argument(
        "--format",
        choices=["png", "tif"],
        default=None,
        help="label file format (default: png for 2D, tif for stacks)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--tile-size", type=int, default=256, help="tile edge in pixels (default: 256)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default: 4)")
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write class probabilities as <name>_probs.tif (float32, C x H x W)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tifffile

    from ..data.image_io import read_image, write_labels
    from ..data.layout import spatial_layout
    from ..inference import iter_predict
    from ..models import load_model
    from ..utils.atomic import atomic_path, check_writable
    from ..utils.devices import resolve_device
    from ..utils.generators import drive

    device = resolve_device(args.device)  # fail before any work on a bad device
    files = expand_inputs(args.inputs)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder")
    targets = []
    for f in files:
        suffix = f".{args.format}" if args.format else None
        targets.append((f, suffix))
    model = load_model(resolve_model_path(args.model), device="cpu")
    # Refuse before any work if an output exists (checked again at write time).
    planned = []
    for f, suffix in targets:
        image = None
        if suffix is None:
            image = read_image(f)
            leading, _ = spatial_layout(image.shape, None)
            suffix = ".tif" if leading else ".png"  # one plane (gray or colour) fits a PNG
        dest = out_dir / (f.stem + suffix)
        check_writable(dest, args.overwrite)
        planned.append((f, dest, image))
    names = [d for _, d, _ in planned]
    if len(set(names)) != len(names):
        raise UserError("two inputs share a file name; segment them into separate --out folders")
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, (f, dest, image) in enumerate(planned, 1):
        image = read_image(f) if image is None else image
        gen = iter_predict(
            model,
            image,
            tile_size=args.tile_size,
            batch_size=args.batch_size,
            device=device,
            return_probabilities=args.probabilities,
        )
        with progress_bar(None, f"[{i}/{len(planned)}] {f.name}", args.quiet) as bar:

            def _show(prog, bar=bar) -> None:
                bar.total = prog.total
                bar.n = prog.done
                bar.refresh()

            result = drive(gen, _show)
        write_labels(dest, result.labels, overwrite=args.overwrite)
        if result.probabilities is not None:
            with atomic_path(out_dir / f"{f.stem}_probs.tif", args.overwrite) as tmp:
                tifffile.imwrite(tmp, result.probabilities, photometric="minisblack")
        if not args.quiet:
            print(f"{f} -> {dest}")
    return 0
