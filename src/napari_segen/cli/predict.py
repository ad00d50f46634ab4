"""``napari-segen predict``: segment image files or folders into label images (and objects)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    from ..inference.batch import BatchSettings, iter_predict_files, plan_batch
    from ..models import load_model
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
    settings = BatchSettings(
        tile_size=args.tile_size,
        halo=args.halo,
        batch_size=args.batch_size,
        device=device,
        tta=args.tta,
        format=args.format,
        probabilities=args.probabilities,
        uncertainty=args.uncertainty,
        instances=args.instances,
        min_object_size=args.min_object_size,
        overwrite=args.overwrite,
    )
    # Refuse before any work if an output exists, two outputs share a file or an output
    # would replace an input (the writes are create-exclusive as well). Headers only: the
    # images are read one at a time; a bad one is reported and skipped.
    skipped = SkippedInputs("predict")
    planned = plan_batch(files, out_dir, settings, on_skip=skipped.skip)
    bars: list = []  # the tile bar of the image being segmented

    def _close_bar() -> None:
        while bars:
            bars.pop()[0].close()

    def _show(event) -> None:
        if event.tiles is not None:
            if not bars:
                desc = f"[{event.done + 1}/{event.total}] {event.source.name}"
                bar = progress_bar(None, desc, args.quiet)
                bars.append((bar, follow(bar)))
            bars[0][1](event.tiles)
            return
        _close_bar()
        if event.error is not None:
            skipped.skip(event.source, event.error)
        elif event.written is not None:
            outputs = event.written.outputs
            line = f"{event.source} -> {outputs['labels']}"
            if args.instances:
                line += (
                    f", {event.written.objects} objects -> {outputs['objects'].name} + "
                    f"{outputs['table'].name}"
                )
            if not args.quiet or args.instances:  # the object count is a result, not progress
                print(line)

    try:
        drive(iter_predict_files(model, planned, settings), _show)
    finally:
        _close_bar()
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
