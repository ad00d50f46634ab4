"""Images from label maps with a trained pix2pix generator, and synthetic training pairs.

The generator is fully convolutional, so a label map of any size is generated
whole (padded by mirroring to a multiple of ``2**depth`` and cropped back), or
in blended tiles when ``tile_size`` is given (less memory). Generated images
come back in the training images' dtype and intensity range.

:func:`export_pairs` writes ``images/`` and ``masks/`` folders (masks as class
indices 0..K-1) that ``napari-segen train --images DIR/images --masks DIR/masks``
reads directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image

from ..data.image_io import MAX_PIXELS_ENV, max_pixels, write_labels
from ..inference.sliding_window import sliding_window
from ..inference.tiling import round_up
from ..models.model_file import LoadedModel, ModelFileError, load_model
from ..utils.atomic import (
    atomic_path,
    confined_path,
    ensure_writable_dir,
    plan_outputs,
    safe_name,
)
from ..utils.devices import resolve_device
from ..utils.generators import Progress, drive
from .calibrate import MAX_RECOMMENDED_STRENGTH, recommended_noise_strength
from .masks import MaskTransformConfig, iter_random_masks


@dataclass
class ExportResult:
    """Where :func:`export_pairs` wrote its pairs."""

    out_dir: Path
    images_dir: Path
    masks_dir: Path
    images: list[Path] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.images)


def check_generator(model: LoadedModel) -> LoadedModel:
    """Raise a ValueError unless ``model`` is a synthesis (pix2pix) generator."""
    if model.spec.task != "synthesis" or not hasattr(model.module, "size_multiple"):
        raise ValueError(
            f"{model.name} is a {model.spec.task} model, not a pix2pix generator; "
            "train one with 'napari-segen synth train' or the Synthesize widget"
        )
    return model


def load_generator(
    path: str | os.PathLike, device: str | torch.device | None = "cpu"
) -> LoadedModel:
    """Load a generator model file (``task="synthesis"``) onto ``device``.

    ``device`` is a user's choice (``"auto"``, ``"cpu"``, ``"cuda:1"``...); anything
    that is not a generator gives a readable ValueError.
    """
    dev = resolve_device(device)
    try:
        model = load_model(path, device=dev)
    except ModelFileError as err:
        raise ValueError(str(err)) from err
    return check_generator(model)


def check_noise_strength(noise_strength: float | None) -> float | None:
    """Raise a ValueError unless ``noise_strength`` is None (the generator's recommended
    strength) or a number from 0 to :data:`MAX_RECOMMENDED_STRENGTH`; return it."""
    if noise_strength is None:
        return None
    if not (np.isfinite(noise_strength) and 0 <= noise_strength <= MAX_RECOMMENDED_STRENGTH):
        raise ValueError(
            f"the noise strength must be 0 to {MAX_RECOMMENDED_STRENGTH:g}, got {noise_strength}"
        )
    return float(noise_strength)


def resolve_noise_strength(model: LoadedModel, noise_strength: float | None) -> float:
    """``noise_strength`` checked, or the generator's recommended strength when None
    (:func:`~napari_segen.synthesis.calibrate.recommended_noise_strength`)."""
    checked = check_noise_strength(noise_strength)
    return recommended_noise_strength(model) if checked is None else checked


def _label_array(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a 2D label map, got shape {labels.shape}")
    is_int = np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool
    if not is_int and not np.all(np.mod(labels, 1) == 0):
        raise ValueError("label maps must hold integer class indices")
    labels = labels.astype(np.int64)
    if labels.size and int(labels.max()) >= num_classes:
        raise ValueError(
            f"the label map holds class {int(labels.max())} but the generator was trained on "
            f"{num_classes} classes (0..{num_classes - 1}); relabel or train on these classes"
        )
    return labels


def generate_tensor(
    model: LoadedModel,
    labels: np.ndarray,
    *,
    device: str | torch.device = "auto",
    tile_size: int | None = None,
    stochastic: bool = False,
    seed: int | None = None,
    overlap: int | None = None,
    halo: int | None = None,
    noise_strength: float | None = None,
) -> torch.Tensor:
    """Generate from one ``(H, W)`` label map: a ``(C, H, W)`` float tensor in [-1, 1] on the CPU.

    Tiles run through the same sliding window as segmentation
    (:func:`napari_segen.inference.sliding_window.iter_sliding_window`), one at a
    time, so a seeded stochastic run draws its dropout noise tile after tile.
    A generator trained with per-layer noise (``noise=True``) always draws its
    noise maps: from a CPU :class:`torch.Generator` seeded with ``seed`` (the same
    seed gives the same image on any device, another seed another image), or
    unseeded when ``seed`` is None.
    Tiled generation equals whole-image generation only for a generator without
    per-image statistics (batch norm in eval mode, or none) and a halo covering
    its receptive field. With instance norm (the default) every tile is
    normalised by its own statistics, so tiled generation is an approximation:
    the blending hides the seams.

    Args:
        model: a loaded generator.
        labels: class indices (negative = unannotated, fed as "no class").
        device: where to run it: ``"auto"``, ``"cpu"``, ``"cuda:1"``...
        tile_size: generate in blended tiles of about this size (None: whole image).
        stochastic: keep dropout on (a different image each time, as pix2pix's noise).
        seed: seed for the dropout noise and a noise generator's noise maps.
        overlap: pixels shared by neighbouring tiles (default: half a tile).
        halo: tile-border pixels discarded where tiles meet (default: 0).
        noise_strength: scale of a noise generator's noise maps (1: as trained, 0: its
            noise-free drawing; None: the strength calibrated when it was trained, else 1);
            ignored by a generator without noise.
    """
    check_generator(model)
    noise_strength = resolve_noise_strength(model, noise_strength)
    gen = model.module
    labels = _label_array(labels, gen.num_classes)
    dev = resolve_device(device)
    m = gen.size_multiple
    h, w = labels.shape
    ph, pw = round_up(h, m) - h, round_up(w, m) - w
    # mirrored label maps stay label maps; the window then has nothing left to pad
    padded = np.pad(labels, ((0, ph), (0, pw)), mode="symmetric") if ph or pw else labels
    tile = None
    if tile_size is not None:
        tile = max(round_up(tile_size, m), 2 * m)
        if overlap is None:
            overlap = round_up(tile // 2, m)
    gen.to(dev).eval()
    gen.set_stochastic(stochastic)
    noise_rng = torch.Generator().manual_seed(seed) if seed is not None else None
    try:
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            out = sliding_window(
                # class indices as one float channel: exact, and one-hot only per tile
                torch.from_numpy(padded).float()[None],
                lambda batch: gen(
                    batch[:, 0].long(), noise_rng=noise_rng, noise_strength=noise_strength
                ).float(),
                tile_size=tile,
                overlap=overlap,
                halo=halo or 0,
                size_multiple=m,
                batch_size=1,
                device=dev,
                sigma_scale=0.25,
            )
    finally:
        gen.set_stochastic(False)
    return out[:, :h, :w]


def to_unit(chw: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [-1, 1] -> ``(H, W)`` or ``(H, W, 3)`` float32 in [0, 1]."""
    a = ((chw.float().clamp(-1, 1) + 1) / 2).numpy()
    return a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)


