"""Keep only synthetic pairs a segmentation model agrees with.

A synthetic image is only a good training example when it shows what its mask
says. A segmentation model (the bundled default, or the user's) predicts on
each synthetic image; the foreground Dice of that prediction against the
pair's mask scores the pair, and pairs scoring at least ``min_dice`` are kept.
Foreground is every class above 0 (for the bundled ISBI model: membrane).

This is a filter, not a proof: a model that fails on real images of a kind
will also drop good synthetic ones of that kind. Check the scores it writes
(``scores.csv``: name, dice, kept, and the reason a pair was dropped).

:func:`iter_export_filtered` is export and filter as one task, the way the
``synth export`` command and the Synthesize widget both run it. Stopped early
(cancelled, interrupted or failed) while filtering, it still leaves a folder
the scores describe: only the scored pairs that were kept stay, and
``scores.csv`` lists the scored ones (:class:`StoppedExport` says what is left).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
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
    result = FilterResult(check_min_dice(min_dice))
    return (yield from _score_into(result, model, pairs, len(pairs), device, tile_size))


def _score_into(result: FilterResult, model, pairs, total, device, tile_size):
    """Score ``(name, image, mask)`` from any iterable (one pair in memory at a time) into
    ``result``, each score added before its progress event: a stop finds every pair it
    reported in ``result``."""
    min_dice = result.min_dice
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


@dataclass
class FilterStop:
    """What :func:`iter_filter_files` left behind when it stopped before scoring every pair."""

    result: FilterResult  # the pairs scored before the stop
    unscored: int  # pairs never scored
    removed_dropped: int  # scored pairs below the threshold whose files were deleted
    removed_unscored: int  # unscored pairs whose files were deleted
    scores_path: Path | None  # the scored pairs' scores (None: none written)
    problems: list[str] = field(default_factory=list)  # what tidying up could not do

    def describe(self) -> str:
        """What is on disk, e.g. ``kept 5 of 8 scored pairs, removed 3 below Dice 0.7 and
        12 not scored; scores in DIR/scores.csv``."""
        r = self.result
        line = (
            f"kept {len(r.kept)} of {len(r.scores)} scored pairs, removed "
            f"{self.removed_dropped} below Dice {r.min_dice:g} and {self.removed_unscored} "
            "not scored"
        )
        if self.unscored > self.removed_unscored:
            line += f" ({self.unscored - self.removed_unscored} not scored are still there)"
        if self.scores_path is not None:
            line += f"; scores in {self.scores_path}"
        if self.problems:
            line += "; " + "; ".join(self.problems)
        return line


def iter_filter_files(
    model: LoadedModel,
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    min_dice: float,
    *,
    scores_path: str | os.PathLike | None = None,
    remove_dropped: bool = True,
    remove_unscored: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    tile_size: int | None = 256,
    on_stop: Callable[[FilterStop], None] | None = None,
) -> Generator[Progress, None, FilterResult]:
    """Score exported pair files; delete the dropped pairs' files and write ``scores.csv``.

    Meant for the pairs an export has just written (``images[i]`` goes with
    ``masks[i]``; names in the scores are the image file names). ``scores_path``
    is checked before the first pair is scored, so an existing file stops the
    run early unless ``overwrite``.

    Stopped before the end (closed, interrupted or failed), it still removes
    the dropped pairs scored so far and writes the scores of the scored pairs;
    with ``remove_unscored`` (for pairs this same task wrote) it removes the
    pairs not scored yet too. It then calls ``on_stop`` with a :class:`FilterStop`
    and lets the stop go on.
    """
    from ..data.image_io import read_image, read_mask

    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")

    def pairs():
        for img, msk in zip(images, masks, strict=True):
            yield Path(img).name, read_image(img), read_mask(msk)

    result = FilterResult(check_min_dice(min_dice))
    try:
        if scores_path is not None:
            plan_outputs([(scores_path, "the filter's scores")], overwrite=overwrite)
        yield from _score_into(result, model, pairs(), len(images), device, tile_size)
    except BaseException:
        stop = _tidy_after_stop(
            result, images, masks, scores_path, remove_dropped, remove_unscored, overwrite
        )
        if on_stop is not None:
            on_stop(stop)
        raise
    if remove_dropped:
        for img, msk in _dropped_files(result, images, masks):
            Path(img).unlink(missing_ok=True)
            Path(msk).unlink(missing_ok=True)
    if scores_path is not None:
        write_scores(scores_path, result, overwrite=overwrite)
    return result


def _dropped_files(result: FilterResult, images: Sequence, masks: Sequence) -> list[tuple]:
    """``(image, mask)`` of the scored pairs below the threshold."""
    k = len(result.scores)
    scored = zip(result.scores, images[:k], masks[:k], strict=True)
    return [(i, m) for s, i, m in scored if not s.kept]


def _tidy_after_stop(
    result: FilterResult,
    images: Sequence[str | os.PathLike],
    masks: Sequence[str | os.PathLike],
    scores_path: str | os.PathLike | None,
    remove_dropped: bool,
    remove_unscored: bool,
    overwrite: bool,
) -> FilterStop:
    """Make the folder agree with the scores so far; an OSError is noted, never raised, so
    the stop that led here is the one that goes on."""
    scored = len(result.scores)
    dropped = _dropped_files(result, images, masks) if remove_dropped else []
    unscored = list(zip(images[scored:], masks[scored:], strict=True)) if remove_unscored else []
    problems = _remove_pairs(dropped + unscored)
    written = None
    if scores_path is not None:
        try:
            written = write_scores(scores_path, result, overwrite=overwrite)
        except OSError as err:
            problems.append(f"scores not written: {err}")
    return FilterStop(result, len(images) - scored, len(dropped), len(unscored), written, problems)


def _remove_pairs(pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]]) -> list[str]:
    """Delete each pair's files; return what could not be deleted (empty: all gone)."""
    failed: list[str] = []
    for pair in pairs:
        for path in pair:
            try:
                Path(path).unlink(missing_ok=True)
            except OSError as err:
                failed.append(f"{path} ({err.strerror or err})")
    if not failed:
        return []
    return [f"could not remove {len(failed)} file(s): {', '.join(failed[:3])}"]


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


