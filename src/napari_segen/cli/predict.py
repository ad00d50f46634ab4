"""``napari-segen predict``: segment image files or folders into label images (and objects)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..data.conventions import DEFAULT_TILE_SIZE
from ._common import (
    UserError,
    add_model_argument,
    expand_inputs,
    follow,
    progress_bar,
    resolve_model_path,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="segment images into label images (and objects)",
        description="Segment image files (or every image in the given folders) and write one "
        "label image per input, named <name>_labels.png (or .tif), into --out; napari-segen "
        "opens these files as Labels layers. --instances also writes the "
        "objects (one id per object) as <name>_objects.tif with a table <name>_objects.csv. "
        "Existing files are kept unless --overwrite is given. "
        "Images bigger than memory: a .zarr input, or --out NAME.zarr, segments one image "
        "(zarr or TIFF) block by block into a zarr store (labels, optional probabilities/"
        "uncertainty); an interrupted run resumes when started again (see docs/big_images.md).",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files or folders, or one .zarr array"
    )
    add_model_argument(p)
    p.add_argument(
        "--out",
        "-o",
        required=True,
        help="output folder for the label images (<name>_labels.png|tif); a NAME.zarr path: "
        "block-wise mode",
    )
    p.add_argument(
        "--format",
        choices=["png", "tif"],
        default=None,
        help="label file format (default: png for 2D, tif for stacks)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument(
        "--tile-size",
        type=int,
        default=DEFAULT_TILE_SIZE,
        help=f"tile edge in pixels (default: {DEFAULT_TILE_SIZE}). With the bundled model "
        "512-px tiles differ from one whole-image pass on 0.005%% of the labels and 256-px "
        "tiles on 0.12%% (along seams); 256 needs about 0.4 GB less memory on the CPU and "
        "is about 1.2x slower on big images",
    )
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default: 4)")
    p.add_argument(
        "--halo",
        type=int,
        default=None,
        help="tile-border pixels dropped where tiles meet (default: a sixteenth of the tile, "
        "32 for 512-px tiles); a halo covering the model's receptive field makes tiled output "
        "equal whole-image output. Bundled model, 256-px tiles: 0.12%% of labels differ from "
        "one whole-image pass with the default halo, 0.002%% with --halo 64 at 2.3x the time",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="also write class probabilities as <name>_probs.tif (float32, C x H x W)",
    )
    p.add_argument(
        "--instances",
        action="store_true",
        help="also write the objects: <name>_objects.tif (uint16/uint32, one id per object, 0 = "
        "none; touching objects split by seeded watershed) and <name>_objects.csv (label, "
        "area, centroid per object)",
    )
    p.add_argument(
        "--min-object-size",
        type=int,
        default=16,
        metavar="PIXELS",
        help="with --instances: drop objects smaller than this (default: 16)",
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write the per-pixel uncertainty (entropy of the class probabilities, 0-1) "
        "as <name>_uncertainty.tif (float32)",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation: average over the 8 flips/rotations (8x slower, "
        "usually a little more accurate)",
    )
    big = p.add_argument_group("block-wise mode (zarr input or --out NAME.zarr)")
    big.add_argument(
        "--block-size",
        type=int,
        default=2048,
        help="output block edge in pixels: peak memory grows with it (default: 2048)",
    )
    big.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="run blocks on a running dask.distributed scheduler (e.g. tcp://host:8786)",
    )
    big.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run blocks on a local dask cluster of N single-threaded worker processes",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _outputs(out_dir: Path, stem: str, labels_suffix: str, args) -> dict[str, Path]:
    """Every file one input writes, by kind."""
    # "<stem>_labels.png": napari's "<image> labels" convention, which the reader opens as Labels
    paths = {"labels": out_dir / f"{stem}_labels{labels_suffix}"}
    if args.probabilities:
        paths["probabilities"] = out_dir / f"{stem}_probs.tif"
    if args.uncertainty:
        paths["uncertainty"] = out_dir / f"{stem}_uncertainty.tif"
    if args.instances:
        paths["objects"] = out_dir / f"{stem}_objects.tif"
        paths["table"] = out_dir / f"{stem}_objects.csv"
    return paths


def run(args: argparse.Namespace) -> int:
    from ..data.image_io import ImageReadError, image_info, read_image, write_labels
    from ..inference import iter_predict
    from ..models import load_model
    from ..utils.atomic import OverwriteError, ensure_writable_dir, plan_outputs
    from ..utils.devices import resolve_device
    from ..utils.generators import drive
    from . import SkippedInputs

    if args.min_object_size < 0:
        raise UserError(f"--min-object-size must be 0 or more, got {args.min_object_size}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be 1 or more, got {args.batch_size}")
    if args.halo is not None and not 0 <= args.halo < args.tile_size // 2:
        raise UserError(
            f"--halo must be from 0 to under half the tile size ({args.tile_size}), got {args.halo}"
        )
    device = resolve_device(args.device)  # fail before any work on a bad device
    if _is_zarr(args.out) or any(_is_zarr(i) for i in args.inputs):
        return run_blockwise(args)
    if args.scheduler or args.workers:
        raise UserError("--scheduler and --workers need block-wise mode: give --out NAME.zarr")
    files = expand_inputs(args.inputs)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder")
    model = load_model(resolve_model_path(args.model), device="cpu")
    # Refuse before any work if an output exists, two outputs share a file or an output
    # would replace an input (the writes are create-exclusive as well). Headers only: the
    # images are read one at a time below; a bad one is reported and skipped.
    skipped = SkippedInputs("predict")
    planned = []
    for f in files:
        try:
            stack = image_info(f).is_stack
            if stack and args.format == "png":
                raise ImageReadError(f"{f} is a stack; its labels need --format tif (or none)")
        except ImageReadError as err:
            skipped.skip(f, err)
            continue
        suffix = f".{args.format}" if args.format else ".tif" if stack else ".png"
        planned.append((f, _outputs(out_dir, f.stem, suffix, args)))
    plan_outputs(
        [(dest, f"the {kind} of {f.name}") for f, outs in planned for kind, dest in outs.items()],
        inputs=files,
        overwrite=args.overwrite,
    )
    ensure_writable_dir(out_dir)
    for i, (f, outputs) in enumerate(planned, 1):
        try:
            image = read_image(f)
        except ImageReadError as err:
            skipped.skip(f, err)
            continue
        gen = iter_predict(
            model,
            image,
            tile_size=args.tile_size,
            halo=args.halo,
            batch_size=args.batch_size,
            device=device,
            return_probabilities=args.probabilities or args.instances,
            return_uncertainty=args.uncertainty,
            tta=args.tta,
        )
        with progress_bar(None, f"[{i}/{len(planned)}] {f.name}", args.quiet) as bar:
            result = drive(gen, follow(bar))
        try:
            write_labels(outputs["labels"], result.labels, overwrite=args.overwrite)
        except OverwriteError as err:  # another run wrote it since the plan
            skipped.skip(f, err)
            continue
        if args.probabilities:
            _write_tif(outputs["probabilities"], result.probabilities, args.overwrite)
        if args.uncertainty:
            _write_tif(outputs["uncertainty"], result.uncertainty, args.overwrite)
        line = f"{f} -> {outputs['labels']}"
        if args.instances:
            count = write_objects(
                outputs["objects"],
                outputs["table"],
                result.probabilities,
                model.spec.class_names,
                args.min_object_size,
                args.overwrite,
            )
            line += f", {count} objects -> {outputs['objects'].name} + {outputs['table'].name}"
        if not args.quiet or args.instances:  # the object count is a result, not progress
            print(line)
    return skipped.exit_code(len(files))


def _is_zarr(path: str) -> bool:
    return Path(path).suffix.lower() == ".zarr" or Path(path, "zarr.json").is_file()


def run_blockwise(args: argparse.Namespace) -> int:
    """One image (zarr or TIFF) block by block into the zarr store ``--out``."""
    from ..inference.blockwise import (
        BlockSettings,
        StoreMismatchError,
        iter_predict_blocks,
        open_image,
        start_client,
    )
    from ..utils.generators import drive

    if len(args.inputs) != 1:
        raise UserError(
            f"block-wise mode segments one image into one store; got {len(args.inputs)} inputs"
        )
    if not _is_zarr(args.out):
        raise UserError(f"a zarr input is segmented into a zarr store: give --out NAME.zarr, "
                        f"not {args.out}")  # fmt: skip
    for flag, given in (("--instances", args.instances), ("--format", args.format)):
        if given:
            raise UserError(f"{flag} is not available in block-wise mode (zarr output)")
    if args.block_size < 16:
        raise UserError(f"--block-size must be 16 or more, got {args.block_size}")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be 1 or more, got {args.workers}")
    if args.scheduler and args.workers:
        raise UserError("give --scheduler or --workers, not both")
    src, out = Path(args.inputs[0]), Path(args.out)
    if not src.exists():
        raise UserError(f"input not found: {src}")
    if out.resolve() == src.resolve():
        raise UserError(f"--out {out} is the input; give another path")
    try:
        open_image(src)  # a readable array, before any cluster starts
    except Exception as err:  # zarr and tifffile raise many kinds  # noqa: BLE001
        raise UserError(f"cannot read {src} as a zarr array or TIFF: {err}") from err
    settings = BlockSettings(
        block_size=args.block_size,
        tile_size=args.tile_size,
        halo=args.halo,
        batch_size=args.batch_size,
        tta=args.tta,
        probabilities=args.probabilities,
        uncertainty=args.uncertainty,
    )
    client = start_client(args.scheduler, args.workers)
    try:
        gen = iter_predict_blocks(
            str(resolve_model_path(args.model)),
            str(src),
            out,
            settings=settings,
            device=args.device,
            overwrite=args.overwrite,
            client=client,
        )
        with progress_bar(None, f"{src.name} (blocks)", args.quiet) as bar:
            move = follow(bar)

            def _show(prog) -> None:
                bar.set_postfix_str(prog.message, refresh=False)
                move(prog)

            try:
                result = drive(gen, _show)
            except StoreMismatchError as err:
                raise UserError(str(err)) from err
            except KeyboardInterrupt:
                print(f"finished blocks are kept in {out}: run the same command again to "
                      "resume", file=sys.stderr)  # fmt: skip
                raise
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None) if not args.scheduler else None
            client.close()
            if cluster is not None:
                cluster.close()
    if not args.quiet:
        resumed = f", {result.skipped} already done" if result.skipped else ""
        print(f"{src} -> {out} ({result.written} block(s) written{resumed})")
    return 0


def _write_tif(path: Path, data: np.ndarray, overwrite: bool) -> None:
    import tifffile

    from ..utils.atomic import atomic_path

    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, np.asarray(data, np.float32), photometric="minisblack")


def write_objects(
    path: Path,
    table_path: Path,
    probabilities: np.ndarray,
    class_names: list[str],
    min_size: int,
    overwrite: bool,
) -> int:
    """Objects of ``(..., K, H, W)`` probabilities to a label TIFF and a CSV table; their count.

    Stacks are split plane by plane; ids stay unique over the whole stack and the
    table names each object's plane.
    """
    import csv
    import io

    import tifffile

    from ..inference.instances import find_instances
    from ..utils.atomic import atomic_path

    leading = probabilities.shape[:-3]
    planes = list(np.ndindex(*leading)) if leading else [()]
    labels = np.zeros((*leading, *probabilities.shape[-2:]), np.int64)
    index_names = ["slice"] if len(leading) == 1 else [f"slice_{k}" for k in range(len(leading))]
    rows: list[list] = []
    offset = 0
    for idx in planes:
        found = find_instances(probabilities[idx], class_names, min_size=min_size)
        plane = found.labels.astype(np.int64)
        labels[idx] = np.where(plane > 0, plane + offset, 0)
        feats = found.features
        for j in range(len(feats["label"])):
            rows.append(
                [int(feats["label"][j]) + offset, *idx, int(feats["area"][j]),
                 round(float(feats["centroid_y"][j]), 3), round(float(feats["centroid_x"][j]), 3)]
            )  # fmt: skip
        offset += found.count
    dtype = np.uint16 if offset < 65536 else np.uint32
    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib", photometric="minisblack")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["label", *(index_names if leading else []), "area", "centroid_y",
                     "centroid_x"])  # fmt: skip
    writer.writerows(rows)
    with atomic_path(table_path, overwrite) as tmp:
        tmp.write_text(text.getvalue())
    return offset
