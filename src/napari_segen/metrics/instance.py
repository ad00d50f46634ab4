"""Object-level scores: average precision over IoU-matched objects, and the EM segmentation metrics.

* **Average precision** as the 2018 Data Science Bowl and cellpose report it: at
  an IoU threshold t, objects are matched one to one (Hungarian matching on IoU,
  pairs below t not allowed) and ``AP(t) = TP / (TP + FP + FN)``.
* **Adapted Rand error** and **variation of information** (split + merge), as in
  the ISBI 2012 challenge and the U-Net paper, from :mod:`skimage.metrics`; the
  ground truth's label 0 (membrane / background) is ignored, as there.

A model is scored on objects by :func:`iter_score_objects` (``napari-segen
evaluate --objects``): the true objects come from the masks
(:func:`truth_objects`), the predicted ones from
:func:`~napari_segen.inference.instances.find_instances`. Two label images
(the Metrics widget's layers) are compared by :func:`iter_compare_objects`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error, variation_of_information
from skimage.segmentation import watershed

from ..data.conventions import IGNORE_INDEX
from ..data.datasets import LabeledImage
from ..data.instances import detect_mask_kind, instances_to_classes
from ..inference.instances import class_index, find_instances, instance_method
from ..inference.predict import predict
from ..models.model_file import LoadedModel
from ..utils.devices import resolve_device
from ..utils.generators import Progress
from .segmentation import SegmentationScores

AP_THRESHOLDS = (0.5, 0.75)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every ground-truth object with every predicted object (0 = background).

    Returns ``(iou, gt_ids, pred_ids)`` with ``iou[i, j]`` for ``gt_ids[i]``, ``pred_ids[j]``.
    """
    gt = np.asarray(gt).ravel()
    pred = np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in size: {gt.size} vs {pred.size}")
    gt_ids, gt_inv = np.unique(gt, return_inverse=True)
    pr_ids, pr_inv = np.unique(pred, return_inverse=True)
    inter = np.zeros((gt_ids.size, pr_ids.size), np.int64)
    np.add.at(inter, (gt_inv, pr_inv), 1)
    area_gt = inter.sum(1, keepdims=True)
    area_pr = inter.sum(0, keepdims=True)
    union = area_gt + area_pr - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape, float), where=union > 0)
    keep_gt, keep_pr = gt_ids > 0, pr_ids > 0
    return iou[np.ix_(keep_gt, keep_pr)], gt_ids[keep_gt], pr_ids[keep_pr]


@dataclass
class ObjectScores:
    """Matched objects over any number of images, per IoU threshold."""

    thresholds: Sequence[float] = AP_THRESHOLDS
    tp: dict[float, int] = field(default_factory=dict)
    fp: dict[float, int] = field(default_factory=dict)
    fn: dict[float, int] = field(default_factory=dict)
    n_true: int = 0
    n_pred: int = 0

    def update(self, gt: np.ndarray, pred: np.ndarray) -> ObjectScores:
        """Match the objects of one image (instance labels, 0 = none) and count."""
        iou, gt_ids, pr_ids = iou_matrix(gt, pred)
        self.n_true += gt_ids.size
        self.n_pred += pr_ids.size
        for t in self.thresholds:
            tp = _matches(iou, t)
            self.tp[t] = self.tp.get(t, 0) + tp
            self.fp[t] = self.fp.get(t, 0) + pr_ids.size - tp
            self.fn[t] = self.fn.get(t, 0) + gt_ids.size - tp
        return self

    def average_precision(self, t: float) -> float:
        """``TP / (TP + FP + FN)`` at IoU threshold ``t`` (NaN with no objects at all)."""
        denom = self.tp.get(t, 0) + self.fp.get(t, 0) + self.fn.get(t, 0)
        return self.tp.get(t, 0) / denom if denom else float("nan")

    def as_dict(self) -> dict:
        out: dict = {"objects_true": self.n_true, "objects_predicted": self.n_pred}
        for t in self.thresholds:
            key = f"{t:.2f}".rstrip("0").rstrip(".")
            out[f"ap@{key}"] = self.average_precision(t)
            out[f"tp@{key}"] = self.tp.get(t, 0)
            out[f"fp@{key}"] = self.fp.get(t, 0)
            out[f"fn@{key}"] = self.fn.get(t, 0)
        return out


def _matches(iou: np.ndarray, threshold: float) -> int:
    """Number of one-to-one matches with IoU >= threshold maximising their count."""
    if iou.size == 0:
        return 0
    ok = iou >= threshold
    if threshold > 0.5:
        # Above 0.5 IoU each object can overlap at most one other that well: no choice to make.
        return int(ok.sum())
    rows, cols = linear_sum_assignment(np.where(ok, 1.0 + iou, 0.0), maximize=True)
    return int(ok[rows, cols].sum())


