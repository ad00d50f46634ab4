"""Keep only synthetic pairs a segmentation model agrees with.

A synthetic image is only a good training example when it shows what its mask
says. A segmentation model (the bundled default, or the user's) predicts on
each synthetic image; the foreground Dice of that prediction against the
pair's mask scores the pair, and pairs scoring at least ``min_dice`` are kept.
Foreground is every class above 0 (for the bundled ISBI model: membrane).

This is a filter, not a proof: a model that fails on real images of a kind
will also drop good synthetic ones of that kind. Check the scores it writes
(``scores.csv``: name, dice, kept).

:func:`iter_export_filtered` is export and filter as one task, the way the
``synth export`` command and the Synthesize widget both run it.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..inference.predict import iter_predict
from ..models.model_file import LoadedModel, ModelSpec
from ..utils.atomic import atomic_path, plan_outputs
from ..utils.generators import Progress, drive, map_events
from .generate import ExportResult, iter_export_pairs

SCORES_NAME = "scores.csv"


@dataclass
class PairScore:
    """The filter's verdict on one pair."""

    name: str
    dice: float
    kept: bool
    reason: str = ""  # why it was dropped ("" when kept)


@dataclass
class FilterResult:
    """Scores of all pairs and the threshold they were held to."""

    min_dice: float
    scores: list[PairScore] = field(default_factory=list)

    @property
    def kept(self) -> list[PairScore]:
        return [s for s in self.scores if s.kept]

    @property
    def dropped(self) -> list[PairScore]:
        return [s for s in self.scores if not s.kept]

    def reasons(self) -> dict[str, int]:
        """How many pairs were dropped for each reason."""
        return dict(Counter(s.reason for s in self.dropped))

    def summary(self) -> str:
        """One line: kept of total, and why the rest went."""
        n, k = len(self.scores), len(self.kept)
        line = f"kept {k} of {n} synthetic pairs (foreground Dice >= {self.min_dice:g})"
        if k < n:
            why = "; ".join(f"{c} {r}" for r, c in sorted(self.reasons().items()))
            line += f"; dropped {n - k}: {why}"
        return line


def check_filter_spec(spec: ModelSpec, name: str) -> None:
    """Raise a ValueError unless the model ``name`` described by ``spec`` segments images."""
    if spec.task != "segmentation":
        raise ValueError(
            f"{name} is a {spec.task} model; the filter needs a segmentation model "
            "(e.g. the bundled default)"
        )


def check_min_dice(min_dice: float) -> float:
    """Raise a ValueError unless ``min_dice`` is a Dice score (0 to 1); return it."""
    if not 0 <= min_dice <= 1:
        raise ValueError(f"the minimum Dice is between 0 and 1, got {min_dice}")
    return float(min_dice)


def foreground_dice(prediction: np.ndarray, mask: np.ndarray) -> float:
    """Dice of ``prediction > 0`` against ``mask > 0``; unannotated (negative) pixels ignored.

    Both empty counts as full agreement (1.0).
    """
    prediction, mask = np.asarray(prediction), np.asarray(mask)
    if prediction.shape != mask.shape:
        raise ValueError(
            f"the prediction {prediction.shape} and the mask {mask.shape} differ in shape"
        )
    valid = mask >= 0
    p = (prediction > 0) & valid
    m = (mask > 0) & valid
    denom = int(p.sum()) + int(m.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int((p & m).sum()) / denom


def _reason(dice: float, prediction: np.ndarray, mask: np.ndarray, min_dice: float) -> str:
    valid = np.asarray(mask) >= 0
    has_pred = bool(((np.asarray(prediction) > 0) & valid).any())
    has_mask = bool(((np.asarray(mask) > 0) & valid).any())
    if has_mask and not has_pred:
        return "the model sees no foreground in the image"
    if has_pred and not has_mask:
        return "the model sees foreground the mask does not have"
    return f"Dice below {min_dice:g}"


def score_pair(
    model: LoadedModel,
    image: np.ndarray,
    mask: np.ndarray,
    *,
    device: str | torch.device = "cpu",
    tile_size: int | None = 256,
) -> tuple[float, np.ndarray]:
    """Foreground Dice of ``model``'s prediction on ``image`` against ``mask``, and the labels."""
    pred = drive(iter_predict(model, image, device=device, tile_size=tile_size)).labels
    return foreground_dice(pred, mask), pred


def iter_filter_pairs(
    model: LoadedModel,
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]]
    | Sequence[tuple[str, np.ndarray, np.ndarray]],
    min_dice: float,
    *,
    device: str | torch.device = "cpu",
    tile_size: int | None = 256,
) -> Generator[Progress, None, FilterResult]:
    """Score ``(name, image, mask)`` pairs with ``model``; keep those with Dice >= ``min_dice``."""
    pairs = list(pairs)
    return (yield from _score_all(model, pairs, len(pairs), min_dice, device, tile_size))


