"""Feature extractors for set distances: the FID Inception-v3 and a U-Net encoder (no Qt).

* :class:`InceptionFeatures` is the standard FID network (Inception-v3 with the
  2015-12-05 TensorFlow weights, pool3 = 2048-d), as torchmetrics runs it: it reuses
  torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port). Its weights are
  never downloaded: they come from a file the user gives or from the torch hub
  cache, and are read with ``torch.load(weights_only=True)`` or safetensors.
* :class:`UNetEncoderFeatures` global-average-pools the bottleneck of a
  napari-segen U-Net: a "domain feature distance" when no Inception weights are
  at hand. Its numbers are not FID and only comparable with the same extractor.

Extraction is batched and streaming: :func:`iter_features` reads images from any
iterable and keeps only their feature vectors.
"""

from __future__ import annotations

import io
import os
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..data.normalize import normalize_image, to_channels_first
from ..models import build_model, default_model_path, load_model
from ..models.model_file import LoadedModel, ModelSpec
from ..utils.devices import resolve_device
from .image_quality import dtype_data_range, iter_planes

__all__ = [
    "INCEPTION_FILES",
    "INCEPTION_NAME",
    "INCEPTION_URL",
    "WEIGHTS_ENV",
    "FeatureExtractor",
    "FeatureWeightsError",
    "InceptionFeatures",
    "UNetEncoderFeatures",
    "count_images",
    "find_inception_weights",
    "inception_search_paths",
    "iter_features",
    "load_inception_state",
    "missing_weights_message",
    "to_uint8_rgb",
]

_NO_FIDELITY = (
    "FID needs the torch-fidelity package (torchmetrics' Inception network): "
    "pip install torch-fidelity"
)
INCEPTION_FILES = (
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity / torchmetrics
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid (same network, same keys)
)
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
WEIGHTS_ENV = "NAPARI_SEGEN_FID_WEIGHTS"
INCEPTION_NAME = "Inception-v3 pool3 (2048-d, FID weights 2015-12-05)"


class FeatureWeightsError(ValueError):
    """A feature extractor's weights file is unreadable or not the expected network."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything that maps a batch of same-shape images to one feature vector per image.

    Attributes:
        name: shown to users ("feature distance (<name>)").
        dim: feature length.
        is_inception: True only for the standard FID Inception-v3 pool3 features;
            only then are the distances called FID and KID.
    """

    name: str
    dim: int
    is_inception: bool

    def __call__(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """Features ``(len(batch), dim)`` of images of one shape."""
        ...


# --- where the Inception weights are -----------------------------------------------------------
def inception_search_paths() -> list[Path]:
    """The files looked at, in order, when no weights file is given."""
    paths: list[Path] = []
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        paths.append(Path(env))
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    paths += [checkpoints / name for name in INCEPTION_FILES]
    return paths


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path | None:
    """The Inception weights file to use: ``weights`` if given (it must exist), else the cache's.

    Raises:
        FileNotFoundError: ``weights`` was given but is not a file.
    """
    if weights not in (None, ""):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"FID weights file not found: {path}; give the path of "
                f"{INCEPTION_FILES[0]} (or pytorch-fid's {INCEPTION_FILES[1]})"
            )
        return path
    for path in inception_search_paths():
        if path.is_file():
            return path
    return None


def missing_weights_message() -> str:
    """One paragraph saying which file is missing and where to put it."""
    target = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILES[0]
    return (
        f"No FID: the Inception weights file {INCEPTION_FILES[0]} was not found. Download it "
        f"on a machine with internet from {INCEPTION_URL} and copy it to {target} (pytorch-fid's "
        f"{INCEPTION_FILES[1]} works too), or give its path (--fid-weights, the widget's "
        f"'FID weights' field, or the {WEIGHTS_ENV} environment variable). napari-segen never "
        "downloads it."
    )


