"""Mixing two training sources so one gets a chosen share of the crops.

The segmentation dataset picks images in proportion to their annotated pixels
(:class:`~napari_segen.data.datasets.SegmentationDataset`), so a source's share
of the crops is its share of the annotated pixels. :func:`mix_sources` lists
each side a whole number of times (the dataset normalises a repeated pair
once) so that ``extra`` gets about ``share`` of the crops. The same rule serves
replay of old training data (:func:`~napari_segen.data.corrections.with_replay`)
and synthetic pairs (``napari-segen train --synthetic-share``), where
``at_most=True`` makes the share a cap: the rounding never gives the synthetic
side more than asked.

:data:`SYNTHETIC_MAX_REPEAT` lets the real side be listed more often than
replay's 32 copies: a 10% cap over 16 synthetic and 4 real images of one size
needs 36 copies of the real ones (listing a pair again costs a reference, not
memory).
"""

from __future__ import annotations

from collections.abc import Sequence

from .datasets import LabeledImage

#: The most copies of either side when synthetic pairs are mixed in.
SYNTHETIC_MAX_REPEAT = 256


def annotated_pixels(pairs: Sequence[LabeledImage]) -> int:
    """The sampling weight of ``pairs`` as the dataset computes it (annotated pixels, >= 1 each)."""
    return sum(max(int((p.mask >= 0).sum()), 1) for p in pairs)


def mix_copies(
    primary: int, extra: int, share: float, max_repeat: int = 32, at_most: bool = False
) -> tuple[int, int, float]:
    """Copies ``(a, b)`` of two sides weighing ``primary`` and ``extra`` so that
    ``b * extra / (a * primary + b * extra)`` is closest to ``share``; and that share.

    Each count is between 1 and ``max_repeat``; ties go to the fewest copies.
    With ``at_most`` only mixes that do not exceed ``share`` count (unless none
    does: then the smallest share there is).
    """
    primary, extra = max(primary, 1), max(extra, 1)
    best: tuple | None = None
    for b in range(1, max_repeat + 1):
        ideal = b * extra * (1 - share) / (share * primary) if share > 0 else max_repeat
        for a in {int(ideal), int(ideal) + 1}:  # the two whole numbers around the ideal
            a = min(max(a, 1), max_repeat)
            got = b * extra / (a * primary + b * extra)
            over = at_most and got > share + 1e-9
            key = (over, got if over else abs(got - share), a + b, a, b, got)
            if best is None or key < best:
                best = key
    assert best is not None
    return best[3], best[4], best[5]


def mix_sources(
    primary: Sequence[LabeledImage],
    extra: Sequence[LabeledImage],
    share: float,
    max_repeat: int = 32,
    at_most: bool = False,
) -> list[LabeledImage]:
    """``primary`` and ``extra`` pairs, each side repeated so ``extra`` gets ~``share`` of crops.

    ``share`` 0 (or no ``extra``) gives ``primary`` alone; no ``primary`` gives ``extra``.
    """
    primary, extra = list(primary), list(extra)
    if not 0 <= share < 1:
        raise ValueError(f"the share of a mixed-in source must be in [0, 1), got {share}")
    if share == 0 or not extra:
        return primary
    if not primary:
        return extra
    a, b, _ = mix_copies(
        annotated_pixels(primary), annotated_pixels(extra), share, max_repeat, at_most
    )
    return primary * a + extra * b


def mixed_share(primary: Sequence[LabeledImage], extra: Sequence[LabeledImage], share: float,
                max_repeat: int = 32, at_most: bool = False) -> float:  # fmt: skip
    """The share of the crops ``extra`` gets from :func:`mix_sources` (0 when not used)."""
    if share == 0 or not extra or not primary:
        return 0.0 if share == 0 or not extra else 1.0
    return mix_copies(
        annotated_pixels(primary), annotated_pixels(extra), share, max_repeat, at_most
    )[2]
