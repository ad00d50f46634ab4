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
import torch.nn.functional as F

from ..data.normalize import normalize_image, to_channels_first
from ..models.model_file import LoadedModel
from ..utils.devices import resolve_device
from ..utils.generators import drive
from .tiling import blend_window, plan_tiles, round_up


@dataclass
class Progress:
    """How far a prediction is: tiles done out of the total, over all slices."""

    done: int
    total: int
    message: str = ""


@dataclass
class Prediction:
    """Result of a prediction.

    Attributes:
        labels: class index per pixel, the image's spatial shape (plus leading stack axes).
        probabilities: class probabilities, ``(..., C, H, W)`` float32, when asked for.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None


def spatial_layout(image_shape: tuple[int, ...], rgb: bool | None) -> tuple[tuple[int, ...], bool]:
    """Split a shape into leading (stack) axes and whether the last axis is colour.

    ``(H, W)`` gray, ``(H, W, 3|4)`` colour (unless ``rgb`` is False), ``(Z, H, W)``
    a gray stack, ``(Z, H, W, 3|4)`` a colour stack (when ``rgb`` is not False), and so on.
    """
    ndim = len(image_shape)
    if ndim < 2:
        raise ValueError(f"expected an image with at least 2 dimensions, got shape {image_shape}")
    is_rgb = bool(rgb) if rgb is not None else (ndim >= 3 and image_shape[-1] in (3, 4))
    if is_rgb and ndim < 3:
        raise ValueError(f"shape {image_shape} cannot be a colour image")
    spatial_end = ndim - 1 if is_rgb else ndim
    return tuple(image_shape[: spatial_end - 2]), is_rgb


def _size_multiple(module: torch.nn.Module) -> int:
    return int(getattr(module, "size_multiple", 1))


def iter_predict(
    model: LoadedModel,
    image: np.ndarray,
    *,
    rgb: bool | None = None,
    tile_size: int | None = 256,
    overlap: int | None = None,
    halo: int | None = None,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    return_probabilities: bool = False,
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
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        return_probabilities: also return per-class probabilities.
    """
    leading, is_rgb = spatial_layout(tuple(image.shape), rgb)
    dev = resolve_device(device)
    module = model.module.to(dev).eval()
    multiple = _size_multiple(module)
    h, w = image.shape[len(leading) : len(leading) + 2]
    hp, wp = round_up(h, multiple), round_up(w, multiple)
    tile = tile_size or max(hp, wp)
    if overlap is None:
        overlap = tile // 4
    if halo is None:
        halo = overlap // 4
    layout = plan_tiles((hp, wp), tile, overlap, halo, multiple)
    n_slices = int(np.prod(leading)) if leading else 1
    total = layout.num_tiles * n_slices
    ncls = model.spec.num_classes
    label_dtype = np.uint8 if ncls < 256 else np.uint16
    labels = np.zeros((*leading, h, w), label_dtype)
    probs = np.zeros((*leading, ncls, h, w), np.float32) if return_probabilities else None

    done = 0
    yield Progress(0, total, "starting")
    for idx in np.ndindex(*leading) if leading else [()]:
        plane = np.asarray(image[idx])
        chw = normalize_image(
            to_channels_first(plane, model.spec.in_channels, rgb=is_rgb),
            model.spec.normalization,
            source_dtype=plane.dtype,
        )
        x = torch.from_numpy(np.ascontiguousarray(chw))
        if (hp, wp) != (h, w):
            # reflect needs pad < size; replicate covers tiny images
            mode = "reflect" if hp - h < h and wp - w < w else "replicate"
            x = F.pad(x[None], (0, wp - w, 0, hp - h), mode=mode)[0]
        acc = torch.zeros((ncls, hp, wp), dtype=torch.float32)
        norm = torch.zeros((hp, wp), dtype=torch.float32)
        tiles = layout.tiles()
        th, tw = layout.tile
        for b in range(0, len(tiles), batch_size):
            batch_pos = tiles[b : b + batch_size]
            batch = torch.stack([x[:, y : y + th, xx : xx + tw] for y, xx in batch_pos]).to(dev)
            out = _forward(module, batch, dev)
            out = torch.softmax(out.float(), dim=1).cpu()
            for (y, xx), p in zip(batch_pos, out, strict=True):
                wgt = torch.from_numpy(blend_window(layout, y, xx, (hp, wp), halo))
                acc[:, y : y + th, xx : xx + tw] += p * wgt
                norm[y : y + th, xx : xx + tw] += wgt
            done += len(batch_pos)
            yield Progress(done, total, f"slice {idx}" if leading else "")
        p_full = (acc / norm.clamp_min(1e-12))[:, :h, :w]
        labels[idx] = p_full.argmax(0).numpy().astype(label_dtype)
        if probs is not None:
            probs[idx] = p_full.numpy()
    return Prediction(labels=labels, probabilities=probs)


def _forward(module: torch.nn.Module, batch: torch.Tensor, dev: torch.device) -> torch.Tensor:
    try:
        with torch.inference_mode(), torch.autocast(dev.type, enabled=dev.type == "cuda"):
            return module(batch)
    except torch.OutOfMemoryError as err:
        raise RuntimeError(
            f"out of memory on {dev} with a batch of {batch.shape[0]} tiles of "
            f"{tuple(batch.shape[-2:])} px; try a smaller tile size or batch size, or the CPU"
        ) from err


def predict(model: LoadedModel, image: np.ndarray, **kwargs) -> Prediction:
    """Run :func:`iter_predict` to the end and return its :class:`Prediction`."""
    return drive(iter_predict(model, image, **kwargs))