def to_output_image(chw: torch.Tensor, model: LoadedModel) -> np.ndarray:
    """Generator output -> an image in the training images' dtype and intensity range."""
    unit = to_unit(chw)
    norm = model.spec.normalization
    lo, hi = float(norm.get("min", 0.0)), float(norm.get("max", 1.0))
    vals = unit * (hi - lo) + lo
    dtype = np.dtype(norm.get("output_dtype", "float32"))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(vals), info.min, info.max).astype(dtype)
    return vals.astype(dtype)


def seeded_series(
    model: LoadedModel,
    *,
    device: str | torch.device = "auto",
    seed: int | None = None,
    **kwargs: Any,
) -> Callable[[int, np.ndarray], torch.Tensor]:
    """:func:`generate_tensor` for the label maps of a series: ``generate_nth(i, labels)``.

    Map ``i`` is generated with the seed ``seed + i`` (None: unseeded), so a
    seeded series repeats image for image; ``device`` is resolved once and
    ``kwargs`` (``tile_size``, ``stochastic``, ``overlap``, ``halo``,
    ``noise_strength``: None, the default, is the generator's recommended strength)
    are the same for every map.
    """
    dev = resolve_device(device)
    if "noise_strength" in kwargs:
        kwargs["noise_strength"] = resolve_noise_strength(model, kwargs["noise_strength"])

    def generate_nth(i: int, labels: np.ndarray) -> torch.Tensor:
        nth_seed = None if seed is None else seed + i
        return generate_tensor(model, labels, device=dev, seed=nth_seed, **kwargs)

    return generate_nth


