"""Model files: weights in safetensors plus a JSON sidecar describing them.

``model.safetensors`` holds the tensors (no code); ``model.json`` beside it holds
the architecture name and arguments, the input channels, class names and
colours, the intensity normalisation and the training provenance. A copy of
the JSON is also stored in the safetensors metadata, so a lone ``.safetensors``
file still loads. Nothing is ever unpickled.

Loading checks, in this order and before any weight is allocated:

1. the description (sidecar, else the stored copy) has the right types and
   value ranges (:meth:`ModelSpec.from_json`);
2. the network it describes, built on the ``meta`` device (no memory), holds
   exactly the tensors of the weights file, name for name and shape for shape
   (:func:`check_weights_fit`), so an edited ``base_channels: 4096`` is refused
   before a 5 GB network is built;
3. the sidecar and the stored copy agree (an edited sidecar does not silently
   override the file it sits beside).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..utils.atomic import atomic_paths, check_writable
from ..utils.devices import resolve_device
from .registry import build_model, list_models

FORMAT = "napari-segen-model"
FORMAT_VERSION = 1
_META_KEY = "napari_segen"

#: Largest JSON description read (a sidecar with a long provenance is a few hundred KB).
MAX_DESCRIPTION_BYTES = 64 * 2**20
#: Most classes a model may have (labels are written as 16-bit images).
MAX_CLASSES = 65535
TASKS = ("segmentation", "synthesis")
NORMALIZATION_MODES = ("percentile", "range", "none")
#: Bounds of the integer architecture arguments a model file may ask for (the weights
#: must then fit exactly); they keep even the ``meta``-device check cheap.
ARCH_INT_LIMITS = {
    "in_channels": (1, 4),
    "out_channels": (1, 4),
    "image_channels": (1, 4),
    "num_classes": (1, MAX_CLASSES),
    "depth": (1, 12),
    "base_channels": (1, 4096),
    "ngf": (1, 4096),
    "ndf": (1, 4096),
    "n_layers": (1, 10),
}

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
        """A spec from a JSON description; :class:`ModelFileError` (a sentence) if it is
        not one, or any field has the wrong type or an impossible value."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(f"{source} is not a napari-segen model description")
        version = data.get("format_version", 0)
        if not _is_int(version):
            raise ModelFileError(f"{source}: format_version must be a whole number")
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{source} was written by a newer napari-segen (format "
                f"{data['format_version']}); update napari-segen to read it"
            )
        known = set(cls.__dataclass_fields__)
        missing = {"architecture", "arch_kwargs", "in_channels", "class_names"} - set(data)
        if missing:
            raise ModelFileError(f"{source} lacks the field(s) {', '.join(sorted(missing))}")
        fields = {k: v for k, v in data.items() if k in known}
        _check_fields(fields, source)
        return cls(**fields)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _shown(v: Any) -> str:
    text = json.dumps(v) if isinstance(v, str | int | float | bool | type(None)) else None
    return text[:60] if text else type(v).__name__


