"""Corrections that count: pixel weights from a user's fixes, through crops, losses and training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_segen.data.augment import AugmentConfig
from napari_segen.data.conventions import IGNORE_INDEX
from napari_segen.data.corrections import (
    changed_fraction,
    correction_pair,
    correction_pairs,
    with_replay,
)
from napari_segen.data.datasets import LabeledImage, SegmentationDataset
from napari_segen.data.sampler import CropSampler
from napari_segen.training.losses import SegmentationLoss, soft_dice_loss


def _fixture():
    """A 6x6 image, a prediction with one wrong 2x2 block and the user's fixed labels."""
    image = np.arange(36, dtype=np.uint8).reshape(6, 6)
    prediction = np.zeros((6, 6), np.uint8)
    prediction[:, 3:] = 1
    labels = prediction.copy()
    labels[1:3, 1:3] = 1  # the user painted the membrane the model missed
    return image, labels, prediction


def test_changed_pixels_get_the_weight_and_untouched_ones_are_kept():
    image, labels, prediction = _fixture()
    p = correction_pair(image, labels, prediction, changed_weight=5.0)
    changed = labels != prediction
    assert changed.sum() == 4 and changed_fraction(labels, prediction) == pytest.approx(4 / 36)
    assert p.weight.dtype == np.float32 and p.weight.shape == (6, 6)
    assert (p.weight[changed] == 5).all() and (p.weight[~changed] == 1).all()
    np.testing.assert_array_equal(p.mask, labels)  # the accepted prediction is training data


def test_ignore_mode_trains_on_the_fixes_only():
    image, labels, prediction = _fixture()
    p = correction_pair(image, labels, prediction, untouched="ignore")
    changed = labels != prediction
    assert (p.mask[~changed] == IGNORE_INDEX).all() and (p.mask[changed] == 1).all()
    assert (p.weight[~changed] == 0).all()
    with pytest.raises(ValueError, match="no pixel differs"):
        correction_pair(image, prediction, prediction, untouched="ignore")


def test_pseudo_mode_lowers_the_weight_of_untouched_pixels():
    image, labels, prediction = _fixture()
    p = correction_pair(image, labels, prediction, untouched="pseudo", pseudo_weight=0.3)
    changed = labels != prediction
    np.testing.assert_allclose(p.weight[~changed], 0.3)
    assert (p.weight[changed] == 2).all()  # the default correction weight
    np.testing.assert_array_equal(p.mask, labels)
    with pytest.raises(ValueError, match="untouched"):
        correction_pair(image, labels, prediction, untouched="forget")


def test_reviewed_regions_keep_what_the_user_accepted_there():
    """The user reviewed the left half (one fix there) and never looked at the right half:
    with "ignore", the accepted pixels of the reviewed half still train, the rest does not."""
    image, labels, prediction = _fixture()
    reviewed = np.zeros((6, 6), bool)
    reviewed[:, :3] = True
    p = correction_pair(image, labels, prediction, untouched="ignore", reviewed=reviewed)
    changed = labels != prediction
    assert (p.weight[changed] == 2).all()
    accepted = reviewed & ~changed
    assert (p.weight[accepted] == 1).all()
    np.testing.assert_array_equal(p.mask[accepted], prediction[accepted])
    assert (p.mask[~reviewed] == IGNORE_INDEX).all() and (p.weight[~reviewed] == 0).all()
    # a reviewed region with nothing to fix is still training data
    assert correction_pair(image, prediction, prediction, untouched="ignore", reviewed=reviewed)
    # stacks: one reviewed mask per slice
    pairs = correction_pairs(
        np.stack([image, image]), np.stack([labels, labels]),
        np.stack([prediction, prediction]), reviewed=np.stack([reviewed, ~reviewed]),
        untouched="ignore",
    )  # fmt: skip
    assert (pairs[1].mask[accepted] == IGNORE_INDEX).all()  # not reviewed in slice 1
    np.testing.assert_array_equal(pairs[1].mask[changed], labels[changed])  # fixes always count
    with pytest.raises(ValueError, match="reviewed regions have shape"):
        correction_pair(image, labels, prediction, reviewed=reviewed[:4])


def test_stack_corrections_per_slice():
    image, labels, prediction = _fixture()
    stack = np.stack([image, image, image])
    lab = np.stack([labels, np.zeros_like(labels), labels])
    pred = np.stack([prediction, np.zeros_like(prediction), np.zeros_like(prediction)])
    # slice 1: never segmented and nothing painted (skipped); slice 2: painted, not segmented
    pairs = correction_pairs(stack, lab, pred, np.array([True, False, False]), name="s")
    assert [p.name for p in pairs] == ["s[0]", "s[2]"]
    assert pairs[0].weight is not None and pairs[1].weight is None
    with pytest.raises(ValueError, match="do not match"):
        correction_pairs(stack, lab[:, :4], pred)


