"""``napari-segen metrics``: SSIM/PSNR of images paired by name, FID/KID of the two folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..utils.generators import drive
from ..utils.jsonsafe import json_safe
from ._common import UserError, follow, progress_bar


def add_parser(sub) -> None:
    p = sub.add_parser(
        "metrics",
        help="score synthetic images against real ones (SSIM, PSNR, FID, KID)",
        description="Compare a folder of synthetic images with a folder of real ones. "
        "SSIM and PSNR score images paired by file name (stem, so 01.png matches 01.tif); "
        "FID and KID compare the two folders as sets. Without the FID Inception weights "
        "file, a labelled U-Net feature distance is shown instead (never called FID).",
    )
    p.add_argument("real_dir", help="folder of real (reference) images")
    p.add_argument("fake_dir", help="folder of synthetic images")
    p.add_argument(
        "--fid-weights",
        default=None,
        metavar="FILE",
        help="the FID Inception weights (weights-inception-2015-12-05-6726825d.pth); default: "
        "$NAPARI_SEGEN_FID_WEIGHTS or the torch hub cache. Never downloaded.",
    )
    p.add_argument(
        "--data-range",
        type=float,
        default=None,
        metavar="R",
        help="data range of float images, e.g. 1.0 for [0, 1] (integer images use their "
        "dtype's range: 255 for 8-bit, 65535 for 16-bit; or, with a warning, the range found "
        "in a pair that uses less than 1/8 of it, e.g. 0-235 stored as 16-bit)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    p.add_argument(
        "--kid-subset-size",
        type=int,
        default=None,
        help="images per KID subset (default: min(1000, smaller set))",
    )
    p.add_argument(
        "--feature-model",
        default=None,
        metavar="FILE",
        help="U-Net model file for the feature distance when there are no Inception weights "
        "(default: the bundled model)",
    )
    p.add_argument("--no-fid", action="store_true", help="only SSIM and PSNR (skip FID/KID)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _folder_images(folder: str) -> list[Path]:
    from ..data.files import list_images
    from ..data.image_io import ImageReadError

    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"not a folder: {path}; give two folders of images (real, synthetic)")
    try:
        files = list_images(path)
    except ImageReadError as err:
        raise UserError(str(err)) from err
    if not files:
        raise UserError(f"no image files in {path}")
    return files


def _drive(gen, desc: str, quiet: bool):
    """Run a metrics generator with a tqdm bar; return its result."""
    bar = progress_bar(None, desc, disable=quiet)
    try:
        return drive(gen, follow(bar))
    finally:
        bar.close()


def run(args: argparse.Namespace) -> int:
    from ..data.files import ImageFiles, pair_files_by_name
    from ..data.image_io import ImageReadError
    from ..metrics.features import FeatureWeightsError
    from ..metrics.image_quality import iter_paired_quality

    real_files = _folder_images(args.real_dir)
    fake_files = _folder_images(args.fake_dir)
    if args.data_range is not None and not args.data_range > 0:
        raise UserError(f"--data-range must be positive, got {args.data_range}")
    if args.fid_weights and not args.no_fid:
        from ..metrics.features import find_inception_weights

        find_inception_weights(args.fid_weights)  # a missing file is an error before any work
    pairs = pair_files_by_name(real_files, fake_files)
    quiet = args.json or not sys.stderr.isatty()
    out: dict[str, Any] = {
        "real_dir": str(args.real_dir),
        "fake_dir": str(args.fake_dir),
        "n_pairs": len(pairs),
        "unpaired_real": len(real_files) - len(pairs),
        "unpaired_fake": len(fake_files) - len(pairs),
    }
    try:
        if pairs:
            paired = _drive(
                iter_paired_quality(
                    ImageFiles(p[0] for p in pairs),
                    ImageFiles(p[1] for p in pairs),
                    args.data_range,
                ),
                "SSIM/PSNR",
                quiet,
            )
            out.update(paired)
        else:
            out["ssim"] = out["psnr"] = None
        if not args.no_fid:
            from ..metrics.fid import iter_set_distance

            dist = _drive(
                iter_set_distance(
                    ImageFiles(real_files),
                    ImageFiles(fake_files),
                    weights=args.fid_weights,
                    extractor=args.feature_model,
                    device=args.device,
                    batch_size=args.batch_size,
                    kid_subset_size=args.kid_subset_size,
                    data_range=args.data_range,
                ),
                "features",
                quiet,
            )
            out.update(dist)
    except (ImageReadError, FeatureWeightsError) as err:
        raise UserError(str(err)) from err
    if args.json:
        print(json.dumps(json_safe(out), indent=2, allow_nan=False))
        return 0
    print(format_report(out))
    return 0


def format_report(out: dict[str, Any]) -> str:
    """The plain-text report of a metrics run: how the files paired, then the figures."""
    from ..metrics.report import format_quality_report

    if out.get("ssim"):
        lines = [f"{out['n_pairs']} image pair(s) matched by name"]
    else:
        lines = ["no image pairs with the same name: SSIM and PSNR skipped"]
    if out.get("unpaired_real") or out.get("unpaired_fake"):
        use = "they count only for FID/KID" if "n_real" in out else "they were skipped"
        lines.append(
            f"({out['unpaired_real']} real and {out['unpaired_fake']} synthetic image(s) "
            f"have no partner of the same name; {use})"
        )
    lines.append(format_quality_report(out))
    return "\n".join(lines)
