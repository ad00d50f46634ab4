"""The "last" training checkpoint: everything needed to resume, written atomically, never pickled.

Both trainers write ``<out>.last.safetensors`` beside their model file: one
safetensors file holding, for any number of named parts,

* module weights as ``module/<name>/<key>``,
* optimiser state tensors as ``optim/<name>/<param index>/<key>``,
* the random generator states as ``rng/python``, ``rng/numpy``, ``rng/torch``
  and ``rng/cuda/<device>`` (CUDA only once it is initialised).

Everything that is not a tensor (optimiser hyper-parameters, scheduler and
grad-scaler states, the model description, the trainer's own state: epoch,
step, best score, history...) is JSON in the file's metadata; a readable copy
is written beside it as ``<out>.last.json``. The safetensors file is replaced in
one ``os.replace``, so a cancelled or crashed run leaves the previous complete
checkpoint behind; :func:`load_checkpoint` trusts the metadata copy, the
sidecar is for people.

Version 1 (segmentation only, before both trainers shared this format) still
loads; the older pix2pix ``<out>.resume.safetensors`` does not (see
:func:`legacy_resume_path`).
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..models import model_file
from ..models.model_file import ModelFileError, ModelSpec, write_safetensors
from ..utils.atomic import atomic_path
from ..utils.jsonsafe import json_safe

FORMAT = "napari-segen-checkpoint"
FORMAT_VERSION = 2
_META_KEY = "napari_segen_checkpoint"
_START_OVER = "start without resume"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, too old or does not fit the run that wants it."""


class CheckpointMissingError(CheckpointError, FileNotFoundError):
    """There is no checkpoint to resume from."""


def last_checkpoint_path(out_path: str | os.PathLike) -> Path:
    """``model.safetensors`` -> ``model.last.safetensors``: the resume checkpoint of a run."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.last.safetensors")


def legacy_resume_path(out_path: str | os.PathLike) -> Path:
    """``model.resume.safetensors``: where pix2pix runs kept their state before format 2."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.resume.safetensors")


def checkpoint_sidecar(path: str | os.PathLike) -> Path:
    """The readable JSON copy beside a checkpoint (``model.last.json``)."""
    return Path(path).with_suffix(".json")


@dataclass
class Checkpoint:
    """A loaded checkpoint (tensors on the CPU).

    Attributes:
        spec: the description of the run's model (None when none was stored).
        modules: ``state_dict`` per module name.
        optimizers: optimiser ``state_dict`` per name, rebuilt from the flat tensors.
        schedulers: LR scheduler ``state_dict`` per name (JSON values only).
        scalers: AMP grad-scaler ``state_dict`` per name.
        train_state: what the trainer stored: epoch, step, best score, history...
        rng: random generator states (``python``, ``numpy``, ``torch``, ``cuda``).
        version: the format version the file was written in.
        path: the file it was read from.
    """

    spec: ModelSpec | None
    modules: dict[str, dict[str, torch.Tensor]]
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedulers: dict[str, dict[str, Any]] = field(default_factory=dict)
    scalers: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_state: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    path: Path | None = None

    @property
    def epoch(self) -> int:
        return int(self.train_state.get("epoch", 0))

    # The segmentation trainer's single parts, by the names it saves them under.
    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.modules.get("model", {})

    @property
    def optimizer_state(self) -> dict[str, Any]:
        return self.optimizers.get("optimizer", {})

    @property
    def scheduler_state(self) -> dict[str, Any]:
        return self.schedulers.get("scheduler", {})

    @property
    def scaler_state(self) -> dict[str, Any]:
        return self.scalers.get("scaler", {})

    def restore(
        self,
        modules: Mapping[str, nn.Module] | None = None,
        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
        schedulers: Mapping[str, Any] | None = None,
        scalers: Mapping[str, Any] | None = None,
    ) -> None:
        """Load the saved states into live objects by name, then the random generators.

        A scaler that is disabled (no AMP on this device) keeps its fresh state.
        """
        for kind, saved, live in (
            ("module", self.modules, modules),
            ("optimizer", self.optimizers, optimizers),
        ):
            for name, obj in (live or {}).items():
                if name not in saved:
                    raise CheckpointError(f"{self.path} holds no {kind} {name!r}; {_START_OVER}")
                obj.load_state_dict(saved[name])
        for name, sched in (schedulers or {}).items():
            if self.schedulers.get(name):
                sched.load_state_dict(self.schedulers[name])
        for name, scaler in (scalers or {}).items():
            if self.scalers.get(name) and scaler.is_enabled():
                scaler.load_state_dict(self.scalers[name])
        restore_rng(self)