def test_split_rows_carry_the_weights():
    from napari_segen.training.assembly import split_one_image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (100, 40), np.uint8)
    mask = rng.integers(0, 2, (100, 40))
    weight = rng.random((100, 40)).astype(np.float32)
    (train,), (val,) = split_one_image(LabeledImage(image, mask, "a", weight=weight), 0.4)
    np.testing.assert_array_equal(train.weight, weight[:60])
    np.testing.assert_array_equal(val.weight, weight[60:])
    with pytest.raises(ValueError, match="pixel weights"):
        LabeledImage(image, mask, weight=weight[:10])


def test_weights_follow_crops_flips_and_rotations():
    """Every pixel's value is unique, the mask and weight are functions of it: any
    misaligned crop, flip or rotation breaks the relation somewhere."""
    h, w = 40, 36
    value = torch.arange(h * w, dtype=torch.float32).reshape(h, w)
    x = value[None].clone()
    y = (value.long() % 3).clone()
    weight = torch.ones(h, w)
    weight[5:15, 20:30] = 5.0  # a known region: corrected pixels
    region = torch.zeros(h, w, dtype=torch.bool)
    region[5:15, 20:30] = True
    sampler = CropSampler([x], [y], 24, pixel_weights=[weight])
    g = torch.Generator().manual_seed(0)
    seen_rotations = set()
    for _ in range(60):
        xc, yc, wc = sampler.sample(g)
        v = xc[0].long()
        assert torch.equal(yc, v % 3)
        assert torch.equal(wc == 5, region.flatten()[v.flatten()].reshape(v.shape))
        seen_rotations.add((int(v[0, 1] - v[0, 0]), int(v[1, 0] - v[0, 0])))
    assert len(seen_rotations) == 8  # every flip/rotation combination was drawn
    # padding (crop larger than the image): weight 0 where the mask is unannotated
    padded = CropSampler([x], [y], 48, mask_fill=IGNORE_INDEX, pixel_weights=[weight])
    xc, yc, wc = padded.sample(g)
    assert (wc[yc == IGNORE_INDEX] == 0).all() and (wc[yc != IGNORE_INDEX] > 0).all()
    xs, ys, ws = sampler.batch(3, g)
    assert xs.shape == (3, 1, 24, 24) and ys.shape == ws.shape == (3, 24, 24)


def test_dataset_gives_weights_through_elastic_deformation():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (48, 48), np.uint8)
    mask = (np.arange(48)[None, :] >= 24).repeat(48, 0).astype(np.int64)
    weight = np.where(mask == 1, 5.0, 1.0).astype(np.float32)
    plain = LabeledImage(image, mask, "plain")
    fixed = LabeledImage(image, mask, "fixed", weight=weight)
    aug = AugmentConfig(elastic_p=1.0, intensity=0.0)
    ds = SegmentationDataset([plain, fixed, fixed], 1, {"mode": "none"}, 32, 20, aug, seed=0)
    assert len(ds.sampler.images) == 3 and ds.sampler.images[1] is ds.sampler.images[2]
    for i in range(20):
        x, y, w = ds[i]
        assert w.shape == y.shape == x.shape[-2:]
        assert (w[y == IGNORE_INDEX] == 0).all()
        assert set(torch.unique(w).tolist()) <= {0.0, 1.0, 5.0}
        counted = y != IGNORE_INDEX
        # the weight still marks class 1 (or is 1 everywhere: the unweighted pair)
        assert torch.equal(w[counted] == 5, y[counted] == 1) or (w[counted] == 1).all()
    # without any weight map the dataset gives pairs, as before
    assert len(SegmentationDataset([plain], 1, {"mode": "none"}, 32, 4, seed=0)[0]) == 2


