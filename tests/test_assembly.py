"""The run-assembly layer: sources, split, classes, start model; the same for widget and CLI."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_segen.data.conventions import IGNORE_INDEX
from napari_segen.data.datasets import LabeledImage
from napari_segen.data.sources import ArraySource, FolderSource, PairsSource
from napari_segen.models import ModelFileError, ModelSpec
from napari_segen.models.model_file import LoadedModel
from napari_segen.training.assembly import (
    MIN_REGION_ROWS,
    NewModel,
    assemble_pix2pix,
    assemble_segmentation,
    choose_class_names,
    split_one_image,
    split_train_val,
)
from napari_segen.utils.generators import Progress, drive


def _image(h: int, w: int, top: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), np.uint8)
    labels[::7] = top  # a class in every band of rows
    return rng.integers(0, 255, (h, w), dtype=np.uint8), labels


def _folders(root, n: int, top: int = 1):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, lab = _image(48, 40, top, seed=i)
        Image.fromarray(img).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(lab).save(root / "masks" / f"{i:02d}.png")
    return root / "images", root / "masks"


def test_single_image_is_split_by_region_with_a_minimum():
    img, lab = _image(100, 80)
    source = ArraySource(img, lab, name="em")
    events: list[Progress] = []
    run = drive(
        assemble_segmentation([source], start=NewModel(depth=2), val_fraction=0.4), events.append
    )
    assert events and all(isinstance(e, Progress) for e in events)
    (train,), (val,) = run.train, run.val
    assert train.image.shape == (60, 80) and val.image.shape == (40, 80)
    assert np.array_equal(val.image, img[60:]) and "bottom 40 rows" in val.name
    # below the documented minimum (20 < 32 rows held out): the image only trains
    run = drive(assemble_segmentation([source], start=NewModel(), val_fraction=0.2))
    assert len(run.train) == 1 and run.val == [] and run.train[0].image.shape == (100, 80)
    assert MIN_REGION_ROWS == 32
    # a part without annotation is not used for validation
    sparse = np.zeros((100, 80), np.int64) + IGNORE_INDEX
    sparse[:10] = 1
    tr, va = split_one_image(LabeledImage(img, sparse, "s"), 0.4)
    assert len(tr) == 1 and va == [] and tr[0].image.shape == (100, 80)


def test_each_source_is_split_on_its_own(tmp_path):
    img, lab = _image(120, 64)
    images, masks = _folders(tmp_path, 4)
    layers = ArraySource(img, lab, name="em")
    folders = FolderSource(images, masks, {255: 1})
    run = drive(assemble_segmentation([layers, folders], start=NewModel(), val_fraction=0.3))
    names_val = [p.name for p in run.val]
    # the layer image gives its bottom rows, the folder one of its images
    assert any(n.startswith("em (bottom") for n in names_val)
    assert sum(n.endswith(".png") for n in names_val) == 1
    assert sum(n.endswith(".png") for n in (p.name for p in run.train)) == 3
    assert run.provenance["layers"][0] == "em" and run.provenance["images"] == str(images)
    # explicit validation data replaces every split
    val = PairsSource([LabeledImage(*_image(40, 40))], name="held out")
    train, val_pairs = split_train_val(
        [layers.read(), folders.read()], 0.3, val_pairs=val.read().pairs
    )
    assert len(train) == 5 and len(val_pairs) == 1
    # a source's own validation list (VOC's val) is used as it is
    own = PairsSource(
        [LabeledImage(*_image(40, 40))] * 3, val_pairs=[LabeledImage(*_image(40, 40))]
    )
    train, val_pairs = split_train_val([own.read()], 0.5)
    assert len(train) == 3 and len(val_pairs) == 1


def test_class_names_from_the_start_model_or_from_the_masks(tiny_unet):
    pairs = [LabeledImage(*_image(40, 40, top=2))]
    # a new model: the masks say how many classes, with the usual default names
    assert choose_class_names(pairs) == ["background", "class 1", "class 2"]
    assert choose_class_names([LabeledImage(*_image(40, 40, top=1))]) == [
        "background",
        "foreground",
    ]
    # names the data carries are kept and extended to cover the masks
    assert choose_class_names(pairs, hint=["bg", "cell"]) == ["bg", "cell", "class 2"]
    assert choose_class_names(pairs, names=["a", "b", "c"], hint=["x"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="only 2 class names|but there are 2 classes"):
        choose_class_names(pairs, names=["a", "b"])
    # fine-tuning: the start model's classes, and the masks must fit them
    one = [LabeledImage(*_image(40, 40, top=1))]
    assert choose_class_names(one, start=tiny_unet, hint=["x", "y", "z"]) == [
        "background",
        "foreground",
    ]
    with pytest.raises(ValueError, match="start model has 2 classes"):
        choose_class_names(pairs, start=tiny_unet)
    # names given for a start model are its new classes (renamed, or a new final layer)
    assert choose_class_names(one, start=tiny_unet.spec, names=["a", "b"]) == ["a", "b"]
    assert choose_class_names(pairs, start=tiny_unet, names=["a", "b", "c"]) == ["a", "b", "c"]


def test_start_model_default_file_and_new(tmp_path, tiny_model_file):
    img, lab = _image(64, 64)
    source = ArraySource(img, lab, name="em", class_names=["cytoplasm", "membrane"])
    run = drive(assemble_segmentation([source], start="default", val_fraction=0))
    assert isinstance(run.start, LoadedModel) and run.class_names == run.start.spec.class_names
    run = drive(assemble_segmentation([source], start=str(tiny_model_file), val_fraction=0))
    assert run.start.path == tiny_model_file and run.class_names == ["background", "foreground"]
    with pytest.raises(ModelFileError, match="missing"):
        drive(assemble_segmentation([source], start=str(tmp_path / "no.safetensors")))
    run = drive(assemble_segmentation([source], start=NewModel(depth=2, base_channels=8)))
    assert isinstance(run.start, ModelSpec)
    assert run.class_names == ["cytoplasm", "membrane"]  # the layer's names
    assert run.start.arch_kwargs == {
        "in_channels": 1, "num_classes": 2, "depth": 2, "base_channels": 8,
    }  # fmt: skip
    rgb = ArraySource(np.zeros((64, 64, 3), np.uint8), lab, name="rgb", rgb=True)
    run = drive(assemble_segmentation([source, rgb], start=NewModel("fcn_resnet50")))
    assert run.start.architecture == "fcn_resnet50" and run.start.in_channels == 3
    with pytest.raises(ValueError, match="no training data"):
        drive(assemble_segmentation([], start=NewModel()))


def test_pix2pix_follows_the_same_rules():
    img, lab = _image(100, 80, top=2)
    run = drive(assemble_pix2pix([ArraySource(img, lab, name="em")], val_fraction=0.4))
    assert [p.image.shape for p in run.train] == [(60, 80)] and len(run.val) == 1
    assert run.class_names == ["background", "class 1", "class 2"]


@pytest.mark.gui
def test_widget_and_cli_assemble_the_same_run(make_napari_viewer, tmp_path):
    """The same data through the Train widget and ``napari-segen train`` arguments."""
    from napari_segen.cli import build_parser
    from napari_segen.cli._common import sources_from_args, validation_sources
    from napari_segen.cli.train import class_names_from_args, start_from_args
    from napari_segen.widgets.train_widget import _SCRATCH_CHOICE, TrainWidget

    img, lab = _image(120, 64, top=2)
    images, masks = _folders(tmp_path / "more", 3)
    tifffile.imwrite(tmp_path / "img.tif", img, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", lab, photometric="minisblack")

    viewer = make_napari_viewer()
    viewer.add_image(img, name="em")
    viewer.add_labels(lab, name="em labels")
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    w.start_model.value = _SCRATCH_CHOICE
    w.val_split.value = 0.3
    w.use_folders.value = True
    w.images_dir.value, w.masks_dir.value = images, masks
    w.out_path.value = tmp_path / "m.safetensors"
    job = w.build_job()
    widget_run = drive(
        assemble_segmentation(
            job.sources, start=job.start, val_fraction=job.val_split, seed=job.config.seed or 0
        )
    )

    args = build_parser().parse_args(
        ["train", "--stack-image", str(tmp_path / "img.tif"), "--stack-labels",
         str(tmp_path / "lab.tif"), "--images", str(images), "--masks", str(masks),
         "--val-split", "0.3", "--out", str(tmp_path / "c.safetensors")]
    )  # fmt: skip
    cli_run = drive(
        assemble_segmentation(
            sources_from_args(args, "train"),
            start=start_from_args(args),
            val_fraction=args.val_split,
            seed=args.seed,
            val_sources=validation_sources(args),
            class_names=class_names_from_args(args),
        )
    )
    assert widget_run.class_names == cli_run.class_names == ["background", "class 1", "class 2"]
    assert widget_run.start.arch_kwargs == cli_run.start.arch_kwargs

    def key(pairs):
        return sorted((p.image.shape, int(p.image.sum()), int(p.mask.sum())) for p in pairs)

    assert key(widget_run.train) == key(cli_run.train)
    assert key(widget_run.val) == key(cli_run.val)
    assert len(widget_run.val) == 2  # the bottom rows of the image and one folder image