def stop_word(err: BaseException) -> str:
    """How a task ended early, in a word or three: a closed generator was cancelled."""
    if isinstance(err, GeneratorExit):
        return "cancelled"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return "stopped by an error"


@dataclass
class StoppedExport:
    """What :func:`iter_export_filtered` left on disk when it stopped before its end."""

    how: str  # "cancelled", "interrupted" or "stopped by an error" (:func:`stop_word`)
    out_dir: Path
    n: int  # pairs asked for
    exported: int  # pairs the export phase wrote completely
    filtering: bool  # whether a filter was asked for
    filter: FilterStop | None = None  # set when it stopped while filtering
    stale_scores: Path | None = None  # a scores file from an earlier run, left as it was

    def summary(self) -> str:
        """One line naming what is on disk, e.g. ``cancelled while filtering: kept 5 of 8
        scored pairs, removed 3 below Dice 0.7 and 12 not scored; scores in DIR/scores.csv``."""
        if self.filter is not None:
            return f"{self.how} while filtering: {self.filter.describe()}"
        line = (
            f"{self.how} while exporting: {self.exported} of {self.n} pairs written to "
            f"{self.out_dir} (images/, masks/)"
        )
        if self.filtering:
            line += ", not filtered"
            if self.stale_scores is not None:
                line += f"; {self.stale_scores} is from an earlier run, not about these pairs"
        return line


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
    on_stop: Callable[[StoppedExport], None] | None = None,
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

    Stopped before its end (closed by a Cancel, interrupted, or failed) after
    writing a pair, it calls ``on_stop`` with a :class:`StoppedExport` and lets
    the stop go on. Stopped while exporting, the complete pairs written so far
    stay (unfiltered, without scores). Stopped while filtering, only the scored
    pairs that were kept stay: those scored below ``min_dice`` and those not
    scored yet (this run wrote them) are removed, and ``scores.csv`` lists the
    scored ones.
    """
    scores_path = None
    if filter_model is not None:
        check_filter_spec(filter_model.spec, filter_model.name)
        check_min_dice(min_dice)
        scores_path = Path(out_dir) / SCORES_NAME
        plan_outputs([(scores_path, "the filter's scores")], overwrite=overwrite)
    total = 2 * n if filter_model is not None else n
    stopped = partial(StoppedExport, out_dir=Path(out_dir), n=n, filtering=scores_path is not None)
    exported = 0

    def relay_export(e: Progress) -> Progress:
        nonlocal exported
        exported = e.done
        return Progress(e.done, total, e.message, e.path)

    exporting = iter_export_pairs(
        generator, masks, out_dir, n, device=device, tile_size=tile_size,
        overwrite=overwrite, noise_strength=noise_strength, **export_kwargs,
    )  # fmt: skip
    try:
        export = yield from map_events(exporting, relay_export)
    except BaseException as err:  # map_events has closed the export: its files are complete
        if exported:  # else no pair was left: refused arguments, or a stop in the first pair
            stale = scores_path if scores_path is not None and scores_path.exists() else None
            _report(on_stop, stopped(stop_word(err), exported=exported, stale_scores=stale))
        raise
    if filter_model is None:
        return FilteredExport(export)
    stops: list[FilterStop] = []
    filtering = iter_filter_files(
        filter_model, export.images, export.masks, min_dice, scores_path=scores_path,
        remove_unscored=True, overwrite=overwrite, device=device, tile_size=tile_size,
        on_stop=stops.append,
    )  # fmt: skip
    try:
        filtered = yield from map_events(
            filtering, lambda e: Progress(n + e.done, total, f"filtering: {e.message}", e.path)
        )
    except BaseException as err:  # map_events has closed the filter, which tidied the folder
        stop = stops[0] if stops else None
        _report(on_stop, stopped(stop_word(err), exported=export.count, filter=stop))
        raise
    return FilteredExport(export, filtered, scores_path)


def _report(on_stop: Callable[[StoppedExport], None] | None, stop: StoppedExport) -> None:
    if on_stop is not None:
        on_stop(stop)