def average_precision(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = AP_THRESHOLDS
) -> dict[float, float]:
    """AP of one image's predicted objects at each IoU threshold."""
    scores = ObjectScores(tuple(thresholds)).update(gt, pred)
    return {t: scores.average_precision(t) for t in thresholds}


@dataclass
class EMScores:
    """Adapted Rand error and variation of information, averaged over images."""

    rand_error: list[float] = field(default_factory=list)
    voi_split: list[float] = field(default_factory=list)
    voi_merge: list[float] = field(default_factory=list)

    def update(self, gt_regions: np.ndarray, pred_regions: np.ndarray) -> EMScores:
        """Score one image's regions (cells) against the ground truth's (label 0 ignored)."""
        gt = np.asarray(gt_regions).astype(np.int64)
        pr = np.asarray(pred_regions).astype(np.int64)
        if gt.shape != pr.shape:
            raise ValueError(
                f"ground truth and prediction differ in shape: {gt.shape} vs {pr.shape}"
            )
        err, _, _ = adapted_rand_error(gt, pr, ignore_labels=(0,))
        split, merge = variation_of_information(gt, pr, ignore_labels=(0,))
        self.rand_error.append(float(err))
        self.voi_split.append(float(split))
        self.voi_merge.append(float(merge))
        return self

    def as_dict(self) -> dict:
        def mean(v: list[float]) -> float:
            return float(np.mean(v)) if v else float("nan")

        return {
            "rand_error": mean(self.rand_error),
            "voi_split": mean(self.voi_split),
            "voi_merge": mean(self.voi_merge),
            "voi": mean(self.voi_split) + mean(self.voi_merge),
        }


# --- objects of masks and of models ----------------------------------------------------------
_INTERIOR_KEYS = ("interior", "object", "cell", "nucle")


@dataclass
class TruthObjects:
    """A mask read for object scores.

    Attributes:
        objects: one id per true object (int64, 0 = none).
        classes: the mask in the model's classes, for pixel scores (:data:`IGNORE_INDEX` kept).
        source: how the objects were read, for the report.
    """

    objects: np.ndarray
    classes: np.ndarray
    source: str


def truth_objects(
    mask: np.ndarray, class_names: Sequence[str], masks_are: str = "auto"
) -> TruthObjects:
    """The true objects of ``mask`` for a model with ``class_names``.

    An instance label image (``masks_are="instances"``, or detected by
    :func:`~napari_segen.data.instances.detect_mask_kind` under ``"auto"``) gives
    its ids, and classes as the model would see them. A class mask gives the
    connected regions of the objects' class: ``cell interior`` for membrane
    models (membrane = 0, between the cells), the interiors grown into their
    boundary for boundary models, the non-background classes otherwise.
    """
    m = np.asarray(mask).astype(np.int64)
    names = [str(n).lower() for n in class_names]
    method = instance_method(class_names)
    if masks_are == "instances":
        kind = "instances"
    elif masks_are == "classes":
        kind = "classes"
    else:
        kind = detect_mask_kind(m, len(names)).kind
    if kind == "instances":
        ids = np.where(m > 0, m, 0)
        classes = _ids_as_classes(ids, names, method)
        classes[m < 0] = IGNORE_INDEX
        return TruthObjects(ids, classes, "the instance ids in the masks")
    if method == "membrane":
        mem = class_index(names, ("membrane",), default=1)
        inner = next(j for j in range(len(names)) if j != mem)
        objects = connected_components(m == inner)
        source = f"connected regions of '{class_names[inner]}' (membrane = 0)"
    elif method == "boundary":
        b = class_index(names, ("boundar", "contour"), default=2)
        i = class_index(names, _INTERIOR_KEYS, default=1)
        seeds = connected_components(m == i)
        objects = watershed(np.zeros(m.shape), seeds, mask=(m == i) | (m == b))
        source = f"connected regions of '{class_names[i]}', grown into '{class_names[b]}'"
    else:
        objects = connected_components(m > 0)
        source = "connected regions of the non-background classes"
    return TruthObjects(objects.astype(np.int64), m, source)


def _ids_as_classes(ids: np.ndarray, names: list[str], method: str) -> np.ndarray:
    """An instance label image in a model's classes (see :func:`truth_objects`)."""
    if method == "boundary":
        three = instances_to_classes(ids, "boundary")
        lut = np.array(
            [0, class_index(names, _INTERIOR_KEYS, 1), class_index(names, ("boundar",), 2)]
        )
        return lut[three]
    if method == "membrane":
        mem = class_index(names, ("membrane",), default=1)
        inner = next(j for j in range(len(names)) if j != mem)
        return np.where(ids > 0, inner, mem).astype(np.int64)
    return (ids > 0).astype(np.int64)


