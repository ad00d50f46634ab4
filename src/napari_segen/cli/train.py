"""``napari-segen train``: train, fine-tune or resume a segmentation model.

Data come from folders of images and masks, a Pascal VOC folder, or an image
stack TIFF with its label stack TIFF (several sources may be combined). The
same command runs on several GPUs under ``torchrun ... --distributed``.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..utils.generators import drive
from ._common import (
    UserError,
    add_source_arguments,
    add_synthetic_arguments,
    progress_bar,
    resolve_model_path,
    sources_from_args,
    synthetic_from_args,
    validation_sources,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train, fine-tune or resume a segmentation model",
        description="Train a U-Net (or FCN) from scratch, or fine-tune an existing model file "
        "(--from), on image/mask folders, a Pascal VOC folder or TIFF stacks. The best model on "
        "the validation data is written atomically to --out (a .safetensors file plus its .json "
        "description); a resumable checkpoint <out>.last.safetensors is written after every "
        "epoch (--resume continues from it). Under torchrun, --distributed trains on several "
        "GPUs/processes.",
    )
    add_source_arguments(p)
    p.add_argument(
        "--val-images", help="folder of held-out validation images (instead of --val-split)"
    )
    p.add_argument("--val-masks", help="folder of held-out validation masks")
    p.add_argument(
        "--val-split",
        type=float,
        default=0.2,
        help="fraction of pairs held out for validation (default: 0.2)",
    )
    p.add_argument(
        "--replay-images",
        help="folder of images the start model was trained on: fine-tuning replays them "
        "(training only, no validation) so the model does not forget; with --replay-masks",
    )
    p.add_argument("--replay-masks", help="folder of the masks of --replay-images")
    p.add_argument(
        "--replay-share",
        type=float,
        default=0.5,
        help="share of the training crops drawn from the replay data (default: 0.5)",
    )
    add_synthetic_arguments(p)
    p.add_argument(
        "--from",
        dest="start",
        default=None,
        help="model file to fine-tune, or 'default' (default: train from scratch)",
    )
    p.add_argument(
        "--arch",
        default="unet",
        choices=["unet", "fcn_resnet50"],
        help="architecture when training from scratch (default: unet)",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names, class 0 first (default: VOC's 20+1 with --voc, "
        "else background,foreground or as many as the masks hold; with --from: the start "
        "model's). With --from, other names rename its classes (same count) or give it a new "
        "final layer (another count), keeping the rest of the model",
    )
    p.add_argument(
        "--in-channels",
        type=int,
        default=None,
        help="image channels (default: from the first image: 1 gray, 3 colour)",
    )
    p.add_argument("--depth", type=int, default=4, help="U-Net depth (default: 4)")
    p.add_argument("--base-channels", type=int, default=16, help="U-Net base width (default: 16)")
    p.add_argument(
        "--pretrained",
        default=None,
        help="local torchvision weights file for --arch fcn_resnet50 (nothing is downloaded)",
    )
    p.add_argument("--epochs", type=int, default=50, help="maximum epochs (default: 50)")
    p.add_argument("--samples-per-epoch", type=int, default=None, help="random crops per epoch")
    p.add_argument("--batch-size", type=int, default=4, help="crops per step (default: 4)")
    p.add_argument("--crop-size", type=int, default=256, help="training crop edge (default: 256)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    p.add_argument(
        "--dice-weight", type=float, default=0.5, help="soft-Dice loss weight (default: 0.5)"
    )
    p.add_argument(
        "--patience",
        type=int,
        default=15,
        help="stop after this many epochs without improvement (0: never; default: 15)",
    )
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-augment", action="store_true", help="plain random crops, no augmentation")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="data-loading worker processes (default: 0, crops made in the main process)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", "-o", required=True, help="output model file (.safetensors)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output model and its last checkpoint",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run that writes --out from its last checkpoint "
        "(<out>.last.safetensors), with that run's settings; give the same data",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="run as one process of a torchrun job (DistributedDataParallel; NCCL on "
        "GPUs, gloo on CPUs), e.g. torchrun --nproc_per_node=4 -m napari_segen.cli "
        "train ... --distributed",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)  # fmt: skip


def start_from_args(args: argparse.Namespace):
    """The start model the arguments ask for: a model file, or a new U-Net/FCN."""
    from ..training.assembly import NewModel

    if args.pretrained and (args.start or args.arch != "fcn_resnet50"):
        raise UserError("--pretrained applies to a new --arch fcn_resnet50 only")
    if args.start:
        return resolve_model_path(args.start)
    if args.arch == "unet":  # refuse a network that cannot fit before reading any data
        from ..models.model_file import ModelFileError, check_model_size

        unet = {"in_channels": args.in_channels or 3, "num_classes": 2, "depth": args.depth,
                "base_channels": args.base_channels}  # fmt: skip
        try:
            check_model_size("unet", unet)
        except ModelFileError as err:
            flags = f"--depth {args.depth} --base-channels {args.base_channels}"
            raise UserError(f"{flags}: {err}") from err
    return NewModel(args.arch, args.depth, args.base_channels, args.in_channels, args.pretrained)


def class_names_from_args(args: argparse.Namespace) -> list[str] | None:
    """``--classes`` as a list (None when not given)."""
    if not args.classes:
        return None
    return [c.strip() for c in args.classes.split(",") if c.strip()]


def check_synthetic_folders(args: argparse.Namespace, synthetic, start, sources: list) -> None:
    """Refuse wrong ``--synthetic-*`` folders in one line before any data is read or trained on
    (:func:`~napari_segen.training.synthetic_data.check_synthetic`)."""
    from ..training.assembly import start_spec
    from ..training.synthetic_data import check_synthetic_for_run

    names = None if args.resume else class_names_from_args(args)
    try:
        spec = start_spec(start)
        check_synthetic_for_run(synthetic, sources, spec, names, args.masks_are, args.instance_mode)
    except ValueError as err:
        raise UserError(str(err)) from err


def _config_from_args(args):
    from ..data.augment import AugmentConfig
    from ..training import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        samples_per_epoch=args.samples_per_epoch,
        lr=args.lr,
        dice_weight=args.dice_weight,
        device=args.device,
        seed=args.seed,
        patience=args.patience or None,
        time_limit_s=args.time_limit,
        num_workers=args.workers,
        augment=AugmentConfig(flips=False, rot90=False, intensity=0, elastic_p=0)
        if args.no_augment
        else AugmentConfig(),
    )


def _resume_setup(args):
    """(start spec, config) saved in the last checkpoint of ``--out``."""
    from ..data.augment import AugmentConfig
    from ..models import ModelSpec
    from ..training import TrainConfig
    from ..training.checkpoint import last_checkpoint_path, read_checkpoint_meta

    meta = read_checkpoint_meta(last_checkpoint_path(args.out))
    spec = ModelSpec.from_json(meta["spec"])
    # The run's provenance is written afresh; what the start model's classes were stays.
    spec.provenance = {k: v for k, v in spec.provenance.items() if k == "classes_changed_from"}
    saved = dict(meta["train"].get("config", {}))
    aug = AugmentConfig(**saved.pop("augment", {}))
    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in known}, augment=aug)
    cfg.device = args.device
    cfg.time_limit_s = args.time_limit
    cfg.num_workers = args.workers
    return spec, cfg, int(meta["train"].get("epoch", 0))


def run(args: argparse.Namespace) -> int:
    dist_info = None
    if args.distributed:
        from ..training.distributed import init_distributed

        dist_info = init_distributed(args.device)
    try:
        return _run(args, dist_info)
    finally:
        if dist_info is not None:
            from ..training.distributed import cleanup

            cleanup()


def _run(args, dist_info) -> int:
    from ..training import train_segmentation
    from ..training.assembly import assemble_segmentation

    rank = dist_info.rank if dist_info else 0
    world = dist_info.world_size if dist_info else 1
    main_rank = rank == 0

    def say(msg: str) -> None:
        if main_rank:
            print(msg, file=sys.stderr)

    if main_rank:  # an unwritable --out is found now, not after reading data and an epoch
        from pathlib import Path

        from ..utils.atomic import ensure_writable_dir

        ensure_writable_dir(Path(args.out).parent)
    sources = sources_from_args(args, "train")
    val_sources = validation_sources(args)
    synthetic = synthetic_from_args(args, say)
    if synthetic is not None and synthetic.mode == "pretrain":
        if args.resume:
            raise UserError("--resume continues the fine-tuning run; leave out "
                            "--synthetic-pretrain")  # fmt: skip
        if dist_info is not None:
            raise UserError("--synthetic-pretrain runs on one process; leave out --distributed")
    if args.resume:
        if args.start or args.pretrained:
            raise UserError("--resume continues the saved run; leave out --from and --pretrained")
        start, cfg, done = _resume_setup(args)
        say(f"resuming {args.out} after epoch {done} of {cfg.epochs}")
    else:
        start = start_from_args(args)
        cfg = _config_from_args(args)
    if synthetic is not None:
        check_synthetic_folders(args, synthetic, start, sources)
    assembled = drive(
        assemble_segmentation(
            sources,
            start=start,
            val_fraction=args.val_split,
            seed=cfg.seed or 0,
            val_sources=val_sources,
            class_names=None if args.resume else class_names_from_args(args),
            masks_are=args.masks_are,
            instance_mode=args.instance_mode,
            synthetic=synthetic,
        )
    )
    for note in assembled.notes:
        say(note)
    if args.replay_images or args.replay_masks:
        assembled.train, replayed = replay_pairs(args, assembled.train)
        share = f"~{args.replay_share:.0%} of the crops"
        say(f"replaying {replayed} image(s) of {args.replay_images}: {share}")
    if dist_info is not None:
        cfg.device = dist_info.device
        say(f"distributed: {world} processes ({dist_info.backend}), this is rank {rank}")
    provenance = {
        "command": "napari-segen " + " ".join(sys.argv[1:]) if sys.argv else "",
        "world_size": world,
        **(assembled.start.provenance if args.resume else {}),
        **assembled.provenance,
    }
    training = f"training on {len(assembled.train)} image(s), validating on {len(assembled.val)}"
    if assembled.pretrain:
        from ..training.synthetic_pretrain import pretrain_then_fine_tune

        def on_stage(ev) -> None:
            say(ev.message)
            if ev.stage == ev.stages:
                say(training)

        gen = pretrain_then_fine_tune(
            assembled, args.out, config=cfg, overwrite=args.overwrite, provenance=provenance
        )
        result = _drive(gen, args.quiet, True, on_stage)
    else:
        say(training)
        gen = train_segmentation(
            assembled.train,
            assembled.val,
            args.out,
            start=assembled.start,
            config=cfg,
            overwrite=args.overwrite,
            provenance=provenance,
            rank=rank,
            world_size=world,
            resume=args.resume,
        )
        result = _drive(gen, args.quiet or not main_rank, main_rank)
    if main_rank and result.still_improving:
        say(still_improving_message(result, args.out))
    if main_rank:
        print(
            json.dumps(
                {
                    "model": str(result.path),
                    "best": result.best_metrics.get("foreground_dice"),
                    "epochs": len(result.history),
                    "seconds": round(result.seconds, 1),
                    "still_improving": result.still_improving,
                }
            )
        )
    return 0


def pretrain_path(out: str):
    """Where ``--synthetic-pretrain`` writes the model of its first stage."""
    from ..training.synthetic_pretrain import pretrain_path as first_stage_path

    return first_stage_path(out)


def _drive(gen, quiet: bool, main_rank: bool, on_stage=None):
    """Run a training generator to its end with a progress bar and one line per epoch.

    A two-stage run (``--synthetic-pretrain``) gets a bar per stage; its stage-start
    events go to ``on_stage`` first, printed before that stage's bar."""
    bars: list = [] if on_stage is not None else [progress_bar(None, "training", quiet)]

    def _report(ev) -> None:
        if getattr(ev, "stage", None) is not None and on_stage is not None:
            for old in bars:
                old.close()
            on_stage(ev)
            bars[:] = [progress_bar(None, "training", quiet)]
            return
        if not bars:
            return
        bar = bars[0]
        if ev.kind == "step":
            bar.total = ev.total_steps
            bar.n = ev.step
            bar.set_postfix(epoch=ev.epoch, loss=f"{ev.loss:.3f}", refresh=True)
        elif ev.kind == "epoch" and main_rank:
            m = ev.metrics
            line = f"epoch {ev.epoch:3d}  loss {m['loss']:.4f}"
            if "foreground_dice" in m:
                line += (
                    f"  val dice {m['foreground_dice']:.4f}  mIoU {m['mean_iou']:.4f}"
                    f"  acc {m['pixel_accuracy']:.4f}"
                )
            bar.write(line)
        elif ev.kind == "saved" and main_rank:
            bar.write(f"  saved best model -> {ev.message}")

    try:
        return drive(gen, _report)
    finally:
        for bar in bars:
            bar.close()


def still_improving_message(result, out: str) -> str:
    """The line that says a run ended while validation was still getting better."""
    n = len(result.history)
    return (
        f"validation was still improving at the last epoch (best: epoch {result.best_epoch} "
        f"of {n}): train longer, e.g. run again with --from {out} --epochs {max(n, 10)} and a "
        "new --out (--resume only finishes the epochs the run was started with)"
    )


def replay_pairs(args: argparse.Namespace, train: list) -> tuple[list, int]:
    """The training pairs with ``--replay-images/--replay-masks`` (training only), balanced
    so the replay gets ``--replay-share`` of the crops; and how many replay pairs there are."""
    from ..data.corrections import with_replay
    from ..data.image_io import parse_value_map
    from ..data.sources import FolderSource

    if not (args.replay_images and args.replay_masks):
        raise UserError("give both --replay-images and --replay-masks")
    if not 0 < args.replay_share < 1:
        raise UserError(f"--replay-share must be between 0 and 1, got {args.replay_share}")
    value_map = parse_value_map(args.mask_map)
    old = FolderSource(args.replay_images, args.replay_masks, value_map, args.sparse).read()
    return with_replay(train, old.pairs, args.replay_share), len(old.pairs)