def _check_fields(d: dict[str, Any], source: str) -> None:
    """Types, ranges and agreement of a description's fields (see :class:`ModelSpec`)."""

    fix = (
        "delete it to use the description stored in the .safetensors file, or restore it"
        if source.endswith(".json")
        else "the file is damaged: restore it or train the model again"
    )

    def bad(name: str, want: str, value: Any) -> ModelFileError:
        return ModelFileError(f"{source}: {name} must be {want}, not {_shown(value)}; {fix}")

    arch = d["architecture"]
    if not isinstance(arch, str):
        raise bad("architecture", "a name", arch)
    if arch not in list_models():
        raise ModelFileError(
            f"{source}: unknown architecture {arch!r} (known: {', '.join(list_models())}); "
            "a newer napari-segen may read it"
        )
    kwargs = d["arch_kwargs"]
    _check_arch_kwargs(kwargs, bad, ARCH_INT_LIMITS)
    in_ch = d["in_channels"]
    if not _is_int(in_ch) or not 1 <= in_ch <= 4:
        raise bad("in_channels", "a whole number from 1 to 4", in_ch)
    names = d["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of names", names)
    if not 1 <= len(names) <= MAX_CLASSES:
        raise bad("class_names", f"1 to {MAX_CLASSES} names", len(names))
    colors = d.get("class_colors", [])
    if not isinstance(colors, list) or not all(isinstance(c, str | type(None)) for c in colors):
        raise bad("class_colors", "a list of colours (text or null)", colors)
    if colors and len(colors) != len(names):
        raise bad("class_colors", f"one colour per class ({len(names)})", len(colors))
    _check_normalization(d.get("normalization", {"mode": "percentile"}), bad)
    task = d.get("task", "segmentation")
    if task not in TASKS:
        raise bad("task", " or ".join(TASKS), task)
    if not isinstance(d.get("provenance", {}), dict):
        raise bad("provenance", "an object", d.get("provenance"))
    # the builder arguments and the description must tell the same story
    same = {"in_channels": in_ch, "num_classes": len(names)}
    if task == "synthesis":
        same["out_channels"] = in_ch
    for key, want in same.items():
        if key in kwargs and kwargs[key] != want:
            raise ModelFileError(
                f"{source}: arch_kwargs.{key} is {kwargs[key]} but the description says "
                f"{want}; {fix}"
            )


def _check_arch_kwargs(kwargs: Any, bad, limits: Mapping[str, tuple[int, int]]) -> None:
    if not isinstance(kwargs, dict):
        raise bad("arch_kwargs", "an object of builder arguments", kwargs)
    for key, value in kwargs.items():
        if not isinstance(value, str | bool | type(None)) and not _is_number(value):
            raise bad(f"arch_kwargs.{key}", "a number, text, true/false or null", value)
        if key in limits:
            lo, hi = limits[key]
            if not _is_int(value) or not lo <= value <= hi:
                raise bad(f"arch_kwargs.{key}", f"a whole number from {lo} to {hi}", value)
        if key == "dropout" and not (_is_number(value) and 0 <= value <= 1):
            raise bad("arch_kwargs.dropout", "a number from 0 to 1", value)


def _check_normalization(norm: Any, bad) -> None:
    if not isinstance(norm, dict):
        raise bad("normalization", "an object", norm)
    mode = norm.get("mode", "percentile")
    if mode not in NORMALIZATION_MODES:
        raise bad("normalization.mode", " or ".join(NORMALIZATION_MODES), mode)
    for key in ("low", "high", "min", "max"):
        if key in norm and not _is_number(norm[key]):
            raise bad(f"normalization.{key}", "a finite number", norm[key])
    low, high = norm.get("low", 1.0), norm.get("high", 99.8)
    if mode == "percentile" and not 0 <= low < high <= 100:
        raise bad("normalization low/high", "percentiles with 0 <= low < high <= 100", [low, high])
    if "min" in norm and "max" in norm and not norm["min"] < norm["max"]:
        raise bad("normalization min/max", "a range with min < max", [norm["min"], norm["max"]])
    if "output_dtype" in norm:
        try:
            dtype = np.dtype(norm["output_dtype"])
        except (TypeError, ValueError):
            dtype = np.dtype(object)
        if dtype.kind not in "biuf" or not isinstance(norm["output_dtype"], str):
            raise bad("normalization.output_dtype", "a numeric type name", norm["output_dtype"])


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


# --- sizes before building -------------------------------------------------------------------
def expected_weights(
    architecture: str, arch_kwargs: Mapping[str, Any], source: str | os.PathLike = "model"
) -> dict[str, tuple[int, ...]]:
    """The tensors (name -> shape) a network of this description holds.

    The network is built on the ``meta`` device: no memory is allocated, so a
    damaged or edited description asking for billions of weights costs nothing.
    """

    def bad(name: str, want: str, value: Any) -> ModelFileError:
        return ModelFileError(f"{source}: {name} must be {want}, not {_shown(value)}")

    # widths cost nothing on the meta device; the number of levels costs time
    _check_arch_kwargs(arch_kwargs, bad, {k: ARCH_INT_LIMITS[k] for k in ("depth", "n_layers")})
    try:
        with torch.device("meta"):
            module = build_model(architecture, **dict(arch_kwargs))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ModelFileError(f"{source}: {err}") from err
    return {k: tuple(t.shape) for k, t in module.state_dict().items()}


