"""What every training run shares: its files, seeds, device, mixed precision, clock and guards.

Both trainers (segmentation and pix2pix) are generators of progress events
(cancel = stop iterating) built on :class:`TrainingRun`; each keeps only its
own step, validation and what is specific to it.

A run writes two files: the model (``out``, a ``.safetensors`` model file with
its ``.json``) and the resumable checkpoint ``<stem>.last.safetensors`` beside
it (see :mod:`napari_segen.training.checkpoint`). Neither is replaced without
``overwrite``, except when resuming, which continues the run that wrote them.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..models.model_file import ModelSpec, save_model
from ..utils.atomic import check_writable, ensure_writable_dir
from ..utils.devices import resolve_device
from ..utils.jsonsafe import json_safe
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    last_checkpoint_path,
    legacy_resume_path,
    load_checkpoint,
    save_checkpoint,
)
from .distributed import broadcast_flag


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite: training diverged."""


class StepProgress:
    """What makes a trainer's event a progress event: ``done``/``total`` are its
    ``step``/``total_steps``, so a progress bar reads it like any
    :class:`~napari_segen.utils.generators.Progress`."""

    step: int
    total_steps: int

    @property
    def done(self) -> int:
        return self.step

    @property
    def total(self) -> int:
        return self.total_steps


def output_paths(
    out_path: str | os.PathLike | None, *, resume: bool, overwrite: bool, save_last: bool = True
) -> tuple[Path | None, Path | None]:
    """Check a run's output model path; return it and its last-checkpoint path.

    Without ``resume``, neither file may exist unless ``overwrite``. The folder must
    be writable (checked now, not when the first epoch is done).
    """
    if out_path is None:
        if resume:
            raise ValueError(
                "resuming needs the output model path whose last checkpoint to continue"
            )
        return None, None
    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise ValueError(f"the output model must end in .safetensors, got {out.name}")
    last = last_checkpoint_path(out)
    ensure_writable_dir(out.parent)
    if not resume:
        check_writable(out, overwrite)
        if save_last:
            check_writable(last, overwrite)
    return out, last


