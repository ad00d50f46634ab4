"""The segmentation trainer: a generator of progress events, usable from a GUI worker or the CLI.

One loop serves every front end: the napari Train widget runs it in a
``thread_worker`` (cancel = stop iterating), the CLI prints its events, and
``torchrun`` runs it under DistributedDataParallel (see ``training.distributed``).
Files, seeds, device, mixed precision, the clock and the finite-loss guard are
the shared :class:`~napari_segen.training.run.TrainingRun`'s.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..data.augment import AugmentConfig
from ..data.conventions import IGNORE_INDEX
from ..data.datasets import LabeledImage, SegmentationDataset, class_frequencies
from ..metrics.evaluate import evaluate_model, scores_to_metrics
from ..models.model_file import LoadedModel, ModelSpec
from ..models.registry import build_model
from .checkpoint import Checkpoint
from .losses import SegmentationLoss, auto_class_weights
from .run import StepProgress, TrainingRun, base_provenance, one_cycle

__all__ = [
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "new_unet_spec",
    "train_segmentation",
]


@dataclass
class TrainConfig:
    """Training settings with defaults that work for a few images on a CPU or GPU.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: crops per optimisation step.
        crop_size: square training crop edge in pixels.
        samples_per_epoch: crops per epoch (default: 8 per training image, at least 4 batches).
        lr: AdamW peak learning rate (one cycle: a short warm-up to it, then cosine-annealed).
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
class TrainEvent(StepProgress):
    """Progress of a training run.

    ``kind`` is ``"step"`` (after each optimisation step), ``"epoch"`` (after
    validation and checkpointing, with ``metrics``: loss, seconds and, with
    validation data, the scores) or ``"saved"`` (a new best model was written
    to ``message``). ``done``/``total`` (= ``step``/``total_steps``) feed a
    progress bar like any :class:`~napari_segen.utils.generators.Progress`.
    ``"step"`` events carry ``model``, the model being trained (live: copy it
    before predicting with it, e.g. a live preview between steps).
    """

    kind: str
    epoch: int
    step: int
    total_steps: int
    loss: float = float("nan")
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    model: LoadedModel | None = field(default=None, repr=False, compare=False)


@dataclass
class TrainResult:
    """How a run ended: the model file, best validation metrics, history per epoch.

    ``model`` is the trained model as it stands after the last epoch (in eval
    mode); the best one on validation is the file at ``path``.
    ``still_improving``: validation was best in the last epochs (see
    :func:`still_improving`), so more epochs would likely help.
    """

    path: Path | None
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    stopped_early: bool
    seconds: float
    model: LoadedModel | None = None
    still_improving: bool = False
    best_epoch: int = 0


def still_improving(best_epoch: int, last_epoch: int) -> bool:
    """Whether the best epoch is among the last 10% of the epochs run (at least the last 2)."""
    window = max(2, math.ceil(0.1 * last_epoch))
    return last_epoch > 0 and best_epoch > last_epoch - window


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


