"""Segment arrays with a model: tiled, batched, blended, slice by slice for stacks.

The work is a generator (:func:`iter_predict`) that yields progress between
batches, so a GUI worker can report it and cancel between steps; :func:`predict`
runs it to the end.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..data.conventions import DEFAULT_TILE_SIZE
from ..data.layout import spatial_layout
from ..data.normalize import normalize_image, to_channels_first
from ..models.model_file import LoadedModel
from ..utils.devices import resolve_device
from ..utils.generators import Progress, drive, relay
from .cpu_runtime import prefer_channels_last
from .sliding_window import Predictor, iter_sliding_window, plan_window
from .uncertainty import dihedral_tta, entropy_map


@dataclass
class Prediction:
    """Result of a prediction.

    Attributes:
        labels: class index per pixel, the image's spatial shape (plus leading stack axes).
        probabilities: class probabilities, ``(..., C, H, W)`` float32, when asked for.
        uncertainty: per-pixel entropy of the probabilities scaled to [0, 1]
            (``(..., H, W)`` float32), when asked for; with ``tta`` it is the
            entropy of the 8-view average.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


def size_multiple(model: LoadedModel) -> int:
    """The number both sides of the model's input must divide (1: any size)."""
    return int(getattr(model.module, "size_multiple", 1))


def softmax_predictor(module: torch.nn.Module, device: torch.device) -> Predictor:
    """A sliding-window predictor: class probabilities of ``module`` (mixed precision on CUDA)."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = module(batch)
        return torch.softmax(logits.float(), dim=1)

    return run


def segmentation_predictor(
    model: LoadedModel, device: torch.device, tta: bool = False
) -> Predictor:
    """What segments tiles with ``model`` on ``device``: class probabilities, averaged over
    the 8 flips/rotations of each tile with ``tta``. Moves the model to ``device`` (and, on
    the CPU, its weights to channels-last: faster convolutions, same values)."""
    module = prefer_channels_last(model.module.to(device).eval(), device)
    predictor = softmax_predictor(module, device)
    return dihedral_tta(predictor) if tta else predictor


def iter_predict(
    model: LoadedModel,
    image: np.ndarray,
    *,
    rgb: bool | None = None,
    tile_size: int | None = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    halo: int | None = None,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    return_probabilities: bool = False,
    tta: bool = False,
    return_uncertainty: bool = False,
) -> Generator[Progress, None, Prediction]:
    """Segment ``image`` tile by tile, yielding :class:`Progress`; returns a :class:`Prediction`.

    Args:
        model: a loaded segmentation model.
        image: 2D gray, 2D colour, or a stack of either (numpy or dask; stacks are
            read one slice at a time).
        rgb: whether the last axis is colour; guessed from the shape when None.
        tile_size: tile edge in pixels; None segments each slice whole.
        overlap: pixels shared by neighbouring tiles (default: a quarter tile).
        halo: tile-border pixels discarded where tiles meet (default: a quarter
            of the overlap; see ``tiling``).
        batch_size: tiles per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        return_probabilities: also return per-class probabilities.
        tta: test-time augmentation: average the probabilities over the 8
            flips/90-degree rotations of each tile (8x the compute; usually a
            little more accurate, and a better uncertainty).
        return_uncertainty: also return the per-pixel uncertainty (entropy).
    """
    leading, is_rgb = spatial_layout(tuple(image.shape), rgb)
    dev = resolve_device(device)
    predictor = segmentation_predictor(model, dev, tta)
    multiple = size_multiple(model)
    h, w = image.shape[len(leading) : len(leading) + 2]
    layout, halo = plan_window((h, w), tile_size, overlap, halo, multiple)
    slices = list(np.ndindex(*leading)) if leading else [()]
    total = layout.num_tiles * len(slices)
    ncls = model.spec.num_classes
    label_dtype = np.uint8 if ncls < 256 else np.uint16
    labels = np.zeros((*leading, h, w), label_dtype)
    probs = np.zeros((*leading, ncls, h, w), np.float32) if return_probabilities else None
    unsure = np.zeros((*leading, h, w), np.float32) if return_uncertainty else None

    yield Progress(0, total, "starting")
    for i, idx in enumerate(slices):
        plane = np.asarray(image[idx])
        chw = normalize_image(
            to_channels_first(plane, model.spec.in_channels, rgb=is_rgb),
            model.spec.normalization,
            source_dtype=plane.dtype,
        )
        windows = iter_sliding_window(
            torch.from_numpy(np.ascontiguousarray(chw)),
            predictor,
            tile_size=tile_size,
            overlap=overlap,
            halo=halo,
            size_multiple=multiple,
            batch_size=batch_size,
            device=dev,
        )
        message = f"slice {idx}" if leading else ""
        p = yield from relay(windows, i * layout.num_tiles, total, message)
        labels[idx] = class_labels(p)
        if probs is not None:
            probs[idx] = p.numpy()
        if unsure is not None:
            unsure[idx] = entropy_map(p)
    return Prediction(labels=labels, probabilities=probs, uncertainty=unsure)


def class_labels(probabilities: torch.Tensor) -> np.ndarray:
    """The most probable class per pixel of ``(K, H, W)`` probabilities (ties: the lower class).

    Cheaper than ``argmax(0)`` plus an int64 copy: two classes are one comparison,
    more take ``torch.max``'s indices; numpy casts them into the label array.
    """
    if probabilities.shape[0] == 2:
        return (probabilities[1] > probabilities[0]).numpy()
    return torch.max(probabilities, 0).indices.numpy()


def predict(model: LoadedModel, image: np.ndarray, **kwargs) -> Prediction:
    """Run :func:`iter_predict` to the end and return its :class:`Prediction`."""
    return drive(iter_predict(model, image, **kwargs))
