"""One sliding window for every model: tiles, batches, Gaussian-with-halo blending.

Segmentation (softmax of a U-Net/FCN) and synthesis (a pix2pix generator) both
run through :func:`iter_sliding_window`; only the ``predictor`` differs. The
blending rule is the one in :mod:`napari_segen.inference.tiling`: with a halo
at least the predictor's receptive-field radius, the tiled result equals the
whole-image result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator

import torch
import torch.nn.functional as F

from ..data.conventions import DEFAULT_TILE_SIZE
from ..utils.devices import resolve_device
from ..utils.generators import Progress, drive
from .cpu_runtime import fewer_page_faults
from .tiling import TileLayout, blend_weights, plan_tiles, round_up

Predictor = Callable[[torch.Tensor], torch.Tensor]


def iter_sliding_window(
    image: torch.Tensor,
    predictor: Predictor,
    *,
    tile_size: int | None = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    halo: int | None = None,
    size_multiple: int = 1,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    accumulate_device: str | torch.device | None = "cpu",
    sigma_scale: float = 0.125,
) -> Generator[Progress, None, torch.Tensor]:
    """Run ``predictor`` over ``image`` tile by tile and blend the tiles into one output.

    The image is padded to a multiple of ``size_multiple`` (mirrored; repeated
    edge pixels when it is too small to mirror), cut into overlapping tiles
    that sit on the predictor's down-sampling grid, run in batches, blended with
    weights built once per layout, and cropped back.

    Args:
        image: a ``(C, H, W)`` float tensor of any size.
        predictor: ``(B, C, th, tw) -> (B, K, th, tw)``; runs on ``device``.
        tile_size: tile edge in pixels; None runs the whole (padded) image at once.
        overlap: pixels shared by neighbouring tiles (default: a quarter tile).
        halo: tile-border pixels discarded where tiles meet (default: a quarter
            of the overlap); the overlap is widened to exceed twice the halo.
        size_multiple: the predictor takes sizes divisible by this (e.g. ``2**depth``).
        batch_size: tiles per predictor call.
        device: where tiles are run; None: the image's device. A user's choice
            (``"auto"``, ``"cuda:1"``...) is resolved by
            :func:`napari_segen.utils.devices.resolve_device`.
        accumulate_device: where the blended output is built (None: the image's
            device); the CPU keeps large outputs off the accelerator.
        sigma_scale: the Gaussian window's sigma as a fraction of the tile size.

    Yields:
        :class:`Progress` after each batch: tiles done of the total.

    Returns:
        The blended ``(K, H, W)`` float32 tensor on ``accumulate_device``.

    Raises:
        ValueError: a bad image or a predictor that changes the tile size.
        RuntimeError: out of memory, with what to try instead.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(image.shape)}")
    dev = image.device if device is None else resolve_device(device)
    acc_dev = image.device if accumulate_device is None else resolve_device(accumulate_device)
    h, w = image.shape[-2:]
    layout, halo = plan_window((h, w), tile_size, overlap, halo, size_multiple)
    hp, wp = padded = padded_shape((h, w), size_multiple)
    x = image
    if padded != (h, w):
        # reflect needs pad < size; replicate covers tiny images
        mode = "reflect" if hp - h < h and wp - w < w else "replicate"
        x = F.pad(x[None], (0, wp - w, 0, hp - h), mode=mode)[0]
    weights = blend_weights(layout, (hp, wp), halo, sigma_scale)
    on_acc: dict[int, torch.Tensor] = {}  # tiles sharing a window share its tensor

    def weight(pos: tuple[int, int]) -> torch.Tensor:
        arr = weights.windows[pos]
        if id(arr) not in on_acc:
            on_acc[id(arr)] = torch.tensor(arr, device=acc_dev)  # a copy: the cache is read-only
        return on_acc[id(arr)]

    tiles = layout.tiles()
    th, tw = layout.tile
    acc: torch.Tensor | None = None
    # no page faults for each batch's activations on the CPU (see cpu_runtime)
    with fewer_page_faults() if dev.type == "cpu" else contextlib.nullcontext():
        for start in range(0, len(tiles), batch_size):
            batch_pos = tiles[start : start + batch_size]
            with torch.no_grad():
                batch = torch.stack([x[:, y : y + th, xx : xx + tw] for y, xx in batch_pos])
                try:
                    out = predictor(batch.to(dev))
                except torch.OutOfMemoryError as err:
                    smaller = "tile size or batch size" if batch_size > 1 else "tile size"
                    raise RuntimeError(
                        f"out of memory on {dev} with a batch of {len(batch_pos)} tile(s) of "
                        f"{th}x{tw} px; try a smaller {smaller}, or the CPU"
                    ) from err
                if out.ndim != 4 or out.shape[0] != len(batch_pos) or out.shape[-2:] != (th, tw):
                    raise ValueError(
                        f"the predictor turned tiles of shape {tuple(batch.shape)} into "
                        f"{tuple(out.shape)}; it must return (B, K, {th}, {tw})"
                    )
                out = out.float().to(acc_dev)
                if acc is None:
                    acc = torch.zeros((out.shape[1], hp, wp), dtype=torch.float32, device=acc_dev)
                for (y, xx), p in zip(batch_pos, out, strict=True):
                    acc[:, y : y + th, xx : xx + tw].addcmul_(p, weight((y, xx)))
            yield Progress(start + len(batch_pos), len(tiles))
    assert acc is not None  # a layout has at least one tile
    norm = torch.tensor(weights.norm, device=acc_dev)  # a copy: normalised in place
    return acc.div_(norm.clamp_min_(1e-12))[:, :h, :w]


def padded_shape(shape: tuple[int, int], size_multiple: int) -> tuple[int, int]:
    """``(H, W)`` rounded up to the predictor's size multiple."""
    m = max(1, int(size_multiple))
    return round_up(shape[0], m), round_up(shape[1], m)


def plan_window(
    shape: tuple[int, int],
    tile_size: int | None = DEFAULT_TILE_SIZE,
    overlap: int | None = None,
    halo: int | None = None,
    size_multiple: int = 1,
) -> tuple[TileLayout, int]:
    """The tile layout and halo :func:`iter_sliding_window` uses for an ``(H, W)`` image.

    Callers that report progress over several images use its ``num_tiles``.
    """
    padded = padded_shape(shape, size_multiple)
    tile = tile_size or max(padded)
    if overlap is None:
        overlap = tile // 4
    if halo is None:
        halo = overlap // 4
    return plan_tiles(padded, tile, overlap, halo, max(1, int(size_multiple))), halo


def sliding_window(image: torch.Tensor, predictor: Predictor, **kwargs) -> torch.Tensor:
    """Run :func:`iter_sliding_window` to the end and return the blended tensor."""
    return drive(iter_sliding_window(image, predictor, **kwargs))