@dataclass
class _Standing:
    """Where a run stands after an epoch: what the checkpoint keeps besides the tensors."""

    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds_before: float = 0.0
    started_from: str = "scratch"

    def to_json(self, seconds: float, **more: Any) -> dict[str, Any]:
        # JSON has no -inf: "no score yet" is stored as null and read back as -inf.
        best = self.best_score if math.isfinite(self.best_score) else None
        return {
            **{k: v for k, v in asdict(self).items() if k != "seconds_before"},
            "best_score": best,
            "seconds": seconds,
            **more,
        }

    @classmethod
    def from_json(cls, ts: dict[str, Any]) -> _Standing:
        best = ts.get("best_score")
        return cls(
            epoch=int(ts.get("epoch", 0)),
            step=int(ts.get("step", 0)),
            best_score=float(best) if best is not None else -math.inf,
            best_epoch=int(ts.get("best_epoch", 0)),
            best_metrics=dict(ts.get("best_metrics", {})),
            history=list(ts.get("history", [])),
            seconds_before=float(ts.get("seconds", 0.0)),
            started_from=str(ts.get("started_from", "scratch")),
        )


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
    next step; the best model and the last checkpoint written so far stay. A
    loss that becomes NaN or infinite stops the run with a ValueError.

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
    run = TrainingRun(
        out_path, resume=resume, overwrite=overwrite, save_last=save_last, device=cfg.device,
        amp=cfg.amp, channels_last=cfg.channels_last, seed=cfg.seed, rank=rank,
        world_size=world_size, time_limit_s=cfg.time_limit_s,
    )  # fmt: skip
    spec, module, st = _start_model(start)
    _check_inputs(train_pairs, spec, cfg)
    ckpt = run.checkpoint()
    if ckpt is not None:
        _check_resumable(ckpt, spec, run.last)
        st = _Standing.from_json(ckpt.train_state)
    module = run.prepare(module)
    train_module = run.parallel(module)
    weights = _class_weights(cfg, train_pairs, spec.num_classes)
    loss_fn = SegmentationLoss(weights, cfg.dice_weight).to(run.device)
    dataset, sampler, loader = _loader(train_pairs, spec, cfg, run)
    total_steps = len(loader) * cfg.epochs
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = one_cycle(opt, cfg.lr, total_steps)
    scaler = run.grad_scaler()
    parts = dict(
        modules={"model": module}, optimizers={"optimizer": opt},
        schedulers={"scheduler": sched}, scalers={"scaler": scaler},
    )  # fmt: skip
    fixed = dict(
        epochs=cfg.epochs, steps_per_epoch=len(loader), total_steps=total_steps,
        out_path=str(run.out), world_size=world_size, config=_config_dict(cfg),
    )  # fmt: skip
    if ckpt is not None:
        _check_same_schedule(ckpt, total_steps, run.last)
        ckpt.restore(**parts)
        if ckpt.epoch >= cfg.epochs:
            module.eval()
            return TrainResult(run.out, st.best_metrics, st.history, False, 0.0)
    first_epoch, loaded, stopped_early = st.epoch + 1, LoadedModel(module, spec, run.out), False
    for epoch in range(first_epoch, cfg.epochs + 1):
        train_module.train()
        dataset.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        running = 0.0
        for batch in loader:
            x, y, *pixel_weight = run.to_device(*batch)  # pairs with weight maps add one
            with run.autocast():
                loss = loss_fn(train_module(x), y, *pixel_weight)
            run.optimise(loss, opt, scaler, sched)
            st.step += 1
            value = run.check_finite(float(loss.detach()), st.step)
            running += value
            yield TrainEvent("step", epoch, st.step, total_steps, value, model=loaded)
        epoch_loss = running / max(len(loader), 1)
        record = {"epoch": epoch, "loss": epoch_loss, "seconds": st.seconds_before + run.elapsed}
        improved = rank == 0 and _score_epoch(st, record, loaded, val_pairs, cfg, run)
        st.history.append(record)
        st.epoch = epoch
        saved = False
        if improved:
            spec.provenance = _provenance(cfg, train_pairs, val_pairs, st, provenance)
            saved = run.save_model(module, spec, st.step) is not None
        train_state = st.to_json(record["seconds"], **fixed)
        run.save_checkpoint(st.step, spec=spec, **parts, train_state=train_state)
        yield TrainEvent("epoch", epoch, st.step, total_steps, epoch_loss, record)
        if saved:
            yield TrainEvent(
                "saved", epoch, st.step, total_steps, epoch_loss, st.best_metrics, str(run.out)
            )
        patience = cfg.patience is not None and bool(val_pairs)
        stop = patience and epoch - st.best_epoch >= cfg.patience
        if run.agree(rank == 0 and (stop or run.out_of_time(epoch - first_epoch + 1))):
            stopped_early = epoch < cfg.epochs
            break
    module.eval()
    seconds = st.seconds_before + run.elapsed
    improving = bool(val_pairs) and still_improving(st.best_epoch, st.epoch)
    return TrainResult(
        run.out, st.best_metrics, st.history, stopped_early, seconds, loaded,
        improving, st.best_epoch,
    )  # fmt: skip


def _start_model(start: LoadedModel | ModelSpec) -> tuple[ModelSpec, nn.Module, _Standing]:
    """A copy of the start model (the caller's stays as it was), or a new one from a spec."""
    if isinstance(start, LoadedModel):
        spec = ModelSpec(**copy.deepcopy(asdict(start.spec)))
        module = copy.deepcopy(start.module)
        name = str(start.path) if start.path else start.spec.architecture
    else:
        spec = ModelSpec(**copy.deepcopy(asdict(start)))
        module = build_model(spec.architecture, **spec.arch_kwargs)
        name = "scratch"
    return spec, module, _Standing(started_from=name)


def _check_inputs(pairs: Sequence[LabeledImage], spec: ModelSpec, cfg: TrainConfig) -> None:
    if not pairs:
        raise ValueError("no training pairs: give at least one image with its mask")
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {cfg.epochs}")
    ncls = spec.num_classes
    for p in pairs:
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
    if not any((p.mask >= 0).any() for p in pairs):
        raise ValueError("the training masks hold no annotated pixel; paint some labels first")


