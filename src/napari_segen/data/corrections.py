"""Training pairs from a user's corrections of a segmentation: the fixes count more.

The loop: a model segments an image, the user fixes its mistakes with the brush,
and the model is fine-tuned on the result. Every pixel the user changed
(``labels_now != model_prediction``) is a mistake the model made and the user
took the time to fix; the other pixels are the model's own prediction, which
the user looked at and accepted (or never looked at). So:

* **changed** pixels get the loss weight ``changed_weight`` (default 2: on ISBI
  fine-tunes 2 beat both 1 and 5; 5 over-corrected, the model then erred the
  other way on held-out images, see ``tests/test_training_loop.py``);
* **untouched** pixels are, by ``untouched``:

  - ``"keep"`` (default): labels as they are, weight 1: what the user accepted
    keeps the model where it was right;
  - ``"ignore"``: not training data (:data:`IGNORE_INDEX`): only the fixes
    train (best when the user corrected some regions and never looked at the rest);
  - ``"pseudo"``: labels as they are with a lower weight (``pseudo_weight``,
    default 0.3): pseudo-labels that count less than real annotation.

  Pixels inside the regions the user **reviewed** (``reviewed``: e.g. the tiles
  visited with "Next region to correct") are kept with weight 1 whatever the
  mode: there the user looked and accepted what the model drew, which is
  annotation too. So "correct the K most uncertain tiles, ignore the rest" is
  ``untouched="ignore"`` with ``reviewed`` = those tiles.

**Replay** (:func:`with_replay`): fine-tuning on the corrected images alone
drifts away from what the model learned before; adding the data it was
trained on keeps it, and listing the new pairs several times gives them a fair
share of the crops however many old images there are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .conventions import IGNORE_INDEX
from .datasets import LabeledImage
from .layout import spatial_layout
from .mixing import mix_sources
from .sources import DENSE, labels_to_classes

UNTOUCHED_MODES = ("keep", "ignore", "pseudo")

#: Defaults: a corrected pixel counts twice an untouched one; pseudo-labels 0.3.
CHANGED_WEIGHT = 2.0
PSEUDO_WEIGHT = 0.3


def correction_pair(
    image: np.ndarray,
    labels_now: np.ndarray,
    model_prediction: np.ndarray,
    *,
    changed_weight: float = CHANGED_WEIGHT,
    untouched: str = "keep",
    pseudo_weight: float = PSEUDO_WEIGHT,
    reviewed: np.ndarray | None = None,
    name: str = "corrected",
    rgb: bool | None = None,
) -> LabeledImage:
    """One training pair whose pixel weights say which pixels the user corrected.

    Args:
        image: the 2D image (gray or colour) that was segmented.
        labels_now: the labels after the user's corrections (class indices, 0 = background).
        model_prediction: the classes the model predicted (as segmented), same shape.
        changed_weight: loss weight of the pixels the user changed.
        untouched: what the other pixels are: ``"keep"``, ``"ignore"`` or
            ``"pseudo"`` (see the module docstring).
        pseudo_weight: weight of the untouched pixels with ``"pseudo"``.
        reviewed: bool, same shape: pixels the user looked at; untouched ones
            there are kept with weight 1 in every mode (None: no such region).
        name: the pair's name.
        rgb: whether the image's last axis is colour (None: from its shape).

    Raises:
        ValueError: shapes differ, a mode or weight is invalid, or nothing is
            left to train on (``"ignore"`` and no pixel changed).
    """
    if untouched not in UNTOUCHED_MODES:
        raise ValueError(
            f"untouched pixels are one of {', '.join(UNTOUCHED_MODES)}, not {untouched!r}"
        )
    if not (changed_weight > 0 and pseudo_weight >= 0):
        raise ValueError(
            f"weights must be positive (changed {changed_weight}, pseudo {pseudo_weight})"
        )
    labels = labels_to_classes(np.asarray(labels_now), DENSE)
    prediction = np.asarray(model_prediction)
    if prediction.shape != labels.shape:
        raise ValueError(
            f"{name}: the stored prediction has shape {prediction.shape} but the labels have "
            f"shape {labels.shape}; segment the image again before correcting it"
        )
    changed = labels != prediction
    accepted = np.zeros_like(changed)
    if reviewed is not None:
        accepted = np.asarray(reviewed, bool)
        if accepted.shape != labels.shape:
            raise ValueError(
                f"{name}: the reviewed regions have shape {accepted.shape} but the labels have "
                f"shape {labels.shape}"
            )
    untouched_weight = {"keep": 1.0, "ignore": 0.0, "pseudo": pseudo_weight}[untouched]
    weight = np.where(accepted, np.float32(1.0), np.float32(untouched_weight))
    weight[changed] = changed_weight
    if untouched == "ignore":
        labels[~(changed | accepted)] = IGNORE_INDEX
        if not (changed | accepted).any():
            raise ValueError(
                f"{name}: no pixel differs from the model's segmentation, and untouched pixels "
                "are ignored: correct some labels first (or keep the untouched pixels)"
            )
    return LabeledImage(image, labels, name, rgb, weight.astype(np.float32))


def correction_pairs(
    image: np.ndarray,
    labels_now: np.ndarray,
    model_prediction: np.ndarray,
    predicted: np.ndarray | None = None,
    *,
    reviewed: np.ndarray | None = None,
    name: str = "corrected",
    rgb: bool | None = None,
    **options,
) -> list[LabeledImage]:
    """:func:`correction_pair` for an image or a stack, one pair per slice.

    Args:
        image, labels_now, model_prediction: as in :func:`correction_pair`, with
            the same leading stack axes (numpy or dask images, read per slice).
        predicted: bool over the stack axes (a scalar for one image): which slices
            the model segmented. A slice it did not segment is plain dense
            labels (weight 1) when anything is painted on it, else skipped.
        reviewed: bool, the labels' shape: the regions the user reviewed (see
            :func:`correction_pair`); None: none.
        name, rgb: as in :func:`correction_pair` (slices are named ``name[z]``).
        **options: ``changed_weight``, ``untouched``, ``pseudo_weight``.

    Slices whose labels and prediction are both all 0 are skipped (never
    segmented, or nothing there); no pair at all is a ValueError.
    """
    leading, is_rgb = spatial_layout(tuple(image.shape), rgb)
    spatial = tuple(image.shape[: len(leading) + 2])
    if tuple(labels_now.shape) != spatial:
        raise ValueError(
            f"labels of shape {tuple(labels_now.shape)} do not match image {name!r} of shape "
            f"{spatial}; choose the Labels layer painted over this image"
        )
    done = np.ones(leading, bool) if predicted is None else np.asarray(predicted, bool)
    pairs = []
    for idx in np.ndindex(*leading) if leading else [()]:
        lab, pred = np.asarray(labels_now[idx]), np.asarray(model_prediction[idx])
        slice_name = f"{name}[{','.join(map(str, idx))}]" if leading else name
        plane = np.asarray(image[idx])
        if not done[idx]:
            if lab.any():
                mask = labels_to_classes(lab, DENSE)
                pairs.append(LabeledImage(plane, mask, slice_name, is_rgb))
            continue
        if not (lab.any() or pred.any()):
            continue
        seen = None if reviewed is None else np.asarray(reviewed[idx], bool)
        pairs.append(
            correction_pair(plane, lab, pred, reviewed=seen, name=slice_name, rgb=is_rgb, **options)
        )
    if not pairs:
        raise ValueError(f"nothing is segmented or painted over {name!r}: segment it first")
    return pairs


def changed_fraction(labels_now: np.ndarray, model_prediction: np.ndarray) -> float:
    """The fraction of pixels the user changed (0 when the shapes differ)."""
    a, b = np.asarray(labels_now), np.asarray(model_prediction)
    return float((a != b).mean()) if a.shape == b.shape and a.size else 0.0


def with_replay(
    pairs: Sequence[LabeledImage],
    replay: Sequence[LabeledImage],
    share: float = 0.5,
    max_repeat: int = 32,
) -> list[LabeledImage]:
    """``pairs`` and the ``replay`` pairs (the model's old training data), balanced.

    The training crops are drawn from each image in proportion to its
    annotated pixels, so one corrected image next to twenty old ones would get
    a twentieth of them. Here the smaller side is listed several times (the
    dataset normalises a repeated pair once) so that about ``share`` of the
    crops come from ``replay`` (at most ``max_repeat`` copies): the rule of
    :func:`~napari_segen.data.mixing.mix_sources`, which synthetic pairs share.
    """
    pairs, replay = list(pairs), list(replay)
    if not replay or not pairs:
        return pairs + replay
    if not 0 < share < 1:
        raise ValueError(f"the replay share must be between 0 and 1, got {share}")
    return mix_sources(pairs, replay, share, max_repeat)
