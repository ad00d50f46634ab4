"""Segment images bigger than memory, block by block, into a zarr store.

Each output block (``block_size`` square, one zarr chunk) reads only its input
block plus the tiles of the whole image's sliding-window layout that reach into
it, runs :func:`~napari_segen.inference.sliding_window.iter_sliding_window` on
that crop, and writes the block's labels (and optional probabilities /
uncertainty). The crop starts and ends on the whole image's tile grid, so the
crop's tiles, blending windows and normalising sums are the whole image's at
every pixel of the block: block-wise output equals in-memory
:func:`~napari_segen.inference.predict.predict` output (same labels; the same
probabilities up to float rounding of batching). Normalisation statistics come
from one pass over each plane (:func:`plane_stats`), as in memory.

Peak memory depends on the block and tile sizes, never on the image size.
Blocks already written are marked in the store (``done``) and skipped when a run
is resumed. With a ``dask.distributed`` client, blocks become tasks: each worker
loads the model once and writes its blocks straight into the store (one chunk
per block, so writers never share a chunk).

Store layout (a zarr group)::

    out.zarr/labels         (..., H, W) uint8/uint16, chunks (1.., block, block)
    out.zarr/probabilities  (..., K, H, W) float32, when asked for
    out.zarr/uncertainty    (..., H, W) float32, when asked for
    out.zarr/done           (..., nby, nbx) uint8: 1 = block written
    attrs["napari_segen"]   model fingerprint, settings, normalisation statistics
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.conventions import DEFAULT_TILE_SIZE
from ..data.layout import spatial_layout
from ..data.normalize import NormStats, normalize_image, stats_from_counts, to_channels_first
from ..models.model_file import LoadedModel, load_model
from ..utils.devices import resolve_device
from ..utils.generators import Progress, drive, map_events
from .predict import class_labels, segmentation_predictor, size_multiple
from .sliding_window import iter_sliding_window, plan_window
from .tiling import blend_weights
from .uncertainty import entropy_map

log = logging.getLogger(__name__)

#: Format of the store's attributes; a store of another version is not resumed.
STORE_VERSION = 1
#: Above this many distinct values per plane, percentiles come from a strided subsample.
MAX_DISTINCT = 1 << 22
#: Pixels of the strided subsample used then.
SUBSAMPLE_PIXELS = 1 << 24


class StoreMismatchError(FileExistsError):
    """The output store exists and was written by another run (model, image or settings)."""


@dataclass(frozen=True)
class BlockSettings:
    """What a block run computes; stored in the output's attrs to check a resume."""

    block_size: int = 2048
    tile_size: int | None = DEFAULT_TILE_SIZE
    overlap: int | None = None
    halo: int | None = None
    batch_size: int = 4
    tta: bool = False
    probabilities: bool = False
    uncertainty: bool = False
    rgb: bool | None = None

    def key(self) -> dict[str, Any]:
        """The settings that change the output (not the batch size)."""
        d = asdict(self)
        d.pop("batch_size")
        return d


@dataclass
class BlockResult:
    """What a block run did: ``written`` blocks now, ``skipped`` already done before."""

    out: Path
    total: int
    written: int
    skipped: int
    stats: list[NormStats] = field(default_factory=list)


# ---------------------------------------------------------------- input / output


def open_image(path: str | Path):
    """A lazy array over ``path``: a zarr array (or a group holding one array), or a
    TIFF read through tifffile's zarr store (memory-mapped tiles, nothing loaded)."""
    import zarr

    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    else:
        node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Group):
        arrays = sorted(name for name, _ in node.arrays())
        if len(arrays) != 1:
            raise ValueError(
                f"{path} is a zarr group with {len(arrays)} arrays "
                f"({', '.join(arrays) or 'none'}); "
                f"give one of them as {path}/<name>"
            )
        node = node[arrays[0]]
    return node