def flatten_optimizer_state(
    state_dict: dict[str, Any], prefix: str = "optim"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into flat tensors and a JSON-able rest.

    Tensors go to ``<prefix>/<param index>/<name>``; non-tensor per-parameter
    values and the ``param_groups`` go to the returned dict.
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if "/" in name:
                raise CheckpointError(f"optimizer state name {name!r} cannot be stored")
            if torch.is_tensor(value):
                tensors[f"{prefix}/{idx}/{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = json_safe(value)
    groups = json_safe(state_dict["param_groups"])
    return tensors, {"param_groups": groups, "state_scalars": scalars}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str = "optim"
) -> dict[str, Any]:
    """Rebuild an optimizer ``state_dict`` from :func:`flatten_optimizer_state`'s output."""
    head = prefix + "/"
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(head) and key.count("/", len(head)) == 1:
            idx, name = key[len(head) :].split("/")
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


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """All global generator states (python, numpy, torch CPU, CUDA) as tensors + JSON."""
    version, py_keys, gauss = random.getstate()
    np_name, np_keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "rng/python": torch.tensor(py_keys, dtype=torch.int64),
        "rng/numpy": torch.from_numpy(np.asarray(np_keys, np.int64)),
        "rng/torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    meta = {"python": [version, gauss], "numpy": [np_name, int(pos), int(has_gauss), cached]}
    return tensors, meta


def restore_rng(ckpt: Checkpoint) -> None:
    """Put the generator states saved in ``ckpt`` back (CUDA only where the devices match)."""
    rng = ckpt.rng
    if "python" in rng:
        random.setstate(rng["python"])
    if "numpy" in rng:
        np.random.set_state(rng["numpy"])
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda", [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    spec: ModelSpec | None,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    scalers: Mapping[str, Any] | None = None,
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a resumable checkpoint atomically (tensors in safetensors, the rest as JSON).

    The checkpoint belongs to the run, so an older one is replaced; the
    trainers refuse to start a new run over one without ``overwrite``.
    ``spec`` describes the first of ``modules``. Values JSON cannot hold (NaN,
    infinities) are stored as ``null``: a trainer that needs one back stores it
    explicitly.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoints end in .safetensors, got {path.name}")
    optimizers, schedulers, scalers = optimizers or {}, schedulers or {}, scalers or {}
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        _check_name(name)
        module = module.module if hasattr(module, "module") else module  # unwrap DDP
        for k, v in module.state_dict().items():
            tensors[f"module/{name}/{k}"] = v.detach().to("cpu").contiguous()
    optim_meta = {}
    for name, opt in optimizers.items():
        _check_name(name)
        flat, optim_meta[name] = flatten_optimizer_state(opt.state_dict(), f"optim/{name}")
        tensors.update(flat)
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    meta = json_safe(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "napari_segen_version": __version__,
            "spec": spec.to_json() if spec is not None else None,
            "modules": list(modules),
            "optimizers": optim_meta,
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "scalers": {k: s.state_dict() for k, s in scalers.items()},
            "train": dict(train_state or {}),
            "rng": rng_meta,
        }
    )
    text = json.dumps(meta, allow_nan=False)
    with atomic_path(path, overwrite=True) as tmp:
        write_safetensors(tensors, tmp, {_META_KEY: text}, path, save=save_file)
    with atomic_path(checkpoint_sidecar(path), overwrite=True) as tmp_json:
        tmp_json.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _check_name(name: str) -> None:
    if not name or "/" in name:
        raise CheckpointError(f"a checkpoint part needs a name without '/', got {name!r}")


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON part of a checkpoint (from the safetensors metadata, not the sidecar).

    The model description is checked against the stored weights' shapes
    before anything is built from it (see :func:`check_spec_fits`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointMissingError(
            f"cannot resume: there is no checkpoint to resume from: {path} does not exist (a run "
            f"writes it as it goes); {_START_OVER}"
        )
    try:
        with safe_open(str(path), "pt") as f:
            text = (f.metadata() or {}).get(_META_KEY)
            sizes = {k: math.prod(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a valid checkpoint ({err}); {_START_OVER}") from err
    try:
        meta = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        meta = None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(version, int):
        raise CheckpointError(f"{path} is not a napari-segen checkpoint; {_START_OVER}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer napari-segen; update it to resume")
    if version < 1:
        raise CheckpointError(f"{path} was made by an older version of napari-segen; {_START_OVER}")
    spec = meta.get("spec")
    if spec:
        first = "model/" if version == 1 else f"module/{(meta.get('modules') or [''])[0]}/"
        stored = sum(n for k, n in sizes.items() if k.startswith(first))
        try:
            arch, kwargs = spec["architecture"], dict(spec["arch_kwargs"])
        except (KeyError, TypeError, ValueError) as err:
            broken = f"{path} holds a broken model description; {_START_OVER}"
            raise CheckpointError(broken) from err
        check_spec_fits(arch, kwargs, stored, path)
    return meta


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (or a version-1 one)."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    try:
        spec = ModelSpec.from_json(meta["spec"], str(path)) if meta.get("spec") else None
    except (ModelFileError, TypeError) as err:
        raise CheckpointError(f"{err}; {_START_OVER}") from err
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a valid checkpoint ({err}); {_START_OVER}") from err
    if meta["format_version"] == 1:
        ckpt = _from_version_1(tensors, meta, spec)
    else:
        ckpt = Checkpoint(
            spec=spec,
            modules={n: _sub(tensors, f"module/{n}/") for n in meta.get("modules", [])},
            optimizers={
                n: unflatten_optimizer_state(tensors, m, f"optim/{n}")
                for n, m in meta.get("optimizers", {}).items()
            },
            schedulers=meta.get("schedulers", {}),
            scalers=meta.get("scalers", {}),
            train_state=meta.get("train", {}),
            rng=_rng_from(tensors, meta.get("rng", {})),
        )
    ckpt.version, ckpt.path = meta["format_version"], path
    return ckpt


def check_spec_fits(
    architecture: str,
    arch_kwargs: dict[str, Any],
    stored_values: int,
    path: str | os.PathLike | None = None,
) -> None:
    """Refuse a description whose network would not hold exactly ``stored_values`` numbers.

    The one check model files use too
    (:func:`napari_segen.models.model_file.check_spec_fits`: built on the ``meta``
    device, no memory), as a :class:`CheckpointError`.
    """
    try:
        model_file.check_spec_fits(architecture, arch_kwargs, stored_values, path)
    except ModelFileError as err:
        raise CheckpointError(f"{err}; {_START_OVER}") from err


def _sub(tensors: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


def _rng_from(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    rng: dict[str, Any] = {}
    if "rng/python" in tensors and "python" in meta:
        version, gauss = meta["python"]
        rng["python"] = (version, tuple(tensors["rng/python"].tolist()), gauss)
    if "rng/numpy" in tensors and "numpy" in meta:
        name, pos, has_gauss, cached = meta["numpy"]
        keys = tensors["rng/numpy"].numpy().astype(np.uint32)
        rng["numpy"] = (name, keys, pos, has_gauss, cached if cached is not None else 0.0)
    if "rng/torch" in tensors:
        rng["torch"] = tensors["rng/torch"]
    cuda = _sub(tensors, "rng/cuda/")
    if cuda:
        rng["cuda"] = [cuda[k] for k in sorted(cuda, key=int)]
    return rng


def _from_version_1(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], spec: ModelSpec | None
) -> Checkpoint:
    """A version-1 (segmentation-only) checkpoint in today's terms."""
    return Checkpoint(
        spec=spec,
        modules={"model": _sub(tensors, "model/")},
        optimizers={"optimizer": unflatten_optimizer_state(tensors, meta["optimizer"], "optim")},
        schedulers={"scheduler": meta.get("scheduler", {})},
        scalers={"scaler": meta.get("scaler", {})},
        train_state=meta.get("train", {}),
        rng=_rng_from(tensors, meta.get("rng", {})),
    )
