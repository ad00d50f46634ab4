"""The segmentation trainer: a generator of progress events, usable from a GUI worker or the CLI.

One loop serves every front end: the napari Train widget runs it in a
``thread_worker`` (cancel = stop iterating), the CLI prints its events, and
``torchrun`` runs it under DistributedDataParallel (see ``training.distributed``).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .. import __version__
from ..data.augment import AugmentConfig
from ..data.datasets import LabeledImage, SegmentationDataset, class_frequencies
from ..inference.predict import predict
from ..metrics.segmentation import IGNORE_INDEX, SegmentationScores
from ..models.model_file import LoadedModel, ModelSpec, save_model
from ..models.registry import build_model
from ..utils.atomic import check_writable
from ..utils.devices import resolve_device
from .checkpoint import (
    Checkpoint,
    last_checkpoint_path,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .distributed import broadcast_flag
from .losses import SegmentationLoss, auto_class_weights


@dataclass
class TrainConfig:
    """Training settings with defaults that work for a few images on a CPU or GPU.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: crops per optimisation step.
        crop_size: square training crop edge in pixels.
        samples_per_epoch: crops per epoch (default: 8 per training image, at least 4 batches).
        lr: AdamW learning rate (cosine-annealed to 1% of it).
        weight_decay: AdamW weight decay.
        dice_weight: weight of the soft Dice term added to cross-entropy.
        class_weights: ``"auto"`` (inverse sqrt frequency), a list, or None.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        amp: mixed precision (CUDA only).
        channels_last: channels-last memory format (CUDA only).
        seed: seed for reproducible runs (None: not seeded).
        patience: stop after this many epochs without validation improvement (None: never).
        time_limit_s: stop before an epoch that would end after this many seconds
            (counted from the start of this run), keeping the best model so far.
        val_tile_size: tile size used when validating on whole images.
        num_workers: DataLoader worker processes (0: crops made in the training thread).
        augment: augmentation settings.
    """

    epochs: int = 50
    batch_size: int = 4
    crop_size: int = 256
    samples_per_epoch: int | None = None
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.5
    class_weights: str | list[float] | None = "auto"
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    seed: int | None = 0
    patience: int | None = 15
    time_limit_s: float | None = None
    val_tile_size: int = 512
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainEvent:
    """Progress of a training run.

    ``kind`` is ``"step"`` (after each optimisation step), ``"epoch"`` (after
    validation and checkpointing, with ``metrics``: loss, seconds and, with
    validation data, the scores) or ``"saved"`` (a new best model was written
    to ``message``).
    """

    kind: str
    epoch: int
    step: int
    total_steps: int
    loss: float = float("nan")
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


@dataclass
class TrainResult:
    """How a run ended: the model file, best validation metrics, history per epoch.

    ``model`` is the trained model as it stands after the last epoch (in eval
    mode); the best one on validation is the file at ``path``.
    """

    path: Path | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    stopped_early: bool
    seconds: float
    model: LoadedModel | None = None


def new_unet_spec(
    in_channels: int = 1,
    class_names: Sequence[str] = ("background", "foreground"),
    depth: int = 4,
    base_channels: int = 16,
) -> ModelSpec:
    """The description of a fresh U-Net for ``class_names``."""
    return ModelSpec(
        architecture="unet",
        arch_kwargs=dict(
            in_channels=in_channels,
            num_classes=len(class_names),
            depth=depth,
            base_channels=base_channels,
        ),
        in_channels=in_channels,
        class_names=list(class_names),
    )


def fg_dice(scores: SegmentationScores) -> float:
    """Mean Dice over the foreground classes (all classes but 0); the model-selection score."""
    d = scores.dice[1:] if scores.num_classes > 1 else scores.dice
    return float(np.nanmean(d)) if np.any(~np.isnan(d)) else float("nan")


def evaluate_model(
    model: LoadedModel, pairs: Sequence[LabeledImage], tile_size: int = 512, device: str = "auto"
) -> SegmentationScores:
    """Segment each pair's image whole-image-style (tiled) and score it against its mask."""
    scores = SegmentationScores(model.spec.num_classes)
    for p in pairs:
        pred = predict(model, p.image, rgb=p._is_rgb(), tile_size=tile_size, device=device)
        scores.update(pred.labels, p.mask)
    return scores