#: Most weights a network napari-segen builds new may hold (4 GB as float32).
MAX_PARAMETERS = 1_000_000_000


def check_model_size(architecture: str, arch_kwargs: Mapping[str, Any]) -> int:
    """The number of weights of a new network, counted on the ``meta`` device; a
    :class:`ModelFileError` when it is above :data:`MAX_PARAMETERS` or an argument is
    outside :data:`ARCH_INT_LIMITS` (before anything is allocated)."""
    source = f"a new {architecture}"

    def bad(name: str, want: str, value: Any) -> ModelFileError:
        return ModelFileError(f"{source}: {name} must be {want}, not {_shown(value)}")

    _check_arch_kwargs(dict(arch_kwargs), bad, ARCH_INT_LIMITS)
    count = sum(math.prod(s) for s in expected_weights(architecture, arch_kwargs, source).values())
    if count > MAX_PARAMETERS:
        raise ModelFileError(
            f"{source} with {', '.join(f'{k}={v}' for k, v in arch_kwargs.items())} would hold "
            f"{count:,} weights ({count * 4 / 2**30:.1f} GiB), more than the {MAX_PARAMETERS:,} "
            "napari-segen builds; choose a smaller depth or width"
        )
    return count


def check_spec_fits(
    architecture: str,
    arch_kwargs: Mapping[str, Any],
    stored_values: int,
    path: str | os.PathLike | None = None,
) -> None:
    """Refuse a description whose network would not hold exactly ``stored_values`` numbers.

    Checked on the ``meta`` device (see :func:`expected_weights`), before anything is built.
    """
    wanted = sum(math.prod(s) for s in expected_weights(architecture, arch_kwargs, path).values())
    if wanted != stored_values:
        raise ModelFileError(
            f"{path} describes a {architecture} of {wanted:,} values but holds "
            f"{stored_values:,}; the file is damaged or edited"
        )


def check_weights_fit(
    spec: ModelSpec, shapes: Mapping[str, tuple[int, ...]], path: str | os.PathLike
) -> None:
    """Refuse weights that are not, name for name and shape for shape, the described network's."""
    want = expected_weights(spec.architecture, spec.arch_kwargs, path)
    missing = sorted(want.keys() - shapes.keys())
    extra = sorted(shapes.keys() - want.keys())
    wrong = sorted(k for k in want.keys() & shapes.keys() if tuple(shapes[k]) != want[k])
    if missing or extra or wrong:
        why = []
        if missing:
            why.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if extra:
            why.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
        if wrong:
            k = wrong[0]
            why.append(f"{len(wrong)} of another shape, e.g. {k} {tuple(shapes[k])} not {want[k]}")
        raise ModelFileError(
            f"{path}: the weights do not match the described {spec.architecture} "
            f"({'; '.join(why)}); the description or the weights were changed"
        )


# --- writing ---------------------------------------------------------------------------------
def write_safetensors(
    tensors: Mapping[str, torch.Tensor],
    tmp: str | os.PathLike,
    metadata: Mapping[str, str],
    target: str | os.PathLike,
    save=None,
) -> None:
    """``save_file`` (or ``save``) into ``tmp``; a failed write (disk full...) is an OSError
    naming ``target``."""
    try:
        (save or save_file)(dict(tensors), str(tmp), metadata=dict(metadata))
    except SafetensorError as err:
        text = str(err)
        code = re.search(r"code: (\d+)", text)
        message = re.search(r'message: "([^"]+)"', text)
        raise OSError(
            int(code[1]) if code else errno.EIO,
            message[1] if message else f"cannot write safetensors ({text.splitlines()[0]})",
            str(target),
        ) from err


