"""Model files: weights in safetensors plus a JSON sidecar describing them.

``model.safetensors`` holds the tensors (no code); ``model.json`` beside it holds
the architecture name and arguments, the input channels, class names and
colours, the intensity normalisation and the training provenance. A copy of
the JSON is also stored in the safetensors metadata, so a lone ``.safetensors``
file still loads. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.atomic import atomic_path, check_writable
from ..utils.devices import resolve_device
from .registry import build_model

FORMAT = "napari-segen-model"
FORMAT_VERSION = 1
_META_KEY = "napari_segen"

# A colour for each class index; class 0 is background and drawn transparent by napari.
DEFAULT_COLORS = [
    None,
    "#ff3b30",
    "#34c759",
    "#007aff",
    "#ffcc00",
    "#af52de",
    "#ff9500",
    "#5ac8fa",
    "#ff2d55",
    "#a2845e",
    "#64d2ff",
    "#30d158",
    "#bf5af2",
    "#ffd60a",
    "#ff9f0a",
    "#8e8e93",
]


class ModelFileError(ValueError):
    """A model file is missing, corrupt or does not match its description."""


@dataclass
class ModelSpec:
    """What a model file says about its model.

    Attributes:
        architecture: a name from :func:`napari_segen.models.list_models`.
        arch_kwargs: keyword arguments for that architecture's builder.
        in_channels: image channels the model takes (1 grayscale, 3 RGB).
        class_names: one name per output class; index 0 is background.
        class_colors: hex colour per class (None = napari's default / transparent).
        normalization: how raw intensities become network input, see
            :func:`napari_segen.data.normalize.normalize_image`.
        task: ``"segmentation"`` or ``"synthesis"``.
        provenance: free-form record of how the model was made (data, epochs, metrics).
    """

    architecture: str
    arch_kwargs: dict[str, Any]
    in_channels: int
    class_names: list[str]
    class_colors: list[str | None] = field(default_factory=list)
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"mode": "percentile", "low": 1.0, "high": 99.8}
    )
    task: str = "segmentation"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.class_colors:
            self.class_colors = [
                DEFAULT_COLORS[i % len(DEFAULT_COLORS)] if i else None
                for i in range(len(self.class_names))
            ]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Any, source: str = "model description") -> ModelSpec:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(f"{source} is not a napari-segen model description")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ModelFileError(
                f"{source} was written by a newer napari-segen (format "
                f"{data['format_version']}); update napari-segen to read it"
            )
        known = set(cls.__dataclass_fields__)
        missing = {"architecture", "arch_kwargs", "in_channels", "class_names"} - set(data)
        if missing:
            raise ModelFileError(f"{source} lacks the field(s) {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class LoadedModel:
    """A model ready for use: the torch module (in eval mode) and its spec."""

    module: nn.Module
    spec: ModelSpec
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.stem if self.path else self.spec.architecture


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON description beside a ``.safetensors`` file."""
    return Path(path).with_suffix(".json")


def save_model(
    path: str | os.PathLike, module: nn.Module, spec: ModelSpec, overwrite: bool = False
) -> Path:
    """Write ``module``'s weights and ``spec`` atomically to ``path`` (+ its ``.json`` sidecar).

    Refuses to replace existing files unless ``overwrite`` is True.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"model files end in .safetensors, got {path.name}")
    check_writable(path, overwrite)
    check_writable(sidecar_path(path), overwrite)
    module = module.module if hasattr(module, "module") else module  # unwrap DDP
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    meta = json.dumps(spec.to_json())
    with atomic_path(path, overwrite) as tmp:
        save_file(state, str(tmp), metadata={_META_KEY: meta})
        with atomic_path(sidecar_path(path), overwrite) as tmp_json:
            tmp_json.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    return path


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """Read a model file's description (sidecar JSON, else the safetensors metadata)."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    side = sidecar_path(path)
    if side.is_file():
        try:
            data = json.loads(side.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFileError(f"{side} is not valid JSON ({err}); restore or delete it") from err
        return ModelSpec.from_json(data, str(side))
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not a valid safetensors file ({err})") from err
    if meta is None:
        raise ModelFileError(f"{path} has no description: put its {side.name} sidecar beside it")
    return ModelSpec.from_json(json.loads(meta), str(path))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model file into an eval-mode module on ``device``; never unpickles.

    Raises :class:`ModelFileError` with a readable reason for a missing, corrupt
    or mismatching file.
    """
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    spec = read_spec(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not a valid safetensors file ({err})") from err
    try:
        module = build_model(spec.architecture, **spec.arch_kwargs)
    except ValueError as err:
        raise ModelFileError(f"{path}: {err}") from err
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ModelFileError(
            f"{path}: the weights do not match the described {spec.architecture} ({first})"
        ) from err
    module.eval().to(resolve_device(device))
    return LoadedModel(module=module, spec=spec, path=path)