def _score_all(model, pairs, total, min_dice, device, tile_size):
    """Score ``(name, image, mask)`` from any iterable (one pair in memory at a time)."""
    check_min_dice(min_dice)
    result = FilterResult(min_dice)
    for i, (name, image, mask) in enumerate(pairs):
        dice, pred = score_pair(model, image, mask, device=device, tile_size=tile_size)
        kept = dice >= min_dice
        reason = "" if kept else _reason(dice, pred, mask, min_dice)
        result.scores.append(PairScore(name, dice, kept, reason))
        yield Progress(i + 1, total, f"{name}: Dice {dice:.3f}", name)
    return result


def filter_pairs(model: LoadedModel, pairs, min_dice: float, **kwargs) -> FilterResult:
    """Run :func:`iter_filter_pairs` to the end."""
    return drive(iter_filter_pairs(model, pairs, min_dice, **kwargs))


def write_scores(path: str | os.PathLike, result: FilterResult, overwrite: bool = False) -> Path:
    """Write ``name,dice,kept,reason`` rows atomically; replaces a file only with ``overwrite``."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", "dice", "kept", "reason"])
        for s in result.scores:
            w.writerow([s.name, f"{s.dice:.4f}", int(s.kept), s.reason])
    return path


def read_scores(path: str | os.PathLike) -> list[PairScore]:
    """The rows :func:`write_scores` wrote."""
    with open(path, newline="", encoding="utf-8") as f:
        return [
            PairScore(r["name"], float(r["dice"]), r["kept"] == "1", r.get("reason", ""))
            for r in csv.DictReader(f)
        ]


def iter_filter_files(
    model: LoadedModel,
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    min_dice: float,
    *,
    scores_path: str | os.PathLike | None = None,
    remove_dropped: bool = True,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    tile_size: int | None = 256,
) -> Generator[Progress, None, FilterResult]:
    """Score exported pair files; delete the dropped pairs' files and write ``scores.csv``.

    Meant for the pairs an export has just written (``images[i]`` goes with
    ``masks[i]``; names in the scores are the image file names). ``scores_path``
    is checked before the first pair is scored, so an existing file stops the
    run early unless ``overwrite``.
    """
    from ..data.image_io import read_image, read_mask

    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if scores_path is not None:
        plan_outputs([(scores_path, "the filter's scores")], overwrite=overwrite)

    def pairs():
        for img, msk in zip(images, masks, strict=True):
            yield Path(img).name, read_image(img), read_mask(msk)

    result = yield from _score_all(model, pairs(), len(images), min_dice, device, tile_size)
    if remove_dropped:
        for s, img, msk in zip(result.scores, images, masks, strict=True):
            if not s.kept:
                Path(img).unlink(missing_ok=True)
                Path(msk).unlink(missing_ok=True)
    if scores_path is not None:
        write_scores(scores_path, result, overwrite=overwrite)
    return result


@dataclass
class FilteredExport:
    """What :func:`iter_export_filtered` wrote: the exported pairs and, when filtered, the
    filter's verdict and where its scores are."""

    export: ExportResult
    filter: FilterResult | None = None
    scores_path: Path | None = None

    @property
    def count(self) -> int:
        """Pairs left on disk: the kept ones when filtered, else all exported."""
        return self.export.count if self.filter is None else len(self.filter.kept)


def iter_export_filtered(
    generator: LoadedModel,
    masks: Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    n: int,
    *,
    filter_model: LoadedModel | None = None,
    min_dice: float = 0.7,
    device: str | torch.device = "auto",
    tile_size: int | None = None,
    overwrite: bool = False,
    noise_strength: float | None = None,
    **export_kwargs: Any,
) -> Generator[Progress, None, FilteredExport]:
    """Export ``n`` pairs (:func:`~napari_segen.synthesis.generate.iter_export_pairs`) and,
    with ``filter_model``, score them, remove those below ``min_dice`` and write
    ``out_dir/scores.csv``.

    One task with one progress count (export, then filter: ``2 * n`` steps when
    filtering), so a caller can stop it between any two pairs. The filter model,
    ``min_dice`` and the scores file are checked before the first pair is
    written. ``device`` and ``tile_size`` serve both the generator and the filter
    model; ``export_kwargs`` are :func:`iter_export_pairs`' (``transform``,
    ``seed``...). ``noise_strength`` scales a noise generator's texture (None: the
    strength calibrated when it was trained, else 1).
    """
    scores_path = None
    if filter_model is not None:
        check_filter_spec(filter_model.spec, filter_model.name)
        check_min_dice(min_dice)
        scores_path = Path(out_dir) / SCORES_NAME
        plan_outputs([(scores_path, "the filter's scores")], overwrite=overwrite)
    total = 2 * n if filter_model is not None else n
    export = yield from map_events(
        iter_export_pairs(
            generator, masks, out_dir, n, device=device, tile_size=tile_size,
            overwrite=overwrite, noise_strength=noise_strength, **export_kwargs,
        ),
        lambda e: Progress(e.done, total, e.message, e.path),
    )  # fmt: skip
    if filter_model is None:
        return FilteredExport(export)
    filtered = yield from map_events(
        iter_filter_files(
            filter_model, export.images, export.masks, min_dice, scores_path=scores_path,
            overwrite=overwrite, device=device, tile_size=tile_size,
        ),
        lambda e: Progress(n + e.done, total, f"filtering: {e.message}", e.path),
    )  # fmt: skip
    return FilteredExport(export, filtered, scores_path)