def test_weighted_loss_equals_a_hand_computation():
    # 1 image of 1 x 3 pixels, 2 classes; the middle pixel is unannotated
    logits = torch.tensor([[[[2.0, 0.0, -1.0]], [[0.0, 1.0, 1.0]]]])
    target = torch.tensor([[[0, IGNORE_INDEX, 1]]])
    weight = torch.tensor([[[1.0, 7.0, 5.0]]])

    def ce(z, k):
        return -(z[k] - math.log(math.exp(z[0]) + math.exp(z[1])))

    ce0, ce2 = ce([2.0, 0.0], 0), ce([-1.0, 1.0], 1)
    cw = [0.5, 2.0]  # class weights
    expected = (1 * cw[0] * ce0 + 5 * cw[1] * ce2) / (1 * cw[0] + 5 * cw[1])
    loss = SegmentationLoss(cw, dice_weight=0.0)(logits, target, weight)
    assert float(loss) == pytest.approx(expected, rel=1e-6)

    # soft Dice with weights: p = softmax per pixel, smoothed (2I + 1) / (S + 1) per class
    p = torch.softmax(logits, 1)[0, :, 0]  # (class, pixel)
    dice = []
    for k in (0, 1):
        onehot = [1.0 if t == k else 0.0 for t in (0, -1, 1)]
        w = [1.0, 0.0, 5.0]
        inter = sum(w[i] * float(p[k, i]) * onehot[i] for i in range(3))
        s = sum(w[i] * (float(p[k, i]) + onehot[i]) for i in range(3))
        dice.append((2 * inter + 1) / (s + 1))
    assert float(soft_dice_loss(logits, target, weight)) == pytest.approx(1 - np.mean(dice))
    both = SegmentationLoss(cw, dice_weight=0.5)(logits, target, weight)
    assert float(both) == pytest.approx(expected + 0.5 * (1 - np.mean(dice)), rel=1e-6)


def test_unit_weights_change_nothing_and_zero_weight_is_ignore():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    loss = SegmentationLoss([1.0, 2.0, 0.5], dice_weight=0.5)
    ones = torch.ones(2, 8, 8)
    assert float(loss(logits, target, ones)) == pytest.approx(float(loss(logits, target)))
    keep = torch.rand(2, 8, 8) > 0.5
    ignored = torch.where(keep, target, torch.full_like(target, IGNORE_INDEX))
    assert float(loss(logits, target, keep.float())) == pytest.approx(
        float(loss(logits, ignored)), rel=1e-6
    )
    assert float(loss(logits, target, torch.zeros(2, 8, 8))) == 0.0


def test_replay_gets_the_share_asked_for():
    a = LabeledImage(np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.int64), "new")
    old = [LabeledImage(np.zeros((10, 10), np.uint8), np.ones((10, 10), np.int64))] * 6
    mixed = with_replay([a], old, share=0.5)
    assert sum(p is a for p in mixed) == 6 and len(mixed) == 12
    assert with_replay([a], [], 0.5) == [a]
    few = with_replay([a] * 4, old[:1], share=0.5)  # replay smaller: it is repeated
    assert sum(p is old[0] for p in few) == 4


def test_trainer_fine_tunes_on_weighted_pairs(tiny_unet):
    from napari_segen.training import TrainConfig, train_segmentation
    from napari_segen.utils.generators import drive

    image, labels, prediction = _fixture()
    big = np.kron(image, np.ones((8, 8), np.uint8))
    pair = correction_pair(big, np.kron(labels, np.ones((8, 8), np.uint8)), np.kron(
        prediction, np.ones((8, 8), np.uint8)), untouched="pseudo")  # fmt: skip
    cfg = TrainConfig(epochs=1, batch_size=2, crop_size=32, samples_per_epoch=4, device="cpu")
    steps = []
    result = drive(train_segmentation([pair], [], None, start=tiny_unet, config=cfg), steps.append)
    losses = [e.loss for e in steps if e.kind == "step"]
    assert len(losses) == 2 and all(np.isfinite(losses)) and result.model is not None
    assert steps[0].model is not None  # step events carry the live model (previews)


def test_cli_replays_old_training_data(tmp_path, capsys):
    import tifffile

    from napari_segen.cli import main

    rng = np.random.default_rng(0)
    for folder, n in (("new", 1), ("old", 3)):
        (tmp_path / folder / "images").mkdir(parents=True)
        (tmp_path / folder / "masks").mkdir()
        for i in range(n):
            image = rng.integers(0, 255, (40, 40), np.uint8)
            tifffile.imwrite(tmp_path / folder / "images" / f"{i}.tif", image)
            tifffile.imwrite(
                tmp_path / folder / "masks" / f"{i}.tif", (image > 128).astype(np.uint8)
            )
    out = tmp_path / "m.safetensors"
    args = ["train", "--images", str(tmp_path / "new" / "images"), "--masks",
            str(tmp_path / "new" / "masks"), "--replay-images", str(tmp_path / "old" / "images"),
            "--replay-masks", str(tmp_path / "old" / "masks"), "--epochs", "1",
            "--samples-per-epoch", "2", "--batch-size", "1", "--crop-size", "16", "--depth", "1",
            "--base-channels", "2", "--device", "cpu", "-q", "--no-augment", "--val-split", "0",
            "-o", str(out)]  # fmt: skip
    assert main(args) == 0 and out.is_file()
    assert "replaying 3 image(s)" in capsys.readouterr().err
    assert main([*args[:7], *args[9:], "--overwrite"]) == 2  # no --replay-masks: a usage error
    assert "--replay-masks" in capsys.readouterr().err