def load_inception_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The Inception state dict in ``path`` (``.pth`` read with weights_only=True, or safetensors).

    Raises:
        FeatureWeightsError: the file cannot be read safely or is not the FID Inception-v3.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad or unsafe pickles
        raise FeatureWeightsError(
            f"cannot read {path} as plain tensors ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); use the original "
            f"{INCEPTION_FILES[0]} file"
        ) from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatureWeightsError(f"{path} does not hold a state dict of tensors")
    expected = _inception_shapes()
    # converted checkpoints may lack BatchNorm's step counters; torch fills those in
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or wrong:
        detail = f"{len(missing)} missing tensor(s)" if missing else f"{len(wrong)} wrong shape(s)"
        raise FeatureWeightsError(
            f"{path} is not the FID Inception-v3 weights ({detail}, e.g. "
            f"{(missing or wrong)[0]}); use {INCEPTION_FILES[0]}"
        )
    return {k: state[k] for k in expected if k in state}


def _inception_shapes() -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the FID Inception-v3 (same as torchvision's, 1008 classes)."""
    from torchvision.models import Inception3

    with torch.device("meta"):
        net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


# --- the extractors ----------------------------------------------------------------------------
class InceptionFeatures:
    """Inception-v3 pool3 features (2048-d) of the FID network, as torchmetrics computes them.

    Images become uint8 RGB (integer images scaled from their dtype's range, float
    images from ``data_range``; grayscale repeated to 3 channels) and are resized to
    299x299 by the network: antialiased bilinear like torchmetrics (default), or with
    ``antialias=False`` the TensorFlow-1 bilinear resize of the original FID code and
    torch-fidelity.

    Args:
        weights: the weights file; None looks in :func:`inception_search_paths`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        antialias: resize like torchmetrics (True) or like TF1/torch-fidelity (False).
        data_range: range of float images, see :func:`to_uint8_rgb`.
    Raises:
        FileNotFoundError: no weights file (the message says where to put it).
        FeatureWeightsError: the file is not the FID Inception weights.
        ImportError: torch-fidelity is not installed.
    """

    is_inception = True
    dim = 2048
    name = INCEPTION_NAME

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        antialias: bool = True,
        data_range: float | tuple[float, float] | None = None,
    ) -> None:
        path = find_inception_weights(weights)
        if path is None:
            raise FileNotFoundError(missing_weights_message())
        state = load_inception_state(path)
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except (ImportError, ModuleNotFoundError) as err:  # pragma: no cover - env dependent
            raise ImportError(_NO_FIDELITY) from err
        # torch-fidelity reads its weights with torch.load(weights_only=False); hand it a
        # buffer re-serialised from the tensors already loaded safely, never the user's file.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        try:
            net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=buffer,  # type: ignore[arg-type]
                antialias=antialias,
            )
        except ModuleNotFoundError as err:
            raise ImportError(_NO_FIDELITY) from err
        self.path = path
        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.data_range = data_range

    @torch.no_grad()
    def __call__(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        x = np.stack([to_uint8_rgb(im, self.data_range) for im in batch])
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device)
        return self.net(t).double().cpu().numpy()