def generate_image(model: LoadedModel, labels: np.ndarray, **kwargs: Any) -> np.ndarray:
    """An image for a 2D label map, in the training images' dtype.

    ``kwargs`` are :func:`generate_tensor`'s (``device``, ``tile_size``,
    ``stochastic``, ``seed``, ``noise_strength``...).
    """
    return to_output_image(generate_tensor(model, labels, **kwargs), model)


def iter_generate(
    model: LoadedModel, labels: np.ndarray | Sequence[np.ndarray], **kwargs: Any
) -> Generator[Progress, None, np.ndarray | list[np.ndarray]]:
    """Generate for a label map, a ``(Z, H, W)`` stack or a list of maps, one progress event each.

    Returns an array (a 2D map gives one image, a stack a stack) or, for a list, a
    list. ``kwargs`` are :func:`seeded_series`' (``device``, ``seed``: map ``i``
    gets ``seed + i``, ``tile_size``, ``stochastic``, ``noise_strength``...).
    """
    is_list = isinstance(labels, list | tuple)
    arr = labels if is_list else np.asarray(labels)
    if not is_list and arr.ndim not in (2, 3):
        raise ValueError(f"expected a 2D label map or a (Z, H, W) stack, got shape {arr.shape}")
    maps = list(arr) if is_list or arr.ndim == 3 else [arr]
    generate_nth = seeded_series(model, **kwargs)
    out = []
    for i, lab in enumerate(maps):
        out.append(to_output_image(generate_nth(i, lab), model))
        yield Progress(i + 1, len(maps), f"generated image {i + 1} of {len(maps)}")
    if is_list:
        return out
    return np.stack(out) if arr.ndim == 3 else out[0]


def image_suffix(dtype: np.dtype | str, ndim: int, *, stack: bool = False) -> str:
    """The file type :func:`write_image` gives an image: ``.png`` for 8-bit ones and 2D
    16-bit ones, ``.tif`` for the rest and for every ``stack`` (a PNG holds one plane)."""
    dtype = np.dtype(dtype)
    if stack:
        return ".tif"
    return ".png" if dtype == np.uint8 or (dtype == np.uint16 and ndim == 2) else ".tif"


def generated_suffix(model: LoadedModel, stack: bool = False) -> str:
    """The file type of the image generated for a label map (``stack``: a ``(Z, H, W)`` one)."""
    return ".tif" if stack else _image_suffix(model)


def write_image(path: str | os.PathLike, image: np.ndarray, overwrite: bool = False) -> Path:
    """Write an image atomically: PNG for 8/16-bit gray and 8-bit RGB, TIFF otherwise."""
    path = Path(path)
    image = np.asarray(image)
    stack = image.ndim > 3 or (image.ndim == 3 and image.shape[-1] not in (3, 4))
    if (
        path.suffix.lower() == ".png"
        and image_suffix(image.dtype, image.ndim, stack=stack) != ".png"
    ):
        raise ValueError(f"{image.dtype} images of shape {image.shape} are saved as .tif, not .png")
    with atomic_path(path, overwrite) as tmp:
        if path.suffix.lower() == ".png":
            Image.fromarray(image).save(tmp, format="PNG")
        else:
            colour = not stack and image.ndim >= 3
            tifffile.imwrite(
                tmp, image, compression="zlib", photometric="rgb" if colour else "minisblack"
            )
    return path


def _image_suffix(model: LoadedModel) -> str:
    """The suffix of the generator's images: gray ones are 2D, colour ones ``(H, W, 3)``."""
    dtype = model.spec.normalization.get("output_dtype", "float32")
    return image_suffix(dtype, 2 if model.spec.in_channels == 1 else 3)


#: Most pairs one export writes.
MAX_EXPORT_PAIRS = 1_000_000


def plan_export(
    out_dir: str | os.PathLike, n: int, suffix: str, prefix: str = "synth", overwrite: bool = False
) -> list[tuple[Path, Path]]:
    """The ``(image, mask)`` paths of ``n`` exported pairs, checked before the first write.

    ``prefix`` must be a plain name (no folders, no ``..``: outputs stay in
    ``out_dir/images`` and ``out_dir/masks``); no file may exist unless ``overwrite``.
    """
    if not 1 <= n <= MAX_EXPORT_PAIRS:
        raise ValueError(f"the number of pairs must be from 1 to {MAX_EXPORT_PAIRS:,}, got {n}")
    safe_name(prefix, "the prefix")
    out_dir = Path(out_dir)
    width = max(4, len(str(n - 1)))
    names = [f"{prefix}_{i:0{width}d}" for i in range(n)]
    targets = [
        (
            confined_path(out_dir / "images", f"{s}{suffix}"),
            confined_path(out_dir / "masks", f"{s}.png"),
        )
        for s in names
    ]
    plan_outputs([p for pair in targets for p in pair], overwrite=overwrite)
    return targets


