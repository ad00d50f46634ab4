"""The one way a quality result (SSIM, PSNR, FID, KID; object and EM scores) is put into words.

A quality dict comes from :func:`~napari_segen.metrics.image_quality.paired_quality`,
:func:`~napari_segen.metrics.fid.set_distance`, both merged, or
:func:`~napari_segen.synthesis.quality.evaluate_generator`. :func:`quality_rows`
turns it into four labelled readouts (the widgets' readout shows them one per
line, with the full explanation as tooltip), :func:`quality_notes` into the
remarks under them, and :func:`format_quality_report` into text for the CLI.
Object scores (:mod:`napari_segen.metrics.instance`: ``ap@0.5``, ``ap@0.75``,
object counts, ``rand_error``, ``voi``...) become rows through :func:`object_rows`,
in the same report. No Qt, no napari.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .fid import FEATURE_DISTANCE_HELP, FID_HELP, KID_HELP
from .image_quality import PSNR_HELP, SSIM_HELP

SSIM_SHORT = "paired: structural similarity, 1 = identical (Wang 2004, 11x11 Gaussian window)"
PSNR_SHORT = "paired: peak signal-to-noise ratio in dB, higher = closer to the real image"
FID_SHORT = "sets: distance of Inception feature statistics, 0 = same distribution, lower = better"
KID_SHORT = "sets: unbiased kernel distance on the same features, fairer for small sets"
FEATURE_SHORT = "not FID: FID's formula on other features; compare only with the same extractor"
FEATURE_MMD_SHORT = "kernel MMD (KID's formula) on the same features; not KID"
AP_SHORT = "objects: matched one to one at IoU >= {t}; TP / (TP + FP + FN), 1 = all found"
AP_HELP = (
    "Average precision as the 2018 Data Science Bowl and cellpose report it: predicted and "
    "true objects are matched one to one (Hungarian matching on IoU, pairs below the IoU "
    "threshold not allowed); AP = TP / (TP + FP + FN). 1 = every object found with no extra "
    "ones; 0.5 is the usual threshold, 0.75 asks for tight outlines."
)
COUNT_SHORT = "objects in the ground truth and in the prediction"
RAND_SHORT = "adapted Rand error (ISBI 2012): 0 = the same cells, lower = better"
RAND_HELP = (
    "Adapted Rand error = 1 - F-score of the Rand index over pairs of pixels in the same / "
    "different regions, as in the ISBI 2012 challenge and the U-Net paper (skimage.metrics."
    "adapted_rand_error). Ground-truth label 0 (membrane, background) is ignored."
)
VOI_SHORT = "variation of information in bits: split = over-, merge = under-segmentation"
VOI_HELP = (
    "Variation of information (Meila 2003) = H(truth | prediction) + H(prediction | truth): "
    "the split part grows when true objects are cut apart, the merge part when they are "
    "merged (skimage.metrics.variation_of_information). Ground-truth label 0 is ignored. "
    "0 = identical; lower is better."
)

#: The value of a readout the result does not hold.
MISSING = "-"


@dataclass(frozen=True)
class QualityRow:
    """One readout: ``label`` (SSIM, PSNR, FID...), its ``value`` text, a one-line
    ``note`` on what it means and the full ``help``."""

    key: str
    label: str
    value: str
    note: str
    help: str


def _paired(stats: dict[str, Any] | None, digits: int, unit: str = "") -> str:
    if not stats or stats.get("mean") is None:
        return MISSING
    mean, std = stats["mean"], stats.get("std")
    if math.isinf(mean):
        return f"inf{unit} (identical images) over {stats['n']}"
    spread = "" if std is None or math.isnan(std) else f" +/- {std:.{digits}f}"
    return f"{mean:.{digits}f}{spread}{unit}  (n={stats['n']})"


def quality_rows(q: dict[str, Any] | None) -> list[QualityRow]:
    """SSIM, PSNR, FID and KID readouts of ``q`` (:data:`MISSING` where it holds none).

    Without Inception weights FID and KID become the labelled feature distance
    and feature MMD; FID asked for but not computable reads "not computed".
    """
    q = q or {}
    rows = [
        QualityRow("ssim", "SSIM", _paired(q.get("ssim"), 4), SSIM_SHORT, SSIM_HELP),
        QualityRow("psnr", "PSNR", _paired(q.get("psnr"), 2, " dB"), PSNR_SHORT, PSNR_HELP),
    ]
    fid = QualityRow("fid", "FID", MISSING, FID_SHORT, FID_HELP)
    kid = QualityRow("kid", "KID", MISSING, KID_SHORT, KID_HELP)
    if q.get("fid") is not None:
        fid = QualityRow("fid", "FID", f"{q['fid']:.3f}", FID_SHORT, FID_HELP)
        if q.get("kid_mean") is not None:
            value = f"{q['kid_mean']:.5f} +/- {q['kid_std']:.5f}"
            kid = QualityRow("kid", "KID", value, KID_SHORT, KID_HELP)
    elif q.get("feature_distance") is not None:
        feature = q.get("feature", "feature distance")
        fid = QualityRow(
            "fid",
            "Feature distance",
            f"{q['feature_distance']:.4f}",
            f"{feature} - {FEATURE_SHORT}",
            FEATURE_DISTANCE_HELP,
        )
        value = MISSING
        if q.get("feature_kid_mean") is not None:
            value = f"{q['feature_kid_mean']:.5f} +/- {q['feature_kid_std']:.5f}"
        kid = QualityRow("kid", "Feature MMD", value, FEATURE_MMD_SHORT, FEATURE_DISTANCE_HELP)
    elif "fid" in q:
        fid = QualityRow("fid", "FID", "not computed", FID_SHORT, FID_HELP)
        kid = QualityRow("kid", "KID", "not computed", KID_SHORT, KID_HELP)
    return [*rows, fid, kid]


def _number(v: Any, digits: int) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) and math.isfinite(v) else MISSING


def object_rows(q: dict[str, Any] | None) -> list[QualityRow]:
    """AP@0.5, AP@0.75, object counts, Rand error and VOI readouts: those ``q`` holds."""
    q = q or {}
    rows: list[QualityRow] = []
    for key in sorted(k for k in q if k.startswith("ap@")):
        t = key[3:]
        counts = ""
        if f"tp@{t}" in q:
            counts = f"  (TP {q[f'tp@{t}']}, FP {q[f'fp@{t}']}, FN {q[f'fn@{t}']})"
        value = _number(q[key], 3)
        rows.append(
            QualityRow(key, f"AP@{t}", value + counts * (value != MISSING),
                       AP_SHORT.format(t=t), AP_HELP)
        )  # fmt: skip
    if "objects_true" in q:
        value = f"{q['objects_true']} true, {q.get('objects_predicted', 0)} predicted"
        rows.append(QualityRow("objects", "Objects", value, COUNT_SHORT, AP_HELP))
    if "rand_error" in q:
        rows.append(
            QualityRow("rand_error", "Rand error", _number(q["rand_error"], 4), RAND_SHORT,
                       RAND_HELP)
        )  # fmt: skip
    if "voi" in q:
        value = _number(q["voi"], 3)
        if value != MISSING and "voi_split" in q:
            value += f"  (split {q['voi_split']:.3f}, merge {q['voi_merge']:.3f})"
        rows.append(QualityRow("voi", "VOI", value, VOI_SHORT, VOI_HELP))
    return rows


def quality_notes(q: dict[str, Any] | None) -> list[str]:
    """Remarks under the readouts: the data range found, the set sizes, warnings, why FID is
    missing, and how the objects were read."""
    q = q or {}
    notes: list[str] = []
    if q.get("data_range_note"):
        notes.append(str(q["data_range_note"]))
    notes.extend(str(n) for n in q.get("object_notes") or [])
    if q.get("n_real") is not None and "fid" in q:
        notes.append(f"sets: {q['n_real']} real, {q['n_fake']} synthetic")
    notes.extend(str(w) for w in q.get("warnings") or [])
    if q.get("message") and q.get("fid") is None:
        notes.append(str(q["message"]))
    return notes


def format_quality_report(q: dict[str, Any] | None) -> str:
    """The readouts ``q`` holds, one per line with their meaning, then the notes."""
    rows = [r for r in [*quality_rows(q), *object_rows(q)] if r.value != MISSING]
    if not rows:
        return (q or {}).get("message", "no quality figures")
    width = max(len(r.label) for r in rows)
    lines = [f"{r.label:<{width}}  {r.value}   ({r.note})" for r in rows]
    warning = (q or {}).get("data_range_note")
    lines.extend(f"{'warning' if n == warning else 'note'}: {n}" for n in quality_notes(q))
    return "\n".join(lines)
