"""Dataset sources: napari-style arrays and stacks, folders, Pascal VOC, TIFF stacks."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from napari_segen.data.conventions import IGNORE_INDEX
from napari_segen.data.datasets import (
    LabeledImage,
    SegmentationDataset,
    pairs_from_folders,
)
from napari_segen.data.image_io import ImageReadError
from napari_segen.data.sources import (
    VOC_CLASSES,
    default_class_names,
    labels_to_classes,
    num_classes_in,
    pairs_from_arrays,
    pairs_from_tiff_stacks,
    pairs_from_voc,
    voc_root,
)


def test_dense_2d_labels_are_classes():
    img = np.arange(40 * 48, dtype=np.uint16).reshape(40, 48)
    lab = np.zeros((40, 48), np.uint8)
    lab[5:10, 5:10] = 2
    lab[20:30, 20:30] = 1
    (pair,) = pairs_from_arrays(img, lab, "dense", name="em")
    assert pair.name == "em"
    assert pair.mask.dtype == np.int64
    assert set(np.unique(pair.mask)) == {0, 1, 2}  # 0 = background, every pixel counts


def test_sparse_labels_ignore_unpainted():
    img = np.zeros((32, 32), np.uint8)
    lab = np.zeros((32, 32), np.uint8)
    lab[3, 3:20] = 1  # class 0 (background) stroke
    lab[10, 3:20] = 3  # class 2 stroke
    (pair,) = pairs_from_arrays(img, lab, "sparse")
    assert (pair.mask == IGNORE_INDEX).sum() == 32 * 32 - 34
    assert set(np.unique(pair.mask)) == {IGNORE_INDEX, 0, 2}
    assert np.array_equal(labels_to_classes(lab, "sparse"), pair.mask)


def test_stack_gives_one_pair_per_annotated_slice():
    img = np.random.default_rng(0).integers(0, 255, (5, 24, 28), dtype=np.uint8)
    lab = np.zeros((5, 24, 28), np.uint8)
    lab[1, 2:5, 2:5] = 1
    lab[3, 10:20, 10:20] = 2
    pairs = pairs_from_arrays(img, lab, "sparse", name="stack")
    assert [p.name for p in pairs] == ["stack[1]", "stack[3]"]
    assert np.array_equal(pairs[1].image, img[3])


def test_rgb_stack_and_multichannel_detection():
    img = np.zeros((3, 20, 22, 3), np.uint8)
    lab = np.zeros((3, 20, 22), np.uint8)
    lab[:, :5] = 1
    pairs = pairs_from_arrays(img, lab, "dense", rgb=True)
    assert len(pairs) == 3 and pairs[0].image.shape == (20, 22, 3) and pairs[0].is_rgb


def test_array_errors_are_sentences():
    with pytest.raises(ValueError, match="do not match"):
        pairs_from_arrays(np.zeros((10, 10)), np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match="nothing is annotated"):
        pairs_from_arrays(np.zeros((2, 10, 10)), np.zeros((2, 10, 10), np.uint8), "sparse")
    with pytest.raises(ValueError, match="annotation mode"):
        labels_to_classes(np.zeros((2, 2)), "scribbles")


def _palette_png(path, values):
    im = Image.fromarray(values.astype(np.uint8), mode="P")
    pal = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [7] * (252 * 3) + [224, 224, 192]
    im.putpalette(pal)
    im.save(path)


@pytest.fixture
def voc_dir(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = ["2007_000001", "2007_000002", "2007_000003"]
    for k, i in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{i}.jpg"
        )
        m = np.zeros((30, 40), np.uint8)
        m[5:15, 5:20] = 15  # person
        m[20:25, 10:30] = 7 + k  # car / cat / chair
        m[4, :] = 255  # object border: ignore
        _palette_png(root / "SegmentationClass" / f"{i}.png", m)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids[:2]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(ids[2] + "\n")
    return tmp_path


def test_voc_palette_masks_and_splits(voc_dir):
    assert voc_root(voc_dir).name == "VOC2012"
    train = pairs_from_voc(voc_dir, "train")
    val = pairs_from_voc(voc_dir / "VOCdevkit", "val")
    assert [p.name for p in train] == ["2007_000001.jpg", "2007_000002.jpg"]
    assert len(val) == 1
    m = train[1].mask
    assert m[10, 10] == VOC_CLASSES.index("person") and m[22, 20] == VOC_CLASSES.index("cat")
    assert (m[4] == IGNORE_INDEX).all()  # 255 -> ignore, not class 1
    assert train[0].image.shape == (30, 40, 3) and train[0].is_rgb
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"
    with pytest.raises(ImageReadError, match="not a Pascal VOC folder"):
        voc_root(voc_dir / "VOCdevkit" / "VOC2012" / "JPEGImages")


def test_tiff_stacks_multiclass_and_rgb(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 4000, (4, 32, 36), dtype=np.uint16)
    lab = np.zeros((4, 32, 36), np.uint8)
    lab[0, :10] = 1
    lab[2, 10:20] = 3
    lab[3, 20:] = 2
    tifffile.imwrite(tmp_path / "img.tif", img, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="minisblack")
    pairs = pairs_from_tiff_stacks(tmp_path / "img.tif", tmp_path / "lab.tif")
    assert len(pairs) == 3  # slice 1 holds no label
    assert num_classes_in(pairs) == 4
    assert pairs[0].image.dtype == np.uint16
    sparse = pairs_from_tiff_stacks(tmp_path / "img.tif", tmp_path / "lab.tif", "sparse")
    assert sparse[1].mask.max() == 2 and (sparse[1].mask == IGNORE_INDEX).any()

    rgb = rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    tifffile.imwrite(tmp_path / "rgb_lab.tif", np.ones((2, 16, 16), np.uint8))
    pairs = pairs_from_tiff_stacks(tmp_path / "rgb.tif", tmp_path / "rgb_lab.tif")
    assert len(pairs) == 2 and pairs[0].is_rgb
    with pytest.raises(ImageReadError, match="do not match"):
        pairs_from_tiff_stacks(tmp_path / "img.tif", tmp_path / "rgb_lab.tif")


def test_folders_with_value_map(isbi_dir):
    pairs = pairs_from_folders(
        isbi_dir / "test" / "images", isbi_dir / "test" / "masks", value_map={0: 1, 255: 0}
    )
    assert len(pairs) == 4
    frac = np.mean([p.mask.mean() for p in pairs])
    assert 0.1 < frac < 0.4  # membranes are the minority class


def test_default_class_names():
    assert default_class_names(2) == ["background", "foreground"]
    assert default_class_names(3) == ["background", "class 1", "class 2"]


def test_split_single_image_by_region():
    from napari_segen.training.assembly import split_one_image

    img = np.zeros((100, 80), np.uint8)
    mask = np.ones((100, 80), np.int64)
    (train,), (val,) = split_one_image(LabeledImage(img, mask, "a"), 0.4)
    assert train.image.shape == (60, 80) and val.mask.shape == (40, 80)
    assert split_one_image(LabeledImage(img, mask, "a"), 0.0)[1] == []
    tr, va = split_one_image(LabeledImage(img, mask, "a"), 0.1)  # too thin a strip
    assert len(tr) == 1 and va == []


def test_seeded_crops_split_between_ranks(blobs_image):
    image, mask = blobs_image
    ds = SegmentationDataset([LabeledImage(image, mask)], 1, {"mode": "none"}, 32, 16, seed=3)
    ds.set_epoch(2)
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(2)
        seen.append(list(sampler))
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 8
    # A crop depends on (seed, epoch, index) only, not on who draws it or the global RNG.
    torch.manual_seed(123)
    a = ds[seen[1][0]]
    torch.manual_seed(456)
    b = ds[seen[1][0]]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ds.set_epoch(3)
    assert not torch.equal(ds[seen[1][0]][0], a[0])