def model_fingerprint(model: LoadedModel) -> str:
    """A short hash of the model's weights and spec (a resume must use the same model)."""
    h = hashlib.sha256()
    h.update(json.dumps(asdict(model.spec), sort_keys=True, default=str).encode())
    for name, t in sorted(model.module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- block geometry


def _tile_aligned_span(
    lo: int, hi: int, starts: tuple[int, ...], tile: int, size: int
) -> tuple[int, int]:
    """The crop ``(crop_lo, crop_hi)`` that gives pixels ``lo:hi`` of one axis whole-image output.

    The crop runs from the first whole-image tile reaching into ``lo:hi`` to the
    end of the last one (clipped to the image), so its own sliding-window layout
    is the whole image's tiles over it; the tiles' halo-cut borders at the crop
    edges lie outside ``lo:hi`` (the blending weights cover every pixel).
    """
    first = next(s for s in starts if s + tile > lo)
    last = max(s for s in starts if s < hi)
    return first, min(last + tile, size)


def _axis_blocks(size: int, starts: tuple[int, ...], tile: int, block: int):
    """Per output block along one axis: ``(out_lo, out_hi, crop_lo, crop_hi)``."""
    out = []
    for lo in range(0, size, block):
        hi = min(lo + block, size)
        out.append((lo, hi, *_tile_aligned_span(lo, hi, starts, tile, size)))
    return out


def _block_grid(shape: tuple[int, int], settings: BlockSettings, multiple: int):
    layout, _ = plan_window(shape, settings.tile_size, settings.overlap, settings.halo, multiple)
    th, tw = layout.tile
    ys = _axis_blocks(shape[0], layout.starts_y, th, settings.block_size)
    xs = _axis_blocks(shape[1], layout.starts_x, tw, settings.block_size)
    return ys, xs


def region_crop(
    shape: tuple[int, int],
    box: tuple[int, int, int, int],
    tile_size: int | None,
    multiple: int,
    overlap: int | None = None,
    halo: int | None = None,
) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` to read and segment so that ``box`` of an image of ``shape``
    gets whole-image output: the block rule above for one box. With the same
    normalisation statistics the box's labels equal :func:`~napari_segen.inference.predict`
    of the whole image (probabilities up to float rounding), right up to the box border.
    """
    layout, _ = plan_window(shape, tile_size, overlap, halo, multiple)
    th, tw = layout.tile
    return (
        *_tile_aligned_span(box[0], box[1], layout.starts_y, th, shape[0]),
        *_tile_aligned_span(box[2], box[3], layout.starts_x, tw, shape[1]),
    )


# ---------------------------------------------------------------- normalisation statistics


class PlaneView:
    """A lazy view of one plane of an array-like: indexing reads only what it selects
    (``zarr_array[()]`` would read everything)."""

    def __init__(self, array, idx: tuple[int, ...]) -> None:
        self.array, self.idx = array, idx
        self.shape = tuple(array.shape[len(idx) :])
        self.dtype = array.dtype

    def __getitem__(self, key):
        return self.array[(*self.idx, *(key if isinstance(key, tuple) else (key,)))]


def _channels(block: np.ndarray, model: LoadedModel, rgb: bool) -> np.ndarray:
    return to_channels_first(block, model.spec.in_channels, rgb=rgb)


def plane_stats(
    plane, model: LoadedModel, rgb: bool, block_size: int = 2048
) -> Generator[Progress, None, NormStats]:
    """The normalisation statistics of one plane (lazy array), read block by block.

    Exact (the very numbers in-memory normalisation computes) through a merged
    histogram of the network-input values; a float plane with more than
    :data:`MAX_DISTINCT` distinct values falls back to a strided subsample of
    about :data:`SUBSAMPLE_PIXELS` pixels (percentiles then approximate).
    """
    norm = model.spec.normalization
    mode = norm.get("mode", "percentile")
    dtype = np.dtype(plane.dtype)
    h, w = plane.shape[:2]
    if mode == "range" and dtype.kind in "iub":
        return stats_from_counts(np.empty(0), np.empty(0), norm, dtype)
    if mode == "none" and dtype.kind in "iub":
        return NormStats(0.0, 1.0)
    values = np.empty(0, np.float32)
    counts = np.empty(0, np.int64)
    fill = np.inf
    nonfinite = 0
    blocks = [(y, x) for y in range(0, h, block_size) for x in range(0, w, block_size)]
    exact = True
    for i, (y, x) in enumerate(blocks):
        chw = _channels(np.asarray(plane[y : y + block_size, x : x + block_size]), model, rgb)
        finite = np.isfinite(chw)
        v = chw[finite] if not finite.all() else chw.ravel()
        nonfinite += chw.size - v.size
        if v.size:
            fill = min(fill, float(v.min()))
        if exact and mode == "percentile":
            bv, bc = np.unique(v, return_counts=True)
            values, inverse = np.unique(np.concatenate([values, bv]), return_inverse=True)
            merged = np.zeros(len(values), np.int64)
            np.add.at(merged, inverse, np.concatenate([counts, bc]))
            counts = merged
            exact = len(values) <= MAX_DISTINCT
        yield Progress(i + 1, len(blocks), "normalisation statistics")
    fill = 0.0 if not np.isfinite(fill) else fill
    if nonfinite:
        log.warning(
            "%d NaN or infinite pixel value(s) have no intensity: they are treated as the "
            "image's lowest intensity, and their labels are guesses",
            nonfinite,
        )
    if mode != "percentile":
        st = stats_from_counts(np.empty(0), np.empty(0), norm, dtype)
        return NormStats(st.lo, st.hi, fill)
    if not exact:
        step = max(1, int(np.sqrt(h * w / SUBSAMPLE_PIXELS)))
        sample = _channels(np.asarray(plane[::step, ::step]), model, rgb)
        sample = sample[np.isfinite(sample)]
        log.warning(
            "percentile normalisation of a %dx%d float image from every %d-th pixel: "
            "approximately the in-memory statistics",
            h,
            w,
            step,
        )
        values, counts = np.unique(sample, return_counts=True)
    return stats_from_counts(values, counts, norm, dtype, fill)


# ---------------------------------------------------------------- the work of one block


@dataclass(frozen=True)
class _Task:
    """One block: everything a worker needs (small and picklable, with the source)."""

    source: Any  # a lazy array, or a path opened by the worker (:func:`open_image`)
    out: str
    plane: tuple[int, ...]
    block: tuple[int, int]
    rows: tuple[int, int, int, int]
    cols: tuple[int, int, int, int]
    stats: NormStats
    rgb: bool
    settings: BlockSettings
    device: str


#: Per worker process: the models and images its tasks use, loaded once (a few at most).
_WORKER_CACHE: dict[Any, Any] = {}
_CACHE_SIZE = 4


def _cached(key, make):
    if key not in _WORKER_CACHE:
        while len(_WORKER_CACHE) >= _CACHE_SIZE:
            _WORKER_CACHE.pop(next(iter(_WORKER_CACHE)))
        _WORKER_CACHE[key] = make()
    return _WORKER_CACHE[key]


@dataclass(frozen=True)
class _Prepared:
    """A model on its device with its predictor: what every block of a run shares."""

    model: LoadedModel
    device: torch.device
    predictor: Any
    size_multiple: int


def _prepare(model: LoadedModel | str, device: str, tta: bool) -> _Prepared:
    loaded = load_model(model, device="cpu") if isinstance(model, str) else model
    dev = resolve_device(device)
    predictor = segmentation_predictor(loaded, dev, tta)
    return _Prepared(loaded, dev, predictor, size_multiple(loaded))


def run_block(
    task: _Task, model: LoadedModel | str | _Prepared, model_key: str = "", source=None
) -> tuple[tuple[int, ...], tuple[int, int]]:
    """Segment one block and write it (and its done mark) into the store.

    Runs in the calling process (``model`` prepared once for the run) or as a
    dask task (``model`` a loaded model or a model file path, prepared once per
    worker process and cached under ``model_key``, the model's fingerprint);
    ``source`` replaces ``task.source`` (an in-memory image sent to the workers once).
    """
    import zarr

    s = task.settings
    if isinstance(model, _Prepared):
        prepared = model
    else:
        key = ("model", model_key or str(model), task.device, s.tta)
        prepared = _cached(key, lambda: _prepare(model, task.device, s.tta))
    loaded, dev, predictor = prepared.model, prepared.device, prepared.predictor
    multiple = prepared.size_multiple
    source = task.source if source is None else source
    if isinstance(source, str):
        source = _cached(("image", source), lambda: open_image(source))
    y0, y1, cy0, cy1 = task.rows
    x0, x1, cx0, cx1 = task.cols
    where = (*task.plane, slice(cy0, cy1), slice(cx0, cx1))
    crop = np.asarray(source[where])
    chw = normalize_image(
        _channels(crop, loaded, task.rgb),
        loaded.spec.normalization,
        source_dtype=np.dtype(source.dtype),
        stats=task.stats,
    )
    del crop
    p = drive(
        iter_sliding_window(
            torch.from_numpy(np.ascontiguousarray(chw)),
            predictor,
            tile_size=s.tile_size,
            overlap=s.overlap,
            halo=s.halo,
            size_multiple=multiple,
            batch_size=s.batch_size,
            device=dev,
        )
    )
    del chw
    # Crops differ in shape (image edges, the tile grid's phase), and the sliding
    # window caches blending weights per shape, each as big as a crop: let them go,
    # so peak memory stays one block's (rebuilding them costs far less than a block).
    blend_weights.cache_clear()
    p = p[:, y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0].clone()  # not a view of the crop
    inner = (*task.plane, slice(y0, y1), slice(x0, x1))
    group = zarr.open_group(task.out, mode="r+")
    group["labels"][inner] = class_labels(p)
    if s.probabilities:
        group["probabilities"][(*task.plane, slice(None), slice(y0, y1), slice(x0, x1))] = p.numpy()
    if s.uncertainty:
        group["uncertainty"][inner] = entropy_map(p)
    group["done"][(*task.plane, *task.block)] = 1  # last: a crash before leaves it undone
    return task.plane, task.block


# ---------------------------------------------------------------- the store


def _settings_attrs(
    model: LoadedModel, shape: tuple[int, ...], dtype: np.dtype, settings: BlockSettings
) -> dict[str, Any]:
    return {
        "version": STORE_VERSION,
        "model": model_fingerprint(model),
        "classes": list(model.spec.class_names),
        "input_shape": list(shape),
        "input_dtype": str(dtype),
        "settings": settings.key(),
    }


def _is_store(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))


def prepare_store(
    out: str | Path,
    model: LoadedModel,
    shape: tuple[int, ...],
    dtype: np.dtype,
    settings: BlockSettings,
    overwrite: bool = False,
):
    """Open the output store to resume it, or create it; returns ``(group, attrs)``.

    An existing store is resumed only if it was written by the same model, image
    shape/dtype and settings; otherwise it is refused unless ``overwrite``.
    """
    import zarr

    out = Path(out)
    leading, is_rgb = spatial_layout(tuple(shape), settings.rgb)
    h, w = shape[len(leading) : len(leading) + 2]
    want = _settings_attrs(model, shape, dtype, settings)
    if out.exists():
        if not overwrite:
            found = None
            if _is_store(out):
                try:
                    found = dict(zarr.open_group(str(out), mode="r").attrs).get("napari_segen")
                except Exception:  # not a group of ours: refused below  # noqa: BLE001
                    found = None
            if found is not None and {k: found.get(k) for k in want} == want:
                return zarr.open_group(str(out), mode="r+"), found
            what = "was written by another model, image or settings" if found else "exists"
            raise StoreMismatchError(
                f"{out} {what}; give --overwrite to replace it (or another output path)"
            )
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    bs = settings.block_size
    ncls = model.spec.num_classes
    group = zarr.open_group(str(out), mode="w")
    one = (1,) * len(leading)
    label_dtype = np.uint8 if ncls < 256 else np.uint16

    def create(name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype) -> None:
        # zarr.open_array: the same call in zarr 2 and 3
        zarr.open_array(
            str(out / name), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0
        )

    create("labels", (*leading, h, w), (*one, bs, bs), label_dtype)
    if settings.probabilities:
        create("probabilities", (*leading, ncls, h, w), (*one, ncls, bs, bs), np.float32)
    if settings.uncertainty:
        create("uncertainty", (*leading, h, w), (*one, bs, bs), np.float32)
    nb = (-(-h // bs), -(-w // bs))
    create("done", (*leading, *nb), (*one, 1, 1), np.uint8)
    want["stats"] = {}
    group.attrs["napari_segen"] = want
    return group, want


# ---------------------------------------------------------------- the run


def iter_predict_blocks(
    model: LoadedModel | str | Path,
    image,
    out: str | Path,
    *,
    settings: BlockSettings | None = None,
    device: str = "auto",
    overwrite: bool = False,
    client=None,
) -> Generator[Progress, None, BlockResult]:
    """Segment ``image`` block by block into the zarr store ``out``, yielding :class:`Progress`.

    Args:
        model: a loaded model, or a model file path (workers load a path themselves).
        image: any array-like: numpy, dask, a zarr array, :func:`open_image`'s
            TIFF store, or a path (opened lazily with :func:`open_image`; with a
            ``client`` each worker opens it). 2D gray, 2D colour or stacks (planes).
        out: the output zarr store (see the module docstring).
        settings: block, tile and output settings.
        device: where tiles run (on every worker).
        overwrite: replace an existing store of another run (a store of the same
            run is resumed: its written blocks are skipped).
        client: a ``dask.distributed.Client``; blocks then run as its tasks.

    Yields:
        :class:`Progress` over blocks (statistics first); stop iterating to cancel
        (finished blocks stay written and are skipped when the run is resumed).

    Returns:
        A :class:`BlockResult`.
    """
    settings = settings or BlockSettings()
    if settings.block_size < 1:
        raise ValueError(f"block size must be 1 or more, got {settings.block_size}")
    if not settings.tile_size:
        raise ValueError("block-wise needs a tile size (a whole-image pass runs in memory)")
    model_ref: LoadedModel | str = model if isinstance(model, LoadedModel) else str(model)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device="cpu")
    source = str(image) if isinstance(image, (str, Path)) else image
    array = open_image(source) if isinstance(source, str) else image
    shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    leading, is_rgb = spatial_layout(shape, settings.rgb)
    h, w = shape[len(leading) : len(leading) + 2]
    multiple = size_multiple(loaded)
    ys, xs = _block_grid((h, w), settings, multiple)
    planes = list(np.ndindex(*leading)) if leading else [()]
    total = len(planes) * len(ys) * len(xs)
    group, attrs = prepare_store(out, loaded, shape, dtype, settings, overwrite)
    out = Path(out)
    done = np.asarray(group["done"][...]).astype(bool)
    yield Progress(int(done.sum()), total, "starting")

    # normalisation statistics, once per plane (kept in the store for a resume)
    stats: dict[tuple[int, ...], NormStats] = {}
    saved = attrs.get("stats", {})
    for idx in planes:
        key = json.dumps(list(idx))
        if key in saved:
            stats[idx] = NormStats(*saved[key])
            continue
        if done[idx].all():
            continue
        message = "normalisation statistics" + (f" of slice {idx}" if leading else "")
        st = yield from map_events(
            plane_stats(PlaneView(array, idx), loaded, is_rgb, settings.block_size),
            lambda _, m=message: Progress(int(done.sum()), total, m),
        )
        stats[idx] = st
        saved[key] = [st.lo, st.hi, st.fill]
        attrs["stats"] = saved
        group.attrs["napari_segen"] = attrs

    tasks = [
        _Task(
            array if client is None else source,
            str(out),
            idx,
            (by, bx),
            ys[by],
            xs[bx],
            stats[idx],
            is_rgb,
            settings,
            device,
        )
        for idx in planes
        for by in range(len(ys))
        for bx in range(len(xs))
        if not done[(*idx, by, bx)]
    ]
    skipped = total - len(tasks)
    written = 0
    if client is None:
        prepared = _prepare(loaded, device, settings.tta) if tasks else None
        for task in tasks:
            run_block(task, prepared)
            written += 1
            yield Progress(skipped + written, total, _where(task, leading))
    else:
        written = yield from _run_distributed(
            client, tasks, model_ref, attrs["model"], skipped, total, leading
        )
    return BlockResult(out, total, written, skipped, [stats[i] for i in planes if i in stats])


def _where(task: _Task, leading) -> str:
    block = f"block {task.block}"
    return f"slice {task.plane} {block}" if leading else block


def _run_distributed(
    client, tasks, model_ref, model_key, skipped, total, leading
) -> Generator[Progress, None, int]:
    from distributed import as_completed

    if not tasks:
        return 0
    # a path travels as text (each worker loads it once); a model object is sent once
    model_arg = (
        model_ref if isinstance(model_ref, str) else client.scatter(model_ref, broadcast=True)
    )
    extra = {}
    if isinstance(tasks[0].source, np.ndarray):  # sent once, not with every task
        extra["source"] = client.scatter(tasks[0].source, broadcast=True)
        tasks = [dataclasses.replace(t, source=None) for t in tasks]
    futures = client.map(
        run_block, tasks, model=model_arg, model_key=model_key, pure=False, **extra
    )
    written = 0
    try:
        for future in as_completed(futures):
            plane, block = future.result()  # re-raises a worker's error here
            written += 1
            where = f"slice {plane} block {block}" if leading else f"block {block}"
            yield Progress(skipped + written, total, where)
    finally:
        unfinished = [f for f in futures if not f.done()]
        if unfinished:
            client.cancel(unfinished)
    return written


def predict_blocks(model, image, out, **kwargs) -> BlockResult:
    """Run :func:`iter_predict_blocks` to the end and return its :class:`BlockResult`."""
    return drive(iter_predict_blocks(model, image, out, **kwargs))


def start_client(scheduler: str | None = None, workers: int | None = None):
    """A ``dask.distributed`` client: connected to ``scheduler`` (an address such as
    ``tcp://host:8786``), or on a new local cluster of ``workers`` single-threaded
    processes; None when neither is given (blocks then run in this process)."""
    if scheduler is None and not workers:
        return None
    from distributed import Client, LocalCluster

    if scheduler is not None:
        return Client(scheduler)
    # the scheduler in this process would log every worker's start and stop
    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = LocalCluster(
        n_workers=int(workers),
        threads_per_worker=1,
        dashboard_address=None,
        silence_logs=logging.WARNING,
    )
    return Client(cluster)