class UNetEncoderFeatures:
    """Bottleneck features of a napari-segen U-Net, global-average-pooled.

    Images are normalised as the model file says, padded (reflect) to the U-Net's
    size multiple and encoded; the feature is the mean of ``UNet.encode(x)[-1]``
    over space.

    Args:
        model: a model file path, a ``LoadedModel``, or None for the bundled default
            model (a seeded untrained U-Net when that is not installed, named so).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
    """

    is_inception = False

    def __init__(self, model: Any = None, device: str | torch.device = "auto") -> None:
        if model is None:
            model = _default_or_random_unet()
        elif isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        if not isinstance(model, LoadedModel):
            raise TypeError(f"expected a model file path or a LoadedModel, got {type(model)}")
        if not hasattr(model.module, "encode"):
            raise ValueError(
                f"{model.name} is a {model.spec.architecture}, which has no U-Net encoder; "
                "give a U-Net model file for the feature distance"
            )
        self.model = model
        self.device = resolve_device(device)
        self.module = model.module.to(self.device).eval()
        with torch.no_grad():
            side = max(32, self.module.size_multiple)
            probe = torch.zeros(1, model.spec.in_channels, side, side, device=self.device)
            self.dim = int(self.module.encode(probe)[-1].shape[1])
        self.name = f"U-Net encoder of {model.name}, {self.dim}-d"

    @torch.no_grad()
    def __call__(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        spec = self.model.spec
        arrs = [
            normalize_image(to_channels_first(im, spec.in_channels), spec.normalization, im.dtype)
            for im in batch
        ]
        x = torch.from_numpy(np.stack(arrs)).to(self.device)
        m = self.module.size_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
        feats = self.module.encode(x)[-1]
        return feats.mean(dim=(2, 3)).double().cpu().numpy()


def _default_or_random_unet() -> LoadedModel:
    """The bundled default model if installed, else a seeded untrained U-Net (named so)."""
    path = Path(str(default_model_path()))
    if path.is_file():
        return load_model(path)
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        spec = ModelSpec(
            architecture="unet",
            arch_kwargs={"in_channels": 1, "num_classes": 2, "depth": 4, "base_channels": 16},
            in_channels=1,
            class_names=["background", "foreground"],
        )
        module = build_model(spec.architecture, **spec.arch_kwargs).eval()
    finally:
        torch.random.set_rng_state(gen_state)
    return LoadedModel(module, spec, path=Path("untrained-unet-seed0"))


# --- images to features ------------------------------------------------------------------------
def to_uint8_rgb(
    image: np.ndarray, data_range: float | tuple[float, float] | None = None
) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image for Inception: scaled from its range, gray repeated.

    Integer images are scaled from their dtype's range (uint8 unchanged, uint16 / 257).
    Float images need ``data_range``: a number R for ``[0, R]`` or a pair ``(lo, hi)``
    (e.g. ``(-1, 1)`` for tanh outputs); values outside are clipped.
    """
    x = np.asarray(image)
    if x.ndim == 3 and x.shape[-1] == 4:
        x = x[..., :3]
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] == 3)):
        raise ValueError(f"expected a (H, W) or (H, W, 3) image, got shape {x.shape}")
    if x.dtype != np.uint8:
        if data_range is not None:
            lo, hi = (0.0, float(data_range)) if np.isscalar(data_range) else map(float, data_range)
        elif x.dtype == bool or np.issubdtype(x.dtype, np.integer):
            lo = 0.0 if x.dtype == bool else float(np.iinfo(x.dtype).min)
            hi = lo + dtype_data_range(x.dtype)
        else:
            raise ValueError(
                f"float images (dtype {x.dtype}) need an explicit data range for FID/KID: give "
                "data_range=1.0 for images in [0, 1] or data_range=(-1, 1) for [-1, 1]"
            )
        if not hi > lo:
            raise ValueError(f"the data range must have high > low, got ({lo}, {hi})")
        scaled = (x.astype(np.float64) - lo) * (255.0 / (hi - lo))
        x = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    return x


def iter_features(
    images: Iterable[Any],
    extractor: FeatureExtractor,
    batch_size: int = 32,
) -> Generator[int, None, np.ndarray]:
    """Features of every image in ``images`` (stacks split), in batches of one shape.

    Yields the number of images done after each batch; returns ``(N, dim)`` float64.
    Only one batch of images is held at a time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chunks: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    done = 0

    def _shape(im: np.ndarray) -> tuple[int, ...]:
        return im.shape[:2] + ((3,) if im.ndim == 3 else ())

    for image in iter_planes(images):
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if batch and (len(batch) >= batch_size or _shape(batch[0]) != _shape(image)):
            chunks.append(np.asarray(extractor(batch), np.float64))
            done += len(batch)
            batch = []
            yield done
        batch.append(image)
    if batch:
        chunks.append(np.asarray(extractor(batch), np.float64))
        done += len(batch)
        yield done
    if not chunks:
        return np.zeros((0, extractor.dim), np.float64)
    return np.concatenate(chunks)


def count_images(images: Any) -> int | None:
    """``len(images)`` when the iterable has one (stacks count once), else None."""
    try:
        return len(images)
    except TypeError:
        return None
