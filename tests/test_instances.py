"""Objects, not only pixels: instance masks in, objects out, object and EM metrics."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error, variation_of_information

from napari_segen.data.conventions import IGNORE_INDEX
from napari_segen.data.instances import detect_mask_kind, instances_to_classes
from napari_segen.inference.instances import find_instances, instance_method
from napari_segen.metrics.instance import EMScores, ObjectScores, average_precision, iou_matrix
from synthetic_objects import touching_discs


def test_detects_instance_masks_and_not_class_masks():
    inst = touching_discs()
    kind = detect_mask_kind(inst)
    assert kind.kind == "instances" and kind.num_ids == 9
    classes = np.zeros((64, 64), np.int64)
    classes[10:20, 10:20] = 1
    classes[30:40, 30:40] = 1
    classes[50:60, 5:15] = 2
    assert detect_mask_kind(classes).kind == "classes"
    # many classes, each spread over many regions: still classes
    stripes = np.tile(np.repeat(np.arange(12), 2), (48, 2))[:, :48]
    assert detect_mask_kind(stripes).kind == "classes"


def test_instances_to_classes_separates_touching_objects():
    inst = touching_discs()
    three = instances_to_classes(inst, "boundary")
    assert set(np.unique(three)) == {0, 1, 2}
    # the interiors alone (class 1) fall apart into one component per object
    assert connected_components(three == 1).max() == 9
    binary = instances_to_classes(inst, "binary")
    assert np.array_equal(binary, (inst > 0).astype(np.int64))
    inst_ign = inst.astype(np.int64)
    inst_ign[:3, :3] = IGNORE_INDEX
    assert (instances_to_classes(inst_ign, "binary")[:3, :3] == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="instance mode"):
        instances_to_classes(inst, "blobs")


def _probs_from_classes(classes: np.ndarray, k: int, noise: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = np.eye(k, dtype=np.float32)[classes].transpose(2, 0, 1) * 4
    logits += rng.normal(0, noise, logits.shape).astype(np.float32)
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


def test_boundary_model_objects_separate_touching_discs():
    inst = touching_discs()
    probs = _probs_from_classes(instances_to_classes(inst, "boundary"), 3)
    names = ["background", "interior", "boundary"]
    assert instance_method(names) == "boundary"
    found = find_instances(probs, names)
    assert found.count == 9
    ap = average_precision(inst, found.labels)
    assert ap[0.5] >= 0.9
    assert len(found.features["area"]) == 9 and (found.features["area"] > 50).all()


def test_foreground_model_objects_split_touching_discs():
    inst = touching_discs()
    probs = _probs_from_classes((inst > 0).astype(np.int64), 2)
    found = find_instances(probs, ["background", "nuclei"], min_distance=8)
    assert found.method == "foreground"
    assert average_precision(inst, found.labels)[0.5] >= 0.9


def test_average_precision_matches_a_hand_computed_case():
    gt = np.zeros((10, 10), int)
    gt[0:4, 0:4] = 1  # 16 px
    gt[6:10, 6:10] = 2  # 16 px
    gt[0:2, 7:9] = 3  # 4 px, missed
    pred = np.zeros_like(gt)
    pred[0:4, 0:3] = 5  # IoU 12/16 = 0.75 with gt 1
    pred[6:10, 7:10] = 7  # IoU 12/16 = 0.75 with gt 2
    pred[6:10, 6] = 8  # IoU 4/16 = 0.25 with gt 2: a false positive
    iou, gt_ids, pr_ids = iou_matrix(gt, pred)
    assert list(gt_ids) == [1, 2, 3] and list(pr_ids) == [5, 7, 8]
    assert iou[0, 0] == pytest.approx(0.75) and iou[1, 2] == pytest.approx(0.25)
    ap = average_precision(gt, pred, thresholds=(0.5, 0.75, 0.8))
    # t=0.5 and 0.75: TP 2, FP 1, FN 1 -> 2/4; t=0.8: TP 0, FP 3, FN 3 -> 0
    assert ap[0.5] == pytest.approx(0.5) and ap[0.75] == pytest.approx(0.5)
    assert ap[0.8] == 0.0
    s = ObjectScores().update(gt, pred).update(gt, gt)
    assert s.as_dict()["ap@0.5"] == pytest.approx((2 + 3) / (4 + 3))


def test_rand_error_and_voi_equal_skimage_on_the_sample(isbi_dir):
    from napari_segen.data.image_io import read_mask

    raw = read_mask(isbi_dir / "test" / "masks" / "20.png", {0: 1, 255: 0})
    gt = connected_components(raw == 0)  # cells = interiors; membrane (0) ignored
    probs = _probs_from_classes(raw, 2, noise=1.5, seed=1)
    found = find_instances(probs, ["cell interior", "membrane"])
    assert found.method == "membrane" and found.count > 20
    em = EMScores().update(gt, found.labels).as_dict()
    err, _, _ = adapted_rand_error(gt, found.labels, ignore_labels=(0,))
    split, merge = variation_of_information(gt, found.labels, ignore_labels=(0,))
    assert em["rand_error"] == pytest.approx(err)
    assert em["voi"] == pytest.approx(split + merge)
    assert 0 <= em["rand_error"] < 0.5