def seed_everything(seed: int | None, rank: int = 0) -> None:
    """Seed python's ``random``, numpy and torch with ``seed + rank`` (None: leave them)."""
    if seed is None:
        return
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def one_cycle(
    optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """A one-cycle schedule for any step count: 10% warm-up from ``max_lr / 25`` to
    ``max_lr``, then cosine down to ``max_lr / 2500``.

    torch's warm-up phase ends at step ``0.1 * total - 1``; at exactly 10 steps
    that is step 0 and the schedule divides by zero. Short runs warm up over 2
    steps instead (none at all under 4 steps).
    """
    total = max(int(total_steps), 1)
    pct = 0.1 if 0.1 * total >= 2 else (2 / total if total >= 4 else 0.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total, pct_start=pct, final_div_factor=100
    )


def base_provenance(
    config: Mapping[str, Any],
    train_names: Sequence[str],
    val_names: Sequence[str],
    started_from: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The facts every trained model file records (the caller's ``extra`` last, so it wins)."""
    return {
        "napari_segen_version": __version__,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_from": started_from,
        "train_images": list(train_names),
        "val_images": list(val_names),
        "config": dict(config),
        **(extra or {}),
    }


class TrainingRun:
    """One training run's shared machinery; the trainer owns the loop.

    Creating it checks the output files and seeds the generators; it then
    gives the device (``resolve_device``), mixed precision and channels-last
    set-up, the clock, the finite-loss guard, and the writes of the model file
    and the checkpoint (rank 0 only, never over a diverged model).

    Args:
        out_path: the model file (None: nothing is written).
        resume: continue from the checkpoint beside ``out_path``.
        overwrite: allow replacing the files of an earlier run.
        save_last: the run writes a checkpoint (its path is checked too).
        device: the user's choice (``"auto"``, ``"cpu"``, ``"cuda:1"``...).
        amp: mixed precision where the device has it (CUDA).
        channels_last: channels-last memory format (CUDA only).
        seed: seed of python, numpy and torch (plus ``rank``); None: not seeded.
        rank, world_size: this process in a distributed run; rank 0 writes.
        time_limit_s: the run's time budget in seconds (None: none).
    """

    def __init__(
        self,
        out_path: str | os.PathLike | None,
        *,
        resume: bool = False,
        overwrite: bool = False,
        save_last: bool = True,
        device: str | torch.device = "auto",
        amp: bool = True,
        channels_last: bool = False,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        time_limit_s: float | None = None,
    ) -> None:
        self.started = time.monotonic()
        self.out, self.last = output_paths(
            out_path, resume=resume, overwrite=overwrite, save_last=save_last
        )
        self.resume, self.overwrite, self.save_last = resume, overwrite, save_last
        self.rank, self.world_size = rank, world_size
        if time_limit_s is not None and not time_limit_s > 0:
            raise ValueError(
                f"the time limit must be a positive number of seconds, got {time_limit_s}; "
                "leave it out for no limit"
            )
        self.time_limit_s = time_limit_s
        seed_everything(seed, rank)
        self.device = resolve_device(device)
        self.amp = amp and self.device.type == "cuda"
        self.channels_last = channels_last and self.device.type == "cuda"
        self.writes = rank == 0 and self.out is not None
        self._model_written = False

    def ran_with(self) -> dict[str, Any]:
        """What the run actually used, for provenance: the config says what was asked
        (``amp=True`` is a request that only CUDA grants)."""
        return {
            "device": str(self.device),
            "amp": self.amp,
            "channels_last": self.channels_last,
            "processes": self.world_size,
        }

    # --- resume ------------------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint | None:
        """The checkpoint to resume from (None when not resuming)."""
        if not self.resume:
            return None
        assert self.out is not None and self.last is not None
        legacy = legacy_resume_path(self.out)
        if not self.last.is_file() and legacy.is_file():
            raise CheckpointError(
                f"cannot resume: {legacy.name} was made by an older version of napari-segen; "
                "start without resume (with overwrite to replace the old files)"
            )
        return load_checkpoint(self.last)

    # --- device ------------------------------------------------------------------------------
    def prepare(self, module: nn.Module) -> nn.Module:
        """``module`` on the run's device (channels-last where that is on)."""
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def to_device(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Batches on the run's device; 4D ones channels-last where that is on."""
        out = []
        for t in tensors:
            t = t.to(self.device, non_blocking=True)
            if self.channels_last and t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            out.append(t)
        return out

    def parallel(self, module: nn.Module) -> nn.Module:
        """``module`` wrapped in DistributedDataParallel in a distributed run (else itself)."""
        if self.world_size == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (so all ranks leave a loop together)."""
        if self.world_size == 1:
            return flag
        return broadcast_flag(flag, self.device if self.device.type == "cuda" else "cpu")

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision around a forward pass (a no-op without AMP)."""
        return torch.autocast(self.device.type, enabled=self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler for one optimiser (disabled without AMP)."""
        return torch.amp.GradScaler("cuda", enabled=self.amp)

    @staticmethod
    def optimise(
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        scheduler: Any = None,
    ) -> None:
        """One optimiser step on ``loss``: backward through the (AMP) scaler, step, schedule."""
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()

    # --- clock and guards --------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since the run started (this process, not counting resumed ones)."""
        return time.monotonic() - self.started

    def out_of_time(self, units_done: int = 0) -> bool:
        """Whether the time budget is spent; with ``units_done``, whether one more unit
        (epoch...) taking the mean time so far would overrun it."""
        if self.time_limit_s is None:
            return False
        elapsed = self.elapsed
        ahead = elapsed / units_done if units_done > 0 else 0.0
        return elapsed + ahead > self.time_limit_s

    @staticmethod
    def check_finite(loss: float, step: int, what: str = "loss") -> float:
        """``loss`` if finite; else stop the run (nothing of it is saved from here on)."""
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training {what} became {loss} at step {step}: training diverged; lower the "
                "learning rate (e.g. 10x) and train again (files saved before stay as they were)"
            )
        return loss

    def check_weights(self, modules: Mapping[str, nn.Module], step: int) -> None:
        """Refuse to save weights that hold NaN or infinity."""
        for name, module in modules.items():
            for key, t in module.state_dict().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    self.check_finite(float("nan"), step, f"{name} weight {key}")

    # --- files -------------------------------------------------------------------------------
    def save_model(self, module: nn.Module, spec: ModelSpec, step: int) -> Path | None:
        """Write the model file (rank 0, when there is one); provenance is made JSON-safe
        and records what the run used (:meth:`ran_with`)."""
        if not self.writes:
            return None
        self.check_weights({"model": module}, step)
        spec.provenance = json_safe({**spec.provenance, "ran_with": self.ran_with()})
        may_replace = self.overwrite or self.resume or self._model_written
        save_model(self.out, module, spec, overwrite=may_replace)
        self._model_written = True
        return self.out

    def save_checkpoint(
        self, step: int, *, modules: Mapping[str, nn.Module], **parts: Any
    ) -> Path | None:
        """Write the resumable checkpoint (rank 0, when the run keeps one).

        ``parts`` are the rest of
        :func:`~napari_segen.training.checkpoint.save_checkpoint`'s keyword arguments
        (``spec``, ``optimizers``, ``schedulers``, ``scalers``, ``train_state``).
        """
        if not (self.writes and self.save_last):
            return None
        self.check_weights(modules, step)
        return save_checkpoint(self.last, modules=modules, **parts)