def scores_to_metrics(scores: SegmentationScores, class_names: Sequence[str]) -> dict[str, Any]:
    m = scores.as_dict(list(class_names))
    m["foreground_dice"] = fg_dice(scores)
    return m


def train_segmentation(
    train_pairs: Sequence[LabeledImage],
    val_pairs: Sequence[LabeledImage],
    out_path: str | os.PathLike | None,
    *,
    start: LoadedModel | ModelSpec,
    config: TrainConfig | None = None,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    resume: bool = False,
    save_last: bool = True,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train (or fine-tune) a segmentation model, yielding :class:`TrainEvent`s.

    Stopping the iteration (``close()``, a GUI cancel) stops training at the
    next step; the best model and the last checkpoint written so far stay.

    Args:
        train_pairs: training images with masks (``IGNORE_INDEX`` = unannotated).
        val_pairs: held-out pairs scored after each epoch (may be empty: then
            the model with the lowest epoch loss is kept).
        out_path: ``.safetensors`` file for the best model (None: nothing written).
        start: a loaded model to fine-tune (copied, not changed), or the spec of
            a new model to train from scratch.
        config: training settings.
        overwrite: allow replacing an existing ``out_path`` (and its last checkpoint).
        provenance: extra facts recorded in the model file (data sources...).
        rank, world_size: set by the distributed launcher; only rank 0 validates and writes.
        resume: continue from ``<out>.last.safetensors`` (model, optimizer,
            scheduler, epoch, best score, history); ``start`` must describe the same model.
        save_last: write the resumable last checkpoint after every epoch.
    """
    cfg = config or TrainConfig()
    t0 = time.monotonic()
    last_path = None
    if out_path is not None:
        out_path = Path(out_path)
        if out_path.suffix != ".safetensors":
            raise ValueError(f"the output model must end in .safetensors, got {out_path.name}")
        last_path = last_checkpoint_path(out_path)
        if not resume:
            check_writable(out_path, overwrite)
            if save_last:
                check_writable(last_path, overwrite)
    elif resume:
        raise ValueError("resuming needs the output model path whose last checkpoint to continue")
    if not train_pairs:
        raise ValueError("no training pairs: give at least one image with its mask")
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {cfg.epochs}")
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed + rank)
        np.random.seed(cfg.seed + rank)

    if isinstance(start, LoadedModel):
        spec = ModelSpec(**copy.deepcopy(asdict(start.spec)))
        module = copy.deepcopy(start.module)  # the caller's model stays as it was
        start_name = str(start.path) if start.path else start.spec.architecture
    else:
        spec = ModelSpec(**copy.deepcopy(asdict(start)))
        module = build_model(spec.architecture, **spec.arch_kwargs)
        start_name = "scratch"
    ckpt = None
    if resume:
        ckpt = load_checkpoint(last_path)
        _check_resumable(ckpt, spec, last_path)
        module.load_state_dict(ckpt.model_state)
        start_name = ckpt.train_state.get("started_from", start_name)
    ncls = spec.num_classes
    for p in train_pairs:
        top, low = int(p.mask.max()), int(p.mask.min())
        if top >= ncls:
            raise ValueError(
                f"{p.name or 'a training mask'} holds class {top} but the model has {ncls} classes "
                f"({', '.join(spec.class_names)}); add classes or fix the mask"
            )
        if low < 0 and ((p.mask < 0) & (p.mask != IGNORE_INDEX)).any():
            raise ValueError(
                f"{p.name or 'a training mask'} holds negative values; masks hold class indices "
                f"(0, 1, ...) and {IGNORE_INDEX} for unannotated pixels"
            )
    if not any((p.mask >= 0).any() for p in train_pairs):
        raise ValueError("the training masks hold no annotated pixel; paint some labels first")

    dev = resolve_device(cfg.device)
    use_amp = cfg.amp and dev.type == "cuda"
    module = module.to(dev)
    if cfg.channels_last and dev.type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    train_module: nn.Module = module
    if world_size > 1:
        train_module = nn.parallel.DistributedDataParallel(
            module, device_ids=[dev.index] if dev.type == "cuda" else None
        )

    freqs = class_frequencies(train_pairs, ncls)
    if cfg.class_weights == "auto":
        weights = auto_class_weights(freqs)
    elif cfg.class_weights is None:
        weights = None
    else:
        weights = list(cfg.class_weights)
        if len(weights) != ncls:
            raise ValueError(f"{len(weights)} class weights given for {ncls} classes")
    loss_fn = SegmentationLoss(weights, cfg.dice_weight).to(dev)

    # One epoch = `spe` random crops in all, split between the ranks by a DistributedSampler.
    spe = cfg.samples_per_epoch or max(8 * len(train_pairs), 4 * cfg.batch_size)
    spe = max(spe, cfg.batch_size * world_size)
    dataset = SegmentationDataset(
        train_pairs,
        spec.in_channels,
        spec.normalization,
        cfg.crop_size,
        spe,
        cfg.augment,
        seed=cfg.seed,
    )
    sampler = None
    if world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.seed or 0
        )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    steps_per_epoch = len(loader)
    total_steps = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=max(total_steps, 1), pct_start=0.1, final_div_factor=100
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    loaded = LoadedModel(module, spec, out_path)
    history: list[dict[str, Any]] = []
    best_score, best_metrics, best_epoch = -math.inf, {}, 0
    stopped_early = False
    step = 0
    saved_once = False
    first_epoch = 1
    seconds_before = 0.0
    if ckpt is not None:
        ts = ckpt.train_state
        if int(ts.get("total_steps", total_steps)) != total_steps:
            raise ValueError(
                f"the checkpoint {last_path.name} was made for {ts.get('epochs')} epochs of "
                f"{ts.get('steps_per_epoch')} steps; resume with the same epochs, batch size, "
                "samples per epoch and training images"
            )
        opt.load_state_dict(ckpt.optimizer_state)
        if ckpt.scheduler_state:
            sched.load_state_dict(ckpt.scheduler_state)
        if ckpt.scaler_state and use_amp:
            scaler.load_state_dict(ckpt.scaler_state)
        first_epoch = ckpt.epoch + 1
        step = int(ts.get("step", 0))
        best_score = float(ts.get("best_score", -math.inf))
        best_epoch = int(ts.get("best_epoch", 0))
        best_metrics = dict(ts.get("best_metrics", {}))
        history = list(ts.get("history", []))
        seconds_before = float(ts.get("seconds", 0.0))
        saved_once = out_path is not None and out_path.is_file()
        restore_rng(ckpt)
        if ckpt.epoch >= cfg.epochs:
            module.eval()
            return TrainResult(out_path, best_metrics, history, False, 0.0)

    for epoch in range(first_epoch, cfg.epochs + 1):
        train_module.train()
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        running = 0.0
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if cfg.channels_last and dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, enabled=use_amp):
                loss = loss_fn(train_module(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            value = float(loss.detach())
            running += value
            yield TrainEvent("step", epoch, step, total_steps, value)
        epoch_loss = running / max(steps_per_epoch, 1)
        seconds = seconds_before + time.monotonic() - t0
        record: dict[str, Any] = {"epoch": epoch, "loss": epoch_loss, "seconds": seconds}
        improved = False
        saved = False
        if rank == 0:
            module.eval()
            if val_pairs:
                scores = evaluate_model(loaded, val_pairs, cfg.val_tile_size, str(dev))
                metrics = scores_to_metrics(scores, spec.class_names)
                score = _selection_score(metrics)
                record.update(metrics)
            else:
                metrics, score = {}, -epoch_loss
            improved = score > best_score or best_epoch == 0
            if improved:
                best_score, best_metrics, best_epoch = score, metrics, epoch
        history.append(record)
        if rank == 0 and out_path is not None:
            if improved:
                spec.provenance = _provenance(
                    cfg,
                    train_pairs,
                    val_pairs,
                    start_name,
                    epoch,
                    best_metrics,
                    provenance,
                    history,
                )
                save_model(out_path, module, spec, overwrite=overwrite or saved_once or resume)
                saved_once = saved = True
            if save_last:
                state = {
                    "epoch": epoch,
                    "step": step,
                    "epochs": cfg.epochs,
                    "steps_per_epoch": steps_per_epoch,
                    "total_steps": total_steps,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "best_metrics": best_metrics,
                    "history": history,
                    "seconds": seconds,
                    "started_from": start_name,
                    "out_path": str(out_path),
                    "world_size": world_size,
                    "config": _config_dict(cfg),
                }
                save_checkpoint(last_path, module, spec, opt, sched, scaler, state)
        yield TrainEvent("epoch", epoch, step, total_steps, epoch_loss, record)
        if saved:
            yield TrainEvent(
                "saved", epoch, step, total_steps, epoch_loss, best_metrics, str(out_path)
            )
        elapsed = time.monotonic() - t0
        epochs_done = epoch - first_epoch + 1
        stop = False
        if rank == 0:
            if cfg.patience is not None and val_pairs and epoch - best_epoch >= cfg.patience:
                stop = True
            if cfg.time_limit_s is not None and elapsed + elapsed / epochs_done > cfg.time_limit_s:
                stop = True
        if world_size > 1:
            stop = broadcast_flag(stop, dev if dev.type == "cuda" else "cpu")
        if stop:
            stopped_early = epoch < cfg.epochs
            break
    module.eval()
    return TrainResult(
        out_path,
        best_metrics,
        history,
        stopped_early,
        seconds_before + time.monotonic() - t0,
        model=loaded,
    )


def _selection_score(metrics: dict[str, Any]) -> float:
    """Foreground Dice, else mean Dice, else -inf (nothing scorable in the validation masks)."""
    for key in ("foreground_dice", "mean_dice"):
        v = metrics.get(key)
        if v is not None and math.isfinite(v):
            return float(v)
    return -math.inf


def _check_resumable(ckpt: Checkpoint, spec: ModelSpec, path: Path | None) -> None:
    theirs = ckpt.spec
    if (theirs.architecture, theirs.arch_kwargs, list(theirs.class_names)) != (
        spec.architecture,
        spec.arch_kwargs,
        list(spec.class_names),
    ):
        raise ValueError(
            f"the checkpoint {path} holds a {theirs.architecture} {theirs.arch_kwargs} with "
            f"classes {', '.join(theirs.class_names)}, not the model this run starts from; "
            "resume with the same model settings (or start from the checkpoint's description)"
        )


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    conf = {k: v for k, v in asdict(cfg).items() if k != "augment"}
    conf["augment"] = asdict(cfg.augment)
    return conf


def _provenance(cfg, train_pairs, val_pairs, start_name, epoch, metrics, extra, history) -> dict:
    aug = asdict(cfg.augment)
    conf = {k: v for k, v in asdict(cfg).items() if k != "augment"}
    return {
        "napari_segen_version": __version__,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_from": start_name,
        "train_images": [p.name for p in train_pairs],
        "val_images": [p.name for p in val_pairs],
        "best_epoch": epoch,
        "epochs_run": len(history),
        "val_metrics": metrics,
        "config": conf,
        "augment": aug,
        **(extra or {}),
    }
