"""Objects, not only pixels, from the command line: instance masks in, objects out, object and
EM metrics, classes a user can change, honest 16-bit image-quality ranges, runs that say they
are not done."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage.measure import label as connected_components
from skimage.metrics import adapted_rand_error, variation_of_information

from napari_segen.cli import main
from napari_segen.data.instances import INSTANCE_CLASS_NAMES
from napari_segen.models import ModelSpec, build_model, load_model, save_model
from napari_segen.models.model_file import LoadedModel
from synthetic_objects import touching_discs

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--depth", "2", "--base-channels", "8", "--crop-size", "64", "--batch-size", "2",
        "--samples-per-epoch", "4", "--device", "cpu", "-q"]  # fmt: skip
BOUNDARY = INSTANCE_CLASS_NAMES["boundary"]


def disc_image(inst: np.ndarray, seed: int = 0) -> np.ndarray:
    """A uint8 image of the discs: bright objects, dark background, noise."""
    rng = np.random.default_rng(seed)
    return (40 + 150 * (inst > 0) + rng.normal(0, 10, inst.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def instance_folders(tmp_path_factory):
    """images/ and masks/ of two touching-disc images; the masks are uint16 instance TIFFs."""
    root = tmp_path_factory.mktemp("instances")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for k in range(2):
        inst = touching_discs(seed=k)
        Image.fromarray(disc_image(inst, k)).save(root / "images" / f"d{k}.png")
        tifffile.imwrite(root / "masks" / f"d{k}.tif", inst)
    return root


# --- 1. instance masks in -------------------------------------------------------------------
def test_train_on_instance_masks_says_so_and_learns_boundary_classes(
    tmp_path, instance_folders, capsys
):
    out = tmp_path / "cells.safetensors"
    data = ["--images", str(instance_folders / "images"),
            "--masks", str(instance_folders / "masks"), "--val-split", "0.5"]  # fmt: skip
    assert main(["train", *data, *TINY, "--epochs", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "masks look like instance label images (2 of 2 masks; first: 9 distinct ids" in err
    assert "trained as boundary classes (background, interior, boundary)" in err
    # two epochs, the best one among the last: the run says it is not done
    assert "validation was still improving at the last epoch" in err
    assert f"--from {out} --epochs" in err
    assert load_model(out).spec.class_names == BOUNDARY

    # binary mode, said outright
    out2 = tmp_path / "binary.safetensors"
    argv = ["train", *data, *TINY, "--epochs", "1", "--out", str(out2),
            "--masks-are", "instances", "--instance-mode", "binary"]  # fmt: skip
    assert main(argv) == 0
    assert "masks read as instance label images: trained as binary classes" in (
        capsys.readouterr().err
    )
    assert load_model(out2).spec.class_names == ["background", "object"]

    # told they are classes: a new model of 10 classes, no conversion
    argv = ["train", *data, *TINY, "--epochs", "1", "--out", str(tmp_path / "c.safetensors"),
            "--masks-are", "classes"]  # fmt: skip
    assert main(argv) == 0
    assert "instance label" not in capsys.readouterr().err
    assert load_model(tmp_path / "c.safetensors").spec.num_classes == 10


def test_assembly_reads_instances_for_widget_cli_and_synthesis_alike():
    from napari_segen.data.datasets import LabeledImage
    from napari_segen.data.sources import PairsSource
    from napari_segen.training.assembly import NewModel, assemble_pix2pix, assemble_segmentation
    from napari_segen.utils.generators import drive

    inst = touching_discs(64).astype(np.int64)
    pair = LabeledImage(disc_image(inst), inst, "d")
    run = drive(assemble_segmentation([PairsSource([pair])], start=NewModel(depth=2)))
    assert run.class_names == BOUNDARY and "instance label images" in run.notes[0]
    assert set(np.unique(run.train[0].mask)) == {0, 1, 2}
    synth = drive(assemble_pix2pix([PairsSource([pair])], val_fraction=0))
    assert synth.class_names == BOUNDARY and synth.notes == run.notes
    # few objects: auto reads classes; 'instances' converts them anyway
    few = np.where(inst <= 3, inst, 0)
    few_pair = LabeledImage(disc_image(few), few, "few")
    run = drive(
        assemble_segmentation([PairsSource([few_pair])], start=NewModel(depth=2), val_fraction=0)
    )
    assert run.class_names == ["background", "class 1", "class 2", "class 3"] and not run.notes
    run = drive(
        assemble_segmentation(
            [PairsSource([few_pair])], start=NewModel(depth=2), val_fraction=0,
            masks_are="instances",
        )
    )  # fmt: skip
    assert run.class_names == BOUNDARY
    with pytest.raises(ValueError, match="instance masks become 3 classes"):
        drive(
            assemble_segmentation(
                [PairsSource([pair])], start=NewModel(), class_names=["bg", "cell"]
            )
        )


# --- 2. instances out -----------------------------------------------------------------------
def boundary_model() -> LoadedModel:
    """A 3-class (background, interior, boundary) U-Net whose output is known.

    Its encoder and decoder pass the normalised image through and its head
    thresholds it: dark = background, bright = interior, middle grey = boundary.
    """
    spec = ModelSpec(
        "unet",
        {"in_channels": 1, "num_classes": 3, "depth": 1, "base_channels": 1, "norm": "none"},
        1,
        list(BOUNDARY),
    )
    net = build_model(spec.architecture, **spec.arch_kwargs)
    with torch.no_grad():
        for param in net.parameters():
            param.zero_()
        for conv in (*net.encoders[0][::2], net.decoders[0][2]):
            conv.weight[0, 0, 1, 1] = 1.0  # identity
        net.decoders[0][0].weight[0, 1, 1, 1] = 1.0  # the skip connection, identity
        net.head.weight[:, 0, 0, 0] = torch.tensor([-20.0, 20.0, 0.0])
        net.head.bias[:] = torch.tensor([5.0, -15.0, 0.0])  # x < .25, x > .75, between
    return LoadedModel(net.eval(), spec)


def test_predict_instances_separates_touching_discs(tmp_path, capsys):
    from napari_segen.data.instances import instances_to_classes
    from napari_segen.metrics.instance import average_precision

    truth = touching_discs()
    drawn = np.array([0, 255, 128], np.uint8)[instances_to_classes(truth, "boundary")]
    (tmp_path / "in").mkdir()
    Image.fromarray(drawn).save(tmp_path / "in" / "discs.png")
    model = save_model(tmp_path / "b.safetensors", boundary_model().module, boundary_model().spec)
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "in"), "-m", str(model), "-o", str(out), "--instances",
            "--uncertainty", "--tta", "--device", "cpu", "--tile-size", "64", "-q"]  # fmt: skip
    assert main(argv) == 0
    assert "9 objects -> discs_objects.tif + discs_objects.csv" in capsys.readouterr().out
    objects = tifffile.imread(out / "discs_objects.tif")
    assert objects.dtype == np.uint16 and objects.max() == 9
    assert average_precision(truth, objects)[0.5] >= 0.9
    rows = list(csv.DictReader((out / "discs_objects.csv").open()))
    assert len(rows) == 9 and list(rows[0]) == ["label", "area", "centroid_y", "centroid_x"]
    areas = {int(r["label"]): int(r["area"]) for r in rows}
    assert areas == {i: int((objects == i).sum()) for i in range(1, 10)}
    unsure = tifffile.imread(out / "discs_uncertainty.tif")
    assert unsure.dtype == np.float32 and unsure.shape == truth.shape
    assert unsure.min() >= 0 and unsure.max() <= 1

    # never overwritten without --overwrite; the object file is left as it was
    before = (out / "discs_objects.tif").read_bytes()
    assert main(argv) == 2
    assert "discs_labels.png already exists" in capsys.readouterr().err
    assert (out / "discs_objects.tif").read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()

    # an input named like another's objects no longer clashes (its labels are
    # discs_objects_labels.tif); two inputs with one name are refused before any work
    Image.fromarray(drawn).save(tmp_path / "in" / "discs_objects.png")
    tifffile.imwrite(tmp_path / "in" / "discs.tif", drawn)
    clash = ["predict", str(tmp_path / "in"), "-m", str(model), "-o", str(tmp_path / "o2"),
             "--instances", "--format", "tif", "--device", "cpu", "-q"]  # fmt: skip
    assert main(clash) == 2
    err = capsys.readouterr().err
    assert "two outputs would be written to" in err and "discs_labels.tif" in err
    assert "of discs.png" in err and "of discs.tif" in err and err.count("\n") == 1
    assert not (tmp_path / "o2").exists()
    (tmp_path / "in" / "discs.tif").unlink()
    assert main(clash) == 0
    capsys.readouterr()
    assert (tmp_path / "o2" / "discs_objects_labels.tif").is_file()
    assert (tmp_path / "o2" / "discs_objects.tif").is_file()


# --- 3. instance and EM metrics --------------------------------------------------------------
@pytest.fixture(scope="module")
def isbi_crop(tmp_path_factory, isbi_dir):
    """ISBI slice 20 cropped to 128 x 128: class masks (0/255) and the same cells as ids."""
    root = tmp_path_factory.mktemp("isbi_objects")
    for sub in ("images", "masks", "ids"):
        (root / sub).mkdir()
    image = Image.open(isbi_dir / "test" / "images" / "20.png").crop((0, 0, 128, 128))
    mask = Image.open(isbi_dir / "test" / "masks" / "20.png").crop((0, 0, 128, 128))
    image.save(root / "images" / "20.png")
    mask.save(root / "masks" / "20.png")
    cells = connected_components(np.asarray(mask) == 255)  # cell interior = 255 in ISBI
    tifffile.imwrite(root / "ids" / "20.tif", cells.astype(np.uint16))
    return root, cells


def test_evaluate_objects_on_isbi_matches_skimage(isbi_crop, capsys):
    from napari_segen.inference import predict
    from napari_segen.inference.instances import find_instances
    from napari_segen.models import default_model_path

    root, cells = isbi_crop
    data = ["--images", str(root / "images"), "--masks", str(root / "masks"),
            "--mask-map", "0:1,255:0", "--device", "cpu"]  # fmt: skip
    assert main(["evaluate", *data, "--objects", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["objects"]

    model = load_model(default_model_path())
    image = np.asarray(Image.open(root / "images" / "20.png"))
    pred = predict(model, image, tile_size=512, device="cpu", return_probabilities=True)
    regions = find_instances(pred.probabilities, model.spec.class_names).labels
    err, _, _ = adapted_rand_error(cells, regions, ignore_labels=(0,))
    split, merge = variation_of_information(cells, regions, ignore_labels=(0,))
    assert got["method"] == "membrane"
    assert got["objects_true"] == cells.max()
    assert got["rand_error"] == pytest.approx(err)
    assert got["voi_split"] == pytest.approx(split) and got["voi_merge"] == pytest.approx(merge)
    assert 0.5 <= got["ap@0.5"] <= 1 and got["ap@0.75"] <= got["ap@0.5"]

    assert main(["evaluate", *data, "--objects"]) == 0
    table = capsys.readouterr().out
    assert "ground truth: connected regions of 'cell interior' (membrane = 0)" in table
    assert f"Rand error  {err:.4f}" in table
    assert f"VOI         {split + merge:.3f}  (split {split:.3f}, merge {merge:.3f})" in table
    assert "AP@0.5" in table and "AP@0.75" in table

    # the same cells as an instance label image: read as such, the same scores
    ids = ["--images", str(root / "images"), "--masks", str(root / "ids"), "--device", "cpu"]
    assert main(["evaluate", *ids, "--objects", "--json"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)["objects"]
    assert again["ground_truth"] == "the instance ids in the masks"
    assert again["rand_error"] == pytest.approx(err) and again["ap@0.5"] == got["ap@0.5"]


# --- 4. classes a user can change ------------------------------------------------------------
@pytest.fixture
def three_class_folders(tmp_path, blobs_image):
    """One image whose mask holds classes 0, 1 and 2."""
    image, mask = blobs_image
    root = tmp_path / "three"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    three = mask.copy()
    three[:, 40:][three[:, 40:] == 1] = 2
    Image.fromarray(image).save(root / "images" / "a.png")
    Image.fromarray(three.astype(np.uint8)).save(root / "masks" / "a.png")
    return root


def test_fine_tune_two_classes_to_three_replaces_the_head(
    tmp_path, tiny_model_file, three_class_folders, capsys
):
    data = ["--images", str(three_class_folders / "images"),
            "--masks", str(three_class_folders / "masks")]  # fmt: skip
    tiny = ["--crop-size", "64", "--batch-size", "2", "--samples-per-epoch", "2", "--device",
            "cpu", "-q", "--epochs", "1"]  # fmt: skip
    out = tmp_path / "three.safetensors"
    # without names the 2-class model cannot take class 2: one line says what to do
    assert main(["train", *data, *tiny, "--from", str(tiny_model_file), "--out", str(out)]) == 2
    assert "name all 3 classes" in capsys.readouterr().err
    argv = ["train", *data, *tiny, "--from", str(tiny_model_file), "--classes", "bg,left,right",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "tiny has 2 classes (background, foreground), this run 3 (bg, left, right): its " in err
    assert "final layer is replaced" in err
    model = load_model(out)
    assert model.spec.class_names == ["bg", "left", "right"]
    assert model.spec.arch_kwargs["num_classes"] == 3 and len(model.spec.class_colors) == 3
    assert model.spec.provenance["classes_changed_from"] == ["background", "foreground"]
    # the encoder came from the start model (fine-tuned, so close to it, not re-initialised)
    start = load_model(tiny_model_file)
    w0 = start.module.encoders[0][0].weight
    w1 = model.module.encoders[0][0].weight
    assert torch.corrcoef(torch.stack([w0.ravel(), w1.ravel()]))[0, 1] > 0.9

    # same count, other names: renamed, every weight kept
    from napari_segen.models.heads import with_classes

    renamed = with_classes(start, ["cytoplasm", "cell"])
    assert renamed.module is start.module and renamed.spec.class_names == ["cytoplasm", "cell"]
    assert start.spec.class_names == ["background", "foreground"]  # the caller's model as it was


def test_heads_of_unet_and_fcn_and_the_generator_refusal(tmp_path, capsys):
    from napari_segen.models.heads import with_classes
    from napari_segen.models.pix2pix import Pix2PixGenerator

    spec = ModelSpec("fcn_resnet50", {"in_channels": 1, "num_classes": 2}, 1, ["bg", "fg"])
    fcn = LoadedModel(build_model(spec.architecture, **spec.arch_kwargs).eval(), spec)
    changed = with_classes(fcn, ["a", "b", "c", "d"])
    assert changed.spec.arch_kwargs["num_classes"] == 4
    with torch.no_grad():
        assert changed.module(torch.zeros(1, 1, 32, 32)).shape == (1, 4, 32, 32)
    old, new = fcn.module.state_dict(), changed.module.state_dict()
    differ = {k for k in old if old[k].shape != new[k].shape or not torch.equal(old[k], new[k])}
    assert differ == {"net.classifier.4.weight", "net.classifier.4.bias"}
    # the changed model is a valid model file
    path = save_model(tmp_path / "fcn4.safetensors", changed.module, changed.spec)
    assert load_model(path).spec.class_names == ["a", "b", "c", "d"]

    gen_spec = ModelSpec("pix2pix_generator", {"num_classes": 2, "ngf": 4, "depth": 2}, 1,
                         ["bg", "fg"], task="synthesis")  # fmt: skip
    gen = save_model(tmp_path / "gen.safetensors", Pix2PixGenerator(2, 1, ngf=4, depth=2), gen_spec)
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "i" / "a.png")
    Image.fromarray(np.eye(32, dtype=np.uint8)).save(tmp_path / "m" / "a.png")
    argv = [
        "train",
        "--images",
        str(tmp_path / "i"),
        "--masks",
        str(tmp_path / "m"),
        "--from",
        str(gen),
        "--out",
        str(tmp_path / "x.safetensors"),
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "gen is an image generator (pix2pix), not a segmentation model" in err


# --- 5. honest image-quality ranges ------------------------------------------------------------
@pytest.fixture(scope="module")
def sixteen_bit(tmp_path_factory):
    """Real and noisy 16-bit images with values 0-235, as files and arrays."""
    root = tmp_path_factory.mktemp("u16")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    real = (20 + 200 * ((yy - 24) ** 2 + (xx - 24) ** 2 < 150)).astype(np.uint16)
    real = np.clip(real + rng.normal(0, 8, real.shape), 0, 235).astype(np.uint16)
    fake = np.clip(real + rng.normal(0, 20, real.shape), 0, 235).astype(np.uint16)
    for sub, im in (("real", real), ("fake", fake)):
        (root / sub).mkdir()
        tifffile.imwrite(root / sub / "a.tif", im)
    return root, real, fake


def test_sixteen_bit_images_use_the_range_found_and_say_so(sixteen_bit, capsys):
    from napari_segen.metrics.image_quality import paired_quality, ssim

    root, real, fake = sixteen_bit
    argv = ["metrics", str(root / "real"), str(root / "fake"), "--no-fid"]
    assert main([*argv, "--json"]) == 0
    q = json.loads(capsys.readouterr().out)
    r = float(max(real.max(), fake.max()) - min(real.min(), fake.min()))
    assert q["data_range_source"] == "observed" and q["data_range"] == r
    assert q["ssim"]["mean"] == pytest.approx(ssim(real, fake, data_range=r))
    assert q["ssim"]["mean"] == pytest.approx(paired_quality([real], [fake])["ssim"]["mean"])
    assert q["ssim"]["mean"] < ssim(real, fake, data_range=65535) - 0.05  # not ~1 any more
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"SSIM  {q['ssim']['mean']:.4f}" in text
    assert "warning: 1 of 1 pair(s) use a small part of the uint16 range (largest value" in text
    assert f"R = {r:g}), not 65535" in text
    # a range given is used and said to be given
    assert main([*argv, "--json", "--data-range", "65535"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert given["data_range_source"] == "given" and "data_range_note" not in given


def tiny_generator(norm: dict) -> LoadedModel:
    """An untrained small pix2pix generator for 2 classes with the given normalisation."""
    from napari_segen.models.pix2pix import Pix2PixGenerator

    torch.manual_seed(0)
    spec = ModelSpec("pix2pix_generator",
                     {"num_classes": 2, "out_channels": 1, "ngf": 4, "depth": 3}, 1,
                     ["background", "object"], normalization=norm, task="synthesis")  # fmt: skip
    return LoadedModel(Pix2PixGenerator(2, 1, ngf=4, depth=3).eval(), spec)


def test_synth_evaluate_gives_the_metrics_number_for_the_same_pair(tmp_path, sixteen_bit, capsys):
    """One rule: the synthesis readout scores the images as written, like ``metrics``."""
    from napari_segen.data.datasets import LabeledImage
    from napari_segen.synthesis.quality import evaluate_generator

    _, real, _ = sixteen_bit
    norm = {"mode": "range", "min": 0.0, "max": 235.0, "output_dtype": "uint16"}
    model = tiny_generator(norm)
    gen = save_model(tmp_path / "gen.safetensors", model.module, model.spec)
    mask = (real > 100).astype(np.uint8)
    for sub, im in (("images", real), ("masks", mask * 255)):
        (tmp_path / sub).mkdir()
        (tifffile.imwrite if sub == "images" else lambda p, a: Image.fromarray(a).save(p))(
            tmp_path / sub / ("a.tif" if sub == "images" else "a.png"), im
        )
    base = ["--model", str(gen), "--device", "cpu"]
    assert main(["synth", "generate", str(tmp_path / "masks"), *base, "-o",
                 str(tmp_path / "fakes")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["metrics", str(tmp_path / "images"), str(tmp_path / "fakes"), "--no-fid",
                 "--json"]) == 0  # fmt: skip
    by_files = json.loads(capsys.readouterr().out)
    assert main(["synth", "evaluate", "--images", str(tmp_path / "images"), "--masks",
                 str(tmp_path / "masks"), *base, "--no-fid", "--json"]) == 0  # fmt: skip
    by_synth = json.loads(capsys.readouterr().out)
    assert by_synth["ssim"]["mean"] == pytest.approx(by_files["ssim"]["mean"], abs=1e-9)
    assert by_synth["psnr"]["mean"] == pytest.approx(by_files["psnr"]["mean"], abs=1e-9)
    assert by_synth["data_range_source"] == by_files["data_range_source"]
    q = evaluate_generator(model, [LabeledImage(real, mask.astype(np.int64))], fid=False,
                           device="cpu")  # fmt: skip
    assert q["ssim"]["mean"] == pytest.approx(by_files["ssim"]["mean"], abs=1e-9)


# --- 6. training that says when it is not done -------------------------------------------------
def test_still_improving_rule():
    from napari_segen.training.trainer import still_improving

    assert still_improving(20, 20) and still_improving(19, 20)  # the last 2
    assert still_improving(28, 30) and not still_improving(27, 30)  # the last 10% (3)
    assert not still_improving(5, 20)  # long since: patience would have stopped it
    assert still_improving(1, 1) and not still_improving(0, 0)