def check_export_size(shape: Sequence[int]) -> None:
    """Refuse a mask size above the pixel limit (:func:`~napari_segen.data.image_io.max_pixels`)."""
    if len(shape) != 2 or any(int(v) < 1 for v in shape):
        raise ValueError(f"the size of new masks is two positive numbers (H W), got {shape}")
    pixels = int(shape[0]) * int(shape[1])
    if pixels > max_pixels():
        raise ValueError(
            f"masks of {shape[0]} x {shape[1]} are {pixels:,} pixels, more than the "
            f"{max_pixels():,} napari-segen makes; choose a smaller size (or raise the limit with "
            f"{MAX_PIXELS_ENV}={pixels})"
        )


def iter_export_pairs(
    model: LoadedModel,
    masks: Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    n: int,
    *,
    transform: MaskTransformConfig | None = None,
    out_shape: tuple[int, int] | None = None,
    seed: int | None = 0,
    stochastic: bool = False,
    tile_size: int | None = None,
    device: str | torch.device = "auto",
    prefix: str = "synth",
    overwrite: bool = False,
    noise_strength: float | None = None,
) -> Generator[Progress, None, ExportResult]:
    """Write ``n`` synthetic (image, mask) pairs to ``out_dir/images`` and ``out_dir/masks``.

    Each mask is a random transform of a source mask (see
    :func:`napari_segen.synthesis.masks.random_mask_transform`; pass
    ``MaskTransformConfig(flips=False, rot90=False, scale_range=(1, 1), elastic_alpha=0)``
    to use the sources as they are), and its image is generated from it. Masks
    are written as class indices (PNG); unannotated (negative) pixels become
    class 0. Files are named ``<prefix>_0000.png`` and so on; nothing is written
    when any of them exists, unless ``overwrite`` is True. ``noise_strength``
    scales a noise generator's texture (see :func:`generate_tensor`; None: the
    strength recorded in the generator file, else 1).
    """
    check_generator(model)
    noise_strength = resolve_noise_strength(model, noise_strength)  # before any folder is made
    generate_nth = seeded_series(
        model, device=device, seed=seed, tile_size=tile_size, stochastic=stochastic,
        noise_strength=noise_strength,
    )  # fmt: skip
    if n < 1:
        raise ValueError(f"the number of pairs must be >= 1, got {n}")
    if not masks:
        raise ValueError("no masks to make pairs from: give at least one label map")
    srcs = []
    for i, m in enumerate(masks):
        m = np.asarray(m)
        if m.ndim != 2:
            raise ValueError(
                f"mask {i} has shape {m.shape}; give 2D label maps (split stacks into slices)"
            )
        srcs.append(np.where(_label_array(m, model.module.num_classes) < 0, 0, m).astype(np.int64))
    out_dir = Path(out_dir)
    images_dir, masks_dir = out_dir / "images", out_dir / "masks"
    targets = plan_export(out_dir, n, _image_suffix(model), prefix, overwrite)
    if out_shape is not None:
        check_export_size(out_shape)
    ensure_writable_dir(images_dir)
    ensure_writable_dir(masks_dir)
    result = ExportResult(out_dir, images_dir, masks_dir)
    for i, (src, mask) in enumerate(iter_random_masks(srcs, n, transform, seed, out_shape)):
        image = to_output_image(generate_nth(i, mask), model)
        img_path, mask_path = targets[i]
        write_image(img_path, image, overwrite=overwrite)
        try:
            write_labels(mask_path, mask, overwrite=overwrite)
        except BaseException:
            img_path.unlink(missing_ok=True)  # a stop here would leave an image without a mask
            raise
        result.images.append(img_path)
        result.masks.append(mask_path)
        yield Progress(i + 1, n, f"pair {i + 1} of {n} (from mask {src})", str(img_path))
    return result


def export_pairs(
    model: LoadedModel, masks: Sequence[np.ndarray], out_dir: str | os.PathLike, n: int, **kwargs
) -> ExportResult:
    """Run :func:`iter_export_pairs` to the end and return where it wrote."""
    return drive(iter_export_pairs(model, masks, out_dir, n, **kwargs))
