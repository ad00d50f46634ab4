"""Segment image files into label files: plan every output, then read, predict and write each.

The loop behind ``napari-segen predict`` (files and folders) and the Segment
widget's "Segment folder". No napari, no Qt:

* :func:`plan_batch` reads the headers of the inputs (an unreadable one is
  reported and left out) and checks every output name before any work: none
  exists (unless overwriting), none is shared, none replaces an input.
* :func:`iter_predict_files` segments the planned images one at a time,
  yielding :class:`BatchProgress` (``done``/``total`` count images; ``tiles``
  is the progress inside the current one), and writes each image's outputs
  atomically, never replacing a file unless overwriting. An image that cannot
  be read or written is reported in an event and skipped; the others go on.
  Stopping the iteration (cancel) leaves only complete files behind.

Outputs of an image ``<name>.<ext>``: ``<name>_labels.png`` (``.tif`` for
stacks), which napari-segen opens as Labels; optionally ``<name>_probs.tif``,
``<name>_uncertainty.tif`` and the objects ``<name>_objects.tif`` with their
table ``<name>_objects.csv``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.conventions import DEFAULT_TILE_SIZE
from ..data.image_io import ImageReadError, image_info, read_image, write_labels
from ..utils.atomic import OverwriteError, atomic_path, ensure_writable_dir, plan_outputs
from ..utils.generators import Progress, map_events

__all__ = [
    "BatchProgress",
    "BatchResult",
    "BatchSettings",
    "PlannedImage",
    "WrittenImage",
    "iter_predict_files",
    "output_paths",
    "plan_batch",
    "write_objects",
]


@dataclass
class BatchSettings:
    """How to segment the images of a batch and which files to write for each."""

    tile_size: int | None = DEFAULT_TILE_SIZE
    halo: int | None = None
    batch_size: int = 4
    device: Any = "auto"
    tta: bool = False
    #: label file format, "png" or "tif" (None: png for 2D images, tif for stacks)
    format: str | None = None
    probabilities: bool = False
    uncertainty: bool = False
    instances: bool = False
    min_object_size: int = 16
    overwrite: bool = False


@dataclass
class PlannedImage:
    """One input and every file it will write, by kind (``labels``, ``probabilities``...)."""

    source: Path
    outputs: dict[str, Path]


@dataclass
class WrittenImage:
    """One input whose outputs were written; ``objects``: how many (with ``instances``)."""

    source: Path
    outputs: dict[str, Path]
    objects: int | None = None


@dataclass
class BatchProgress(Progress):
    """Progress of a batch: ``done`` of ``total`` images finished (written or skipped).

    Exactly one of the optional fields is set on most events: ``tiles`` (the
    progress inside ``source``), ``written`` (``source``'s outputs were just
    written) or ``error`` (``source`` was skipped because of it).
    """

    source: Path | None = None
    tiles: Progress | None = None
    written: WrittenImage | None = None
    error: BaseException | None = None


@dataclass
class BatchResult:
    """What a batch did: the images written and the ``(input, error)`` of those skipped."""

    written: list[WrittenImage]
    skipped: list[tuple[Path, BaseException]]


def output_paths(
    out_dir: str | os.PathLike, stem: str, labels_suffix: str, settings: BatchSettings
) -> dict[str, Path]:
    """Every file one input named ``stem`` writes into ``out_dir``, by kind."""
    out_dir = Path(out_dir)
    # "<stem>_labels.png": napari's "<image> labels" convention, which the reader opens as Labels
    paths = {"labels": out_dir / f"{stem}_labels{labels_suffix}"}
    if settings.probabilities:
        paths["probabilities"] = out_dir / f"{stem}_probs.tif"
    if settings.uncertainty:
        paths["uncertainty"] = out_dir / f"{stem}_uncertainty.tif"
    if settings.instances:
        paths["objects"] = out_dir / f"{stem}_objects.tif"
        paths["table"] = out_dir / f"{stem}_objects.csv"
    return paths


def plan_batch(
    files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    settings: BatchSettings,
    on_skip: Callable[[Path, BaseException], None] | None = None,
) -> list[PlannedImage]:
    """The outputs of each readable file, checked before any work; ``out_dir`` made writable.

    Only the headers are read. A file that cannot be read (or a stack with
    ``format="png"``) is passed to ``on_skip`` and left out.

    Raises:
        OverwriteError: an output exists and ``settings.overwrite`` is False.
        OutputCollisionError: two outputs share a file, or one would replace an input.
        OSError: ``out_dir`` cannot be created or written to.
    """
    files = [Path(f) for f in files]
    planned: list[PlannedImage] = []
    for f in files:
        try:
            stack = image_info(f).is_stack
            if stack and settings.format == "png":
                raise ImageReadError(f"{f} is a stack; its labels need --format tif (or none)")
        except ImageReadError as err:
            if on_skip is not None:
                on_skip(f, err)
            continue
        suffix = f".{settings.format}" if settings.format else ".tif" if stack else ".png"
        planned.append(PlannedImage(f, output_paths(out_dir, f.stem, suffix, settings)))
    plan_outputs(
        [
            (dest, f"the {kind} of {p.source.name}")
            for p in planned
            for kind, dest in p.outputs.items()
        ],
        inputs=files,
        overwrite=settings.overwrite,
    )
    ensure_writable_dir(Path(out_dir))
    return planned


def iter_predict_files(
    model: Any, planned: Sequence[PlannedImage], settings: BatchSettings
) -> Generator[BatchProgress, None, BatchResult]:
    """Segment each planned image and write its outputs, yielding :class:`BatchProgress`.

    An image that cannot be read, or whose labels file appeared since the plan
    (another run), is skipped with an ``error`` event; the batch goes on.
    """
    from . import iter_predict  # looked up at each call: the package's, as callers patch it

    total = len(planned)
    written: list[WrittenImage] = []
    skipped: list[tuple[Path, BaseException]] = []

    def _skip(i: int, item: PlannedImage, err: BaseException) -> BatchProgress:
        skipped.append((item.source, err))
        return BatchProgress(i, total, item.source.name, source=item.source, error=err)

    for i, item in enumerate(planned):
        f, outputs = item.source, item.outputs
        yield BatchProgress(i, total, f.name, source=f)
        try:
            image = read_image(f)
        except ImageReadError as err:
            yield _skip(i + 1, item, err)
            continue
        gen = iter_predict(
            model,
            image,
            tile_size=settings.tile_size,
            halo=settings.halo,
            batch_size=settings.batch_size,
            device=settings.device,
            return_probabilities=settings.probabilities or settings.instances,
            return_uncertainty=settings.uncertainty,
            tta=settings.tta,
        )
        result = yield from map_events(
            gen, lambda e, f=f, i=i: BatchProgress(i, total, f.name, source=f, tiles=e)
        )
        yield BatchProgress(i, total, f"writing {f.name}", source=f)  # the tiles are done
        try:
            write_labels(outputs["labels"], result.labels, overwrite=settings.overwrite)
        except OverwriteError as err:  # another run wrote it since the plan
            yield _skip(i + 1, item, err)
            continue
        if settings.probabilities:
            _write_tif(outputs["probabilities"], result.probabilities, settings.overwrite)
        if settings.uncertainty:
            _write_tif(outputs["uncertainty"], result.uncertainty, settings.overwrite)
        count = None
        if settings.instances:
            count = write_objects(
                outputs["objects"],
                outputs["table"],
                result.probabilities,
                model.spec.class_names,
                settings.min_object_size,
                settings.overwrite,
            )
        done = WrittenImage(f, outputs, count)
        written.append(done)
        yield BatchProgress(
            i + 1, total, f.name, source=f, path=str(outputs["labels"]), written=done
        )
    return BatchResult(written, skipped)


def _write_tif(path: Path, data: np.ndarray, overwrite: bool) -> None:
    import tifffile

    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, np.asarray(data, np.float32), photometric="minisblack")


def write_objects(
    path: Path,
    table_path: Path,
    probabilities: np.ndarray,
    class_names: list[str],
    min_size: int,
    overwrite: bool,
) -> int:
    """Objects of ``(..., K, H, W)`` probabilities to a label TIFF and a CSV table; their count.

    Stacks are split plane by plane; ids stay unique over the whole stack and the
    table names each object's plane.
    """
    import csv
    import io

    import tifffile

    from .instances import find_instances

    leading = probabilities.shape[:-3]
    planes = list(np.ndindex(*leading)) if leading else [()]
    labels = np.zeros((*leading, *probabilities.shape[-2:]), np.int64)
    index_names = ["slice"] if len(leading) == 1 else [f"slice_{k}" for k in range(len(leading))]
    rows: list[list] = []
    offset = 0
    for idx in planes:
        found = find_instances(probabilities[idx], class_names, min_size=min_size)
        plane = found.labels.astype(np.int64)
        labels[idx] = np.where(plane > 0, plane + offset, 0)
        feats = found.features
        for j in range(len(feats["label"])):
            rows.append(
                [int(feats["label"][j]) + offset, *idx, int(feats["area"][j]),
                 round(float(feats["centroid_y"][j]), 3), round(float(feats["centroid_x"][j]), 3)]
            )  # fmt: skip
        offset += found.count
    dtype = np.uint16 if offset < 65536 else np.uint32
    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib", photometric="minisblack")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["label", *(index_names if leading else []), "area", "centroid_y",
                     "centroid_x"])  # fmt: skip
    writer.writerows(rows)
    with atomic_path(table_path, overwrite) as tmp:
        tmp.write_text(text.getvalue())
    return offset