def save_model(
    path: str | os.PathLike, module: nn.Module, spec: ModelSpec, overwrite: bool = False
) -> Path:
    """Write ``module``'s weights and ``spec`` atomically to ``path`` (+ its ``.json`` sidecar).

    Refuses to replace existing files unless ``overwrite`` is True; the two
    files appear together or not at all.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"model files end in .safetensors, got {path.name}")
    check_writable(path, overwrite)
    check_writable(sidecar_path(path), overwrite)
    module = module.module if hasattr(module, "module") else module  # unwrap DDP
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    meta = json.dumps(spec.to_json())
    with atomic_paths([path, sidecar_path(path)], overwrite) as (tmp, tmp_json):
        write_safetensors(state, tmp, {_META_KEY: meta}, path)
        tmp_json.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    return path


# --- reading ---------------------------------------------------------------------------------
def _weights_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    return path


def _parse_description(text: str | bytes, source: str) -> ModelSpec:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        reason = str(err).splitlines()[0][:120] if str(err) else "too deeply nested"
        raise ModelFileError(
            f"{source} is not valid JSON ({reason}); restore or delete it"
        ) from err
    return ModelSpec.from_json(data, source)


def _read_sidecar(path: Path) -> ModelSpec | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        if side.stat().st_size > MAX_DESCRIPTION_BYTES:
            raise ModelFileError(f"{side} is too large to be a model description; delete it")
        data = side.read_bytes()
    except OSError as err:
        raise ModelFileError(f"cannot read {side} ({err.strerror or err})") from err
    return _parse_description(data, str(side))


def _read_header(path: Path) -> tuple[ModelSpec | None, dict[str, tuple[int, ...]]]:
    """The description stored in a safetensors file and its tensors' shapes (no tensor read)."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get(_META_KEY)
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ModelFileError(f"{path} is not a valid safetensors file ({reason})") from err
    stored = _parse_description(meta, f"the description stored in {path}") if meta else None
    return stored, shapes


def _agreed(side: ModelSpec | None, stored: ModelSpec | None, path: Path) -> ModelSpec:
    """The description of ``path``: sidecar and stored copy must agree when both exist."""
    if side is None and stored is None:
        raise ModelFileError(
            f"{path} has no description: put its {sidecar_path(path).name} sidecar beside it"
        )
    if side is not None and stored is not None:
        a, b = side.to_json(), stored.to_json()
        differ = [k for k in a if a[k] != b.get(k)]
        if differ:
            raise ModelFileError(
                f"{sidecar_path(path).name} and the description stored in {path.name} differ "
                f"({', '.join(differ)}): the sidecar was edited or belongs to another model; "
                "restore it, or delete it to use the stored description"
            )
    return side or stored  # type: ignore[return-value]


def read_spec(path: str | os.PathLike) -> ModelSpec:
    """Read a model file's description (sidecar JSON, else the copy in the safetensors metadata).

    Raises:
        ModelFileError: missing, damaged, or sidecar and stored copy disagree.
    """
    path = _weights_path(path)
    side = _read_sidecar(path)
    stored, _ = _read_header(path)
    return _agreed(side, stored, path)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model file into an eval-mode module on ``device``; never unpickles.

    Raises :class:`ModelFileError` with a readable reason for a missing, corrupt
    or mismatching file (checked in the order of the module docstring).
    """
    path = _weights_path(path)
    side = _read_sidecar(path)
    stored, shapes = _read_header(path)
    spec = side or stored
    if spec is not None:
        check_weights_fit(spec, shapes, path)
    spec = _agreed(side, stored, path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path} is not a valid safetensors file ({err})") from err
    try:
        module = build_model(spec.architecture, **spec.arch_kwargs)
        module.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as err:
        first = str(err).splitlines()[0]
        raise ModelFileError(
            f"{path}: the weights do not match the described {spec.architecture} ({first})"
        ) from err
    module.eval().to(resolve_device(device))
    return LoadedModel(module=module, spec=spec, path=path)