def _class_weights(
    cfg: TrainConfig, pairs: Sequence[LabeledImage], ncls: int
) -> list[float] | None:
    if cfg.class_weights == "auto":
        return auto_class_weights(class_frequencies(pairs, ncls))
    if cfg.class_weights is None:
        return None
    weights = list(cfg.class_weights)
    if len(weights) != ncls:
        raise ValueError(f"{len(weights)} class weights given for {ncls} classes")
    return weights


def _loader(
    pairs: Sequence[LabeledImage], spec: ModelSpec, cfg: TrainConfig, run: TrainingRun
) -> tuple[SegmentationDataset, DistributedSampler | None, DataLoader]:
    """One epoch = ``spe`` random crops in all, split between the ranks by a DistributedSampler."""
    spe = cfg.samples_per_epoch or max(8 * len(pairs), 4 * cfg.batch_size)
    spe = max(spe, cfg.batch_size * run.world_size)
    dataset = SegmentationDataset(
        pairs, spec.in_channels, spec.normalization, cfg.crop_size, spe, cfg.augment, seed=cfg.seed
    )
    sampler = None
    if run.world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=run.world_size, rank=run.rank, shuffle=True, seed=cfg.seed or 0
        )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=cfg.num_workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
    )
    return dataset, sampler, loader


def _score_epoch(
    st: _Standing,
    record: dict[str, Any],
    model: LoadedModel,
    val_pairs: Sequence[LabeledImage],
    cfg: TrainConfig,
    run: TrainingRun,
) -> bool:
    """Validate (without validation data the score is -loss); True when this epoch is best."""
    model.module.eval()
    metrics: dict[str, Any] = {}
    score = -record["loss"]
    if val_pairs:
        scores = evaluate_model(model, val_pairs, cfg.val_tile_size, str(run.device))
        if not run.channels_last:  # prediction made the weights channels-last on the CPU;
            # training goes on in its own layout, so a resumed run stays bit-exact
            model.module.to(memory_format=torch.contiguous_format)
        metrics = scores_to_metrics(scores, model.spec.class_names)
        score = _selection_score(metrics)
    record.update(metrics)
    improved = score > st.best_score or st.best_epoch == 0
    if improved:
        st.best_score, st.best_metrics, st.best_epoch = score, metrics, record["epoch"]
    return improved


def _selection_score(metrics: dict[str, Any]) -> float:
    """Foreground Dice, else mean Dice, else -inf (nothing scorable in the validation masks)."""
    for key in ("foreground_dice", "mean_dice"):
        v = metrics.get(key)
        if v is not None and math.isfinite(v):
            return float(v)
    return -math.inf


def _check_resumable(ckpt: Checkpoint, spec: ModelSpec, path: Path | None) -> None:
    theirs = ckpt.spec
    if theirs is None or (theirs.architecture, theirs.arch_kwargs, list(theirs.class_names)) != (
        spec.architecture,
        spec.arch_kwargs,
        list(spec.class_names),
    ):
        what = f"a {theirs.architecture} {theirs.arch_kwargs} with classes " if theirs else "no "
        names = ", ".join(theirs.class_names) if theirs else "model"
        raise ValueError(
            f"the checkpoint {path} holds {what}{names}, not the model this run starts from; "
            "resume with the same model settings (or start from the checkpoint's description)"
        )


def _check_same_schedule(ckpt: Checkpoint, total_steps: int, path: Path | None) -> None:
    ts = ckpt.train_state
    if int(ts.get("total_steps", total_steps)) != total_steps:
        raise ValueError(
            f"the checkpoint {path.name if path else ''} was made for {ts.get('epochs')} epochs "
            f"of {ts.get('steps_per_epoch')} steps; resume with the same epochs, batch size, "
            "samples per epoch and training images"
        )


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    conf = {k: v for k, v in asdict(cfg).items() if k != "augment"}
    conf["augment"] = asdict(cfg.augment)
    return conf


def _provenance(
    cfg: TrainConfig,
    train_pairs: Sequence[LabeledImage],
    val_pairs: Sequence[LabeledImage],
    st: _Standing,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    conf = {k: v for k, v in asdict(cfg).items() if k != "augment"}
    facts = {
        "best_epoch": st.best_epoch,
        "epochs_run": len(st.history),
        "val_metrics": st.best_metrics,
        "augment": asdict(cfg.augment),
        **(extra or {}),
    }
    names = [p.name for p in train_pairs], [p.name for p in val_pairs]
    return base_provenance(conf, *names, st.started_from, facts)
