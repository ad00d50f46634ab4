"""The "last" training checkpoint: everything needed to resume, written atomically, never pickled.

After every epoch the trainer writes ``<out>.last.safetensors``: one safetensors
file holding the model weights (``model/<name>``), the optimizer's state
tensors flattened to ``optim/<param index>/<name>`` and the random generator
states (``rng/...``). Everything that is not a tensor (epoch, step, best score,
history, optimizer hyper-parameters, scheduler and grad-scaler state, the
model description) is JSON, stored in the file's metadata; a readable copy is
written beside it as ``<out>.last.json``. The safetensors file is replaced in
one ``os.replace``, so a run that is cancelled or crashes leaves the previous
complete checkpoint behind; the metadata copy is the one :func:`load_checkpoint`
trusts, the sidecar is for people.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..models.model_file import ModelSpec
from ..utils.atomic import atomic_path

FORMAT = "napari-segen-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "napari_segen_checkpoint"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the run that wants to resume from it."""


def last_checkpoint_path(out_path: str | os.PathLike) -> Path:
    """``model.safetensors`` -> ``model.last.safetensors``: the resume checkpoint of a run."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.last.safetensors")


def checkpoint_sidecar(path: str | os.PathLike) -> Path:
    """The readable JSON copy beside a checkpoint (``model.last.json``)."""
    return Path(path).with_suffix(".json")


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        spec: the model description.
        model_state: the model's ``state_dict`` (CPU tensors).
        optimizer_state: an optimizer ``state_dict`` rebuilt from the flat tensors.
        scheduler_state: the LR scheduler's ``state_dict`` (JSON values only).
        scaler_state: the AMP grad scaler's ``state_dict``.
        train_state: epoch, step, best score/epoch/metrics, history, config...
        rng: random generator states (``torch``, ``cuda``, ``numpy``).
    """

    spec: ModelSpec
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    scaler_state: dict[str, Any]
    train_state: dict[str, Any]
    rng: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.train_state.get("epoch", 0))


def flatten_optimizer_state(
    state_dict: dict[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into flat tensors and a JSON-able rest.

    Tensors go to ``optim/<param index>/<name>``; non-tensor per-parameter
    values and the ``param_groups`` go to the returned dict.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if "/" in name:
                raise CheckpointError(f"optimizer state name {name!r} cannot be stored")
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = _jsonable(value)
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> dict[str, Any]:
    """Rebuild an optimizer ``state_dict`` from :func:`flatten_optimizer_state`'s output."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim/"):
            continue
        _, idx, name = key.split("/", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("state_scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CheckpointError(f"cannot store a {type(value).__name__} in a checkpoint")


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch (CPU and CUDA) and numpy global generator states as tensors + JSON."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, np.int64))
    return tensors, {"numpy": [name, int(pos), int(has_gauss), float(cached)]}


def restore_rng(ckpt: Checkpoint) -> None:
    """Put the generator states saved in ``ckpt`` back (CUDA only where the devices match)."""
    rng = ckpt.rng
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda/")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in rng and "numpy_meta" in rng:
        name, pos, has_gauss, cached = rng["numpy_meta"]
        keys = rng["numpy"].numpy().astype(np.uint32)
        np.random.set_state((name, keys, pos, has_gauss, cached))


def save_checkpoint(
    path: str | os.PathLike,
    module: nn.Module,
    spec: ModelSpec,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    train_state: dict[str, Any],
) -> Path:
    """Write a resumable checkpoint atomically (tensors in safetensors, the rest as JSON).

    The checkpoint belongs to the run, so an older one is replaced; the
    trainer refuses to start a new run over one without ``overwrite``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoints end in .safetensors, got {path.name}")
    module = module.module if hasattr(module, "module") else module  # unwrap DDP
    tensors = {
        f"model/{k}": v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()
    }
    optim_tensors, optim_meta = flatten_optimizer_state(optimizer.state_dict())
    tensors.update(optim_tensors)
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": spec.to_json(),
        "optimizer": optim_meta,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else {},
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None else {},
        "train": _jsonable(train_state),
        "rng": rng_meta,
    }
    text = json.dumps(meta)
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: text})
    with atomic_path(checkpoint_sidecar(path), overwrite=True) as tmp_json:
        tmp_json.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON part of a checkpoint (from the safetensors metadata, not the sidecar)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint to resume from: {path} does not exist (a run writes it after its "
            "first epoch); start without resume"
        )
    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a valid checkpoint ({err}); start without resume"
        ) from err
    if text is None:
        raise CheckpointError(f"{path} is not a napari-segen checkpoint; start without resume")
    meta = json.loads(text)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-segen checkpoint; start without resume")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer napari-segen; update it to resume")
    return meta


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU)."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a valid checkpoint ({err}); start without resume"
        ) from err
    model_state = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    rng = {k[len("rng/") :]: v for k, v in tensors.items() if k.startswith("rng/")}
    if "numpy" in meta.get("rng", {}):
        rng["numpy_meta"] = meta["rng"]["numpy"]
    return Checkpoint(
        spec=ModelSpec.from_json(meta["spec"], str(path)),
        model_state=model_state,
        optimizer_state=unflatten_optimizer_state(tensors, meta["optimizer"]),
        scheduler_state=meta.get("scheduler", {}),
        scaler_state=meta.get("scaler", {}),
        train_state=meta.get("train", {}),
        rng=rng,
    )
