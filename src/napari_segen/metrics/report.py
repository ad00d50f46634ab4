"""The one way an image-quality result (SSIM, PSNR, FID, KID) is put into words.

A quality dict comes from :func:`~napari_segen.metrics.image_quality.paired_quality`,
:func:`~napari_segen.metrics.fid.set_distance`, both merged, or
:func:`~napari_segen.synthesis.quality.evaluate_generator`. :func:`quality_rows`
turns it into four labelled readouts (the widgets' readout shows them one per
line, with the full explanation as tooltip), :func:`quality_notes` into the
remarks under them, and :func:`format_quality_report` into text for the CLI.
No Qt, no napari.
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


def quality_notes(q: dict[str, Any] | None) -> list[str]:
    """Remarks under the readouts: the set sizes, warnings, and why FID is missing."""
    q = q or {}
    notes: list[str] = []
    if q.get("n_real") is not None and "fid" in q:
        notes.append(f"sets: {q['n_real']} real, {q['n_fake']} synthetic")
    notes.extend(str(w) for w in q.get("warnings") or [])
    if q.get("message") and q.get("fid") is None:
        notes.append(str(q["message"]))
    return notes


def format_quality_report(q: dict[str, Any] | None) -> str:
    """The readouts ``q`` holds, one per line with their meaning, then the notes."""
    rows = [r for r in quality_rows(q) if r.value != MISSING]
    if not rows:
        return (q or {}).get("message", "no quality figures")
    width = max(len(r.label) for r in rows)
    lines = [f"{r.label:<{width}}  {r.value}   ({r.note})" for r in rows]
    lines.extend(f"note: {n}" for n in quality_notes(q))
    return "\n".join(lines)