@dataclass
class ObjectEvaluation:
    """A model scored on pixels and objects over a set of images."""

    pixels: SegmentationScores
    objects: ObjectScores
    em: EMScores | None
    method: str
    ground_truth: str

    def as_dict(self) -> dict[str, Any]:
        """Object scores, EM scores (membrane models) and how objects were found and read."""
        return {
            **self.objects.as_dict(),
            **(self.em.as_dict() if self.em is not None else {}),
            "method": self.method,
            "ground_truth": self.ground_truth,
        }


def iter_score_objects(
    model: LoadedModel,
    pairs: Sequence[LabeledImage],
    truths: Sequence[np.ndarray],
    *,
    tile_size: int | None = 512,
    device: str = "auto",
    min_size: int = 16,
) -> Generator[Progress, None, ObjectEvaluation]:
    """Segment each pair's image once; score its classes (pixels) and its objects.

    Args:
        model: a segmentation model.
        pairs: images with class masks in the model's classes (:attr:`TruthObjects.classes`).
        truths: the true objects of each pair (:attr:`TruthObjects.objects`).
        tile_size, device: as for prediction.
        min_size: predicted objects smaller than this many pixels are dropped.

    The adapted Rand error and VOI are computed for membrane models (cells
    enclosed by membrane, as in the ISBI challenge: the predicted cells share
    out the membrane, which the true cells' label 0 leaves unscored); their AP
    matches the true cells with the predicted cells minus the predicted membrane.
    """
    if len(truths) != len(pairs):
        raise ValueError(f"{len(pairs)} image(s) but {len(truths)} ground-truth object images")
    names = list(model.spec.class_names)
    method = instance_method(names)
    dev = resolve_device(device)
    pixels = SegmentationScores(model.spec.num_classes)
    objects = ObjectScores()
    em = EMScores() if method == "membrane" else None
    for k, (p, truth) in enumerate(zip(pairs, truths, strict=True)):
        yield Progress(k, len(pairs), f"objects of {p.name or f'image {k + 1}'}")
        pred = predict(
            model, p.image, rgb=p.is_rgb, tile_size=tile_size, device=dev,
            return_probabilities=True,
        )  # fmt: skip
        pixels.update(pred.labels, p.mask)
        found = find_instances(pred.probabilities, names, method=method, min_size=min_size)
        if em is not None:
            em.update(truth, found.labels)
            # The true cells stop at the membrane; so do the predicted ones, for their IoU.
            mem = class_index([n.lower() for n in names], ("membrane",), default=1)
            objects.update(truth, np.where(pred.labels != mem, found.labels, 0))
        else:
            objects.update(truth, found.labels)
    yield Progress(len(pairs), len(pairs), "objects scored")
    return ObjectEvaluation(pixels, objects, em, method, "")


def iter_compare_objects(
    truth: np.ndarray, predicted: np.ndarray
) -> Generator[Progress, None, dict[str, Any]]:
    """AP@0.5/0.75, object counts, Rand error and VOI of two label images (or stacks).

    Each connected region of one label value is an object (so instance label
    images are read as they are, and a class image as its regions; a note says
    when regions had to be split). Stacks are compared plane by plane.
    """
    t, p = np.asarray(truth), np.asarray(predicted)
    if t.shape != p.shape:
        raise ValueError(
            f"the two label images differ in shape ({t.shape} and {p.shape}); compare objects "
            "of the same image"
        )
    if t.ndim < 2:
        raise ValueError(f"label images have at least 2 dimensions, got shape {t.shape}")
    planes = list(np.ndindex(*t.shape[:-2]))
    objects, em = ObjectScores(), EMScores()
    split = {"ground truth": 0, "prediction": 0}
    for k, idx in enumerate(planes):
        yield Progress(k, len(planes), "comparing objects")
        pair = []
        for which, plane in (("ground truth", t[idx]), ("prediction", p[idx])):
            plane = np.where(plane > 0, plane, 0).astype(np.int64)
            regions = connected_components(plane)
            split[which] += int(regions.max()) - int(np.unique(plane[plane > 0]).size)
            pair.append(regions)
        objects.update(*pair)
        em.update(*pair)
    yield Progress(len(planes), len(planes), "objects compared")
    notes = [
        f"{which}: labels spread over several regions were counted as one object per region "
        f"({n} more object(s) than labels)"
        for which, n in split.items()
        if n > 0
    ]
    return {**objects.as_dict(), **em.as_dict(), "object_notes": notes}
