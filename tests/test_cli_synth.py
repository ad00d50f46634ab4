"""``napari-segen synth`` train / generate / export / evaluate on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from napari_segen.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """images/ and masks/ (0/255 PNG masks) of three 48x48 blob images."""
    root = tmp_path_factory.mktemp("synthcli")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for k in range(3):
        mask = np.zeros((48, 48), np.uint8)
        for _ in range(3):
            cy, cx = rng.integers(8, 40, 2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < int(rng.integers(4, 9)) ** 2] = 255
        img = (40 + 0.6 * mask + rng.normal(0, 8, mask.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"b{k}.png")
        Image.fromarray(mask).save(root / "masks" / f"b{k}.png")
    return root


@pytest.fixture(scope="module")
def generator(folders):
    out = folders / "gen.safetensors"
    code = main(
        [
            "synth",
            "train",
            "--images",
            str(folders / "images"),
            "--masks",
            str(folders / "masks"),
            "--val-split",
            "0.34",
            "--steps",
            "6",
            "--crop-size",
            "32",
            "--ngf",
            "4",
            "--ndf",
            "4",
            "--n-layers",
            "2",
            "--sample-every",
            "3",
            "--checkpoint-every",
            "3",
            "--device",
            "cpu",
            "--no-eval",
            "--quiet",
            "--classes",
            "background,blob",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_train_writes_generator_and_samples(generator, capsys):
    assert generator.is_file() and generator.with_suffix(".json").is_file()
    spec = json.loads(generator.with_suffix(".json").read_text())
    assert spec["task"] == "synthesis" and spec["class_names"] == ["background", "blob"]
    samples = sorted(p.name for p in (generator.parent / "gen_samples").iterdir())
    assert samples == ["step_000000.png", "step_000003.png", "step_000006.png"]


def test_train_resume_and_refusals(generator, folders, capsys):
    base = [
        "synth",
        "train",
        "--images",
        str(folders / "images"),
        "--masks",
        str(folders / "masks"),
    ]
    tiny = ["--crop-size", "32", "--ngf", "4", "--ndf", "4", "--n-layers", "2", "--device", "cpu"]
    # refuses to overwrite
    assert main([*base, *tiny, "--steps", "2", "--quiet", "--out", str(generator)]) == 2
    assert "already exists" in capsys.readouterr().err
    # bad crop size: one line
    assert (
        main([*base, *tiny[2:], "--crop-size", "30", "--out", str(folders / "x.safetensors")]) == 2
    )
    assert "multiple of 2**depth" in capsys.readouterr().err
    # resume to 8 steps
    code = main(
        [
            *base,
            *tiny,
            "--steps",
            "8",
            "--resume",
            "--no-eval",
            "--quiet",
            "--sample-every",
            "0",
            "--out",
            str(generator),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 8


def _configs_seen_by_the_trainer(monkeypatch) -> list:
    """The SynthConfig of every ``train_pix2pix`` call the CLI makes (the run still goes on)."""
    from napari_segen.synthesis import trainer

    seen = []
    real = trainer.train_pix2pix

    def spy(*args, config, **kwargs):
        seen.append(config)
        return real(*args, config=config, **kwargs)

    monkeypatch.setattr(trainer, "train_pix2pix", spy)
    return seen


def test_train_preset_and_variant_flags_reach_the_trainer(folders, tmp_path, monkeypatch, capsys):
    from napari_segen.cli.synth import PRESET_NAMES
    from napari_segen.data.conventions import DEFAULT_SYNTH_PRESET
    from napari_segen.synthesis import trainer

    assert tuple(trainer.PRESETS) == PRESET_NAMES
    seen = _configs_seen_by_the_trainer(monkeypatch)
    base = ["synth", "train", "--images", str(folders / "images"), "--masks",
            str(folders / "masks"), "--crop-size", "32", "--ngf", "4", "--ndf", "4",
            "--n-layers", "2", "--device", "cpu", "--steps", "2", "--sample-every", "0",
            "--no-eval", "--quiet"]  # fmt: skip
    # the preset, with one of its settings overridden
    out = tmp_path / "texture.safetensors"
    texture = ["--preset", "texture", "--fm-weight", "5", "--noise-init", "0.2"]
    assert main([*base, *texture, "--out", str(out)]) == 0
    cfg = seen[-1]
    assert cfg.noise_init == 0.2
    assert (cfg.upsample, cfg.noise, cfg.d_scales, cfg.fm_weight, cfg.l1_weight) == (
        "resize", True, 2, 5.0, 10.0,
    )  # fmt: skip
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["arch_kwargs"]["upsample"] == "resize" and spec["arch_kwargs"]["noise"] is True
    assert spec["provenance"]["config"]["fm_weight"] == 5.0
    # no --preset: the default recipe, the one measured to help (augment)
    assert main([*base, "--out", str(tmp_path / "default.safetensors")]) == 0
    assert DEFAULT_SYNTH_PRESET == "augment"
    augment = trainer.PRESETS["augment"]
    assert seen[-1] == trainer.SynthConfig(**{**vars(seen[-1]), **augment})
    # single flags on the paper's recipe
    flags = ["--preset", "pix2pix", "--upsample", "bilinear", "--noise", "--d-scales", "2",
             "--l1-weight", "50"]  # fmt: skip
    assert main([*base, *flags, "--out", str(tmp_path / "single.safetensors")]) == 0
    cfg = seen[-1]
    assert (cfg.upsample, cfg.noise, cfg.d_scales, cfg.fm_weight, cfg.l1_weight) == (
        "bilinear", True, 2, 0.0, 50.0,
    )  # fmt: skip
    paper = ["--preset", "pix2pix", "--out", str(tmp_path / "paper.safetensors")]
    assert main([*base, *paper]) == 0
    assert seen[-1] == trainer.SynthConfig(**{**vars(seen[-1]), **trainer.PRESETS["pix2pix"]})
    # the default recipe's noise terms can be turned off one by one
    n_runs = len(seen)
    off = ["--no-l1-noise-free", "--mode-seeking", "0", "--no-noise"]
    assert main([*base, *off, "--out", str(tmp_path / "off.safetensors")]) == 0
    assert (seen[-1].noise, seen[-1].l1_noise_free, seen[-1].ms_weight) == (False, False, 0.0)
    assert len(seen) == n_runs + 1
    # a setting the networks cannot take: one line, exit code 2
    n_runs = len(seen)
    assert main([*base, "--d-scales", "3", "--out", str(tmp_path / "x.safetensors")]) == 2
    capsys.readouterr()
    assert main([*base, "--no-noise", "--out", str(tmp_path / "y.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "l1_noise_free needs a generator with noise" in err
    assert len(seen) == n_runs


def test_train_sizes_fit_the_machine(folders, tmp_path, monkeypatch, capsys):
    """Without size flags a CPU run gets CPU-sized settings (the paper's take hours there),
    says so, and a flag the user gives wins."""
    from napari_segen.synthesis import device_defaults

    seen = _configs_seen_by_the_trainer(monkeypatch)
    base = ["synth", "train", "--images", str(folders / "images"), "--masks",
            str(folders / "masks"), "--device", "cpu", "--n-layers", "2", "--no-eval",
            "--sample-every", "0", "--quiet", "--preset", "pix2pix"]  # fmt: skip
    # a 32-px crop given by hand keeps this short; the rest comes from the CPU row
    assert main([*base, "--crop-size", "32", "--out", str(tmp_path / "a.safetensors"),
                 "--time-limit", "0.01"]) == 0  # fmt: skip
    cpu = device_defaults.DEVICE_DEFAULTS["cpu"]
    cfg = seen[-1]
    assert (cfg.crop_size, cfg.ngf, cfg.ndf, cfg.steps) == (32, cpu["width"], cpu["width"], 300)
    err = capsys.readouterr().err
    assert "settings for this machine: --steps 300, --ngf 32, --ndf 32" in err
    assert "--crop-size" not in err.split("settings for this machine:")[1].splitlines()[0]
    # on a GPU the paper's sizes
    monkeypatch.setattr(device_defaults, "device_kind", lambda device: "gpu")
    sizes, defaulted = device_defaults.device_defaults("cuda", ngf=8)
    assert sizes == {"steps": 2000, "crop_size": 256, "ngf": 8, "ndf": 64}
    assert defaulted == ["steps", "crop_size", "ndf"]


def test_generate(generator, folders, tmp_path, capsys):
    out = tmp_path / "gen_images"
    code = main(
        [
            "synth",
            "generate",
            str(folders / "masks"),
            "--model",
            str(generator),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["b0.png", "b1.png", "b2.png"]
    img = np.asarray(Image.open(out / "b0.png"))
    assert img.shape == (48, 48) and img.dtype == np.uint8
    # refuses to overwrite, and refuses a segmentation model
    assert (
        main(
            [
                "synth",
                "generate",
                str(folders / "masks" / "b0.png"),
                "--model",
                str(generator),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "synth",
                "generate",
                str(folders / "masks"),
                "--model",
                str(tmp_path / "nope.safetensors"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err


def test_export_then_segmentation_train_accepts_it(generator, folders, tmp_path, capsys):
    out = tmp_path / "pairs"
    code = main(
        [
            "synth",
            "export",
            "--masks",
            str(folders / "masks"),
            "--model",
            str(generator),
            "--n",
            "4",
            "--out",
            str(out),
            "--size",
            "32",
            "40",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["pairs"] == 4
    assert len(list((out / "images").iterdir())) == 4
    mask = np.asarray(Image.open(out / "masks" / "synth_0000.png"))
    assert mask.shape == (32, 40) and set(np.unique(mask)) <= {0, 1}
    code = main(
        [
            "train",
            "--images",
            str(out / "images"),
            "--masks",
            str(out / "masks"),
            "--epochs",
            "1",
            "--crop-size",
            "32",
            "--depth",
            "2",
            "--base-channels",
            "4",
            "--batch-size",
            "2",
            "--samples-per-epoch",
            "4",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(tmp_path / "seg.safetensors"),
        ]
    )
    assert code == 0
    assert (tmp_path / "seg.safetensors").is_file()


def test_evaluate_prints_metrics(generator, folders, capsys):
    code = main(
        [
            "synth",
            "evaluate",
            "--model",
            str(generator),
            "--images",
            str(folders / "images"),
            "--masks",
            str(folders / "masks"),
            "--no-fid",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0
    q = json.loads(capsys.readouterr().out)
    assert q["ssim"]["n"] == 3 and "psnr" in q
    code = main(
        [
            "synth",
            "evaluate",
            "--model",
            str(generator),
            "--images",
            str(folders / "images"),
            "--masks",
            str(folders / "masks"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "SSIM" in text and "PSNR" in text


def test_synth_train_takes_the_segmentation_sources_voc(tmp_path):
    """The cGAN trains from the same sources as segmentation training, VOC included."""
    from PIL import Image as PILImage

    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    ids = [f"2008_00000{i}" for i in range(3)]
    rng = np.random.default_rng(0)
    for i in ids:
        m = np.zeros((48, 48), np.uint8)
        m[8:30, 8:30] = 12
        im = PILImage.fromarray(m, mode="P")
        im.putpalette([0, 0, 0] + [128, 64, 0] * 255)
        im.save(root / "SegmentationClass" / f"{i}.png")
        rgb = (np.stack([m * 10] * 3, -1) + rng.integers(0, 20, (48, 48, 3))).astype(np.uint8)
        PILImage.fromarray(rgb).save(root / "JPEGImages" / f"{i}.jpg")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:2]))
    (root / "ImageSets/Segmentation/val.txt").write_text(ids[2])
    out = tmp_path / "voc_gen.safetensors"
    args = ["synth", "train", "--voc", str(tmp_path), "--steps", "2", "--crop-size", "32",
            "--ngf", "4", "--ndf", "4", "--n-layers", "2", "--device", "cpu", "--no-eval",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_generate_with_the_bundled_generator(tmp_path):
    """``--model default``: the bundled ISBI generator draws membranes (class 1) dark on a
    lighter cell interior, with no training first; ISBI-style masks go through --mask-map."""
    yy, xx = np.mgrid[:128, :128]
    mask = np.full((128, 128), 255, np.uint8)  # ISBI: 255 = cell interior
    mask[(np.abs(yy - 64) < 4) | (np.abs(xx - 40) < 4)] = 0  # 0 = membrane
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "m.png")
    out = tmp_path / "out"
    args = ["synth", "generate", str(tmp_path / "masks"), "--model", "default", "--out", str(out)]
    assert main([*args, "--mask-map", "0:1,255:0", "--device", "cpu", "--quiet"]) == 0
    img = np.asarray(Image.open(out / "m.png"), float)
    assert img.shape == (128, 128)
    assert img[mask == 0].mean() < img[mask == 255].mean() - 20


def _membrane_mask_dir(tmp_path):
    """One 64x64 ISBI-style mask (0/1 classes: cell interior, membrane) in a folder."""
    mask = np.zeros((64, 64), np.uint8)
    mask[30:34] = 1
    mask[:, 20:24] = 1
    (tmp_path / "masks").mkdir()
    Image.fromarray(mask).save(tmp_path / "masks" / "m.png")
    return tmp_path / "masks"


def test_generate_noise_strength(tmp_path):
    """--noise-strength 0: the bundled (noise) generator's noise-free drawing, whatever the
    seed; the same seed at strength 1 draws another image."""
    masks = _membrane_mask_dir(tmp_path)
    base = ["synth", "generate", str(masks), "--model", "default", "--device", "cpu", "--quiet"]
    runs = {"s1": [], "s0": ["--noise-strength", "0"],
            "s0b": ["--noise-strength", "0", "--seed", "5"]}  # fmt: skip
    images = {}
    for name, flags in runs.items():
        assert main([*base, *flags, "--out", str(tmp_path / name)]) == 0
        images[name] = np.asarray(Image.open(tmp_path / name / "m.png"))
    assert not np.array_equal(images["s1"], images["s0"])
    np.testing.assert_array_equal(images["s0"], images["s0b"])


@pytest.mark.parametrize("strength", ["-1", "5", "nan"])
@pytest.mark.parametrize("action", ["generate", "export"])
def test_noise_strength_out_of_range_is_one_line(action, strength, tmp_path, capsys):
    masks = _membrane_mask_dir(tmp_path)
    out = tmp_path / "out"
    args = ["synth", action, "--model", "default", "--noise-strength", strength, "--out", str(out)]
    args += [str(masks)] if action == "generate" else ["--masks", str(masks), "--n", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--noise-strength" in err and "0 to 4" in err
    assert "Traceback" not in err and not out.exists()


def test_export_noise_strength_and_filter(tmp_path, capsys):
    """export takes --noise-strength too, and a non-segmentation filter model is one line."""
    masks = _membrane_mask_dir(tmp_path)
    base = ["synth", "export", "--masks", str(masks), "--model", "default", "--n", "1",
            "--no-flips", "--no-rot90", "--scale", "1", "1", "--elastic-alpha", "0",
            "--device", "cpu", "--quiet"]  # fmt: skip
    for name, flags in (("s0", ["--noise-strength", "0"]), ("s1", [])):
        assert main([*base, *flags, "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()

    def read(name):
        return np.asarray(Image.open(tmp_path / name / "images" / "synth_0000.png"))

    assert not np.array_equal(read("s0"), read("s1"))
    generated = tmp_path / "gen0"
    gen = ["synth", "generate", str(masks), "--model", "default", "--device", "cpu", "--quiet"]
    assert main([*gen, "--noise-strength", "0", "--out", str(generated)]) == 0
    np.testing.assert_array_equal(read("s0"), np.asarray(Image.open(generated / "m.png")))
    capsys.readouterr()
    from napari_segen.models import default_generator_path

    bad = [*base, "--filter-model", str(default_generator_path()), "--out", str(tmp_path / "f")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a segmentation model" in err
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("calibrate", [True, False])
def test_train_calibrates_the_texture_strength(folders, tmp_path, capsys, calibrate):
    """A noise generator trained with held-out pairs gets its texture strength calibrated:
    the summary line is printed and recorded; --no-calibrate records none."""
    out = tmp_path / "t.safetensors"
    args = ["synth", "train", "--images", str(folders / "images"), "--masks",
            str(folders / "masks"), "--val-split", "0.34", "--preset", "balanced",
            "--crop-size", "32", "--ngf", "4", "--ndf", "4", "--n-layers", "2", "--steps", "2",
            "--sample-every", "0", "--checkpoint-every", "0", "--device", "cpu", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert main(args + ([] if calibrate else ["--no-calibrate"])) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert prov["config"]["ssim_weight"] == 1000.0 and prov["config"]["ms_weight"] == 0.3
    assert "held_out_quality" in prov
    if calibrate:
        chosen = prov["noise_calibration"]["chosen"]
        assert [ln for ln in lines if ln.startswith(f"texture strength x{round(chosen, 2):g}")]
        assert summary["noise_strength"] == chosen
    else:
        assert "noise_calibration" not in prov and summary["noise_strength"] == 1.0
        assert not [ln for ln in lines if ln.startswith("texture strength")]


def test_generate_defaults_to_the_recorded_strength(tmp_path, capsys):
    """Without --noise-strength, generate and export draw at the strength recorded in the
    generator file (here 0.25): the same images as --noise-strength 0.25."""
    from napari_segen.models import default_generator_path
    from napari_segen.models.model_file import save_model
    from napari_segen.synthesis import load_generator

    model = load_generator(default_generator_path())
    model.spec.provenance["noise_calibration"] = {"chosen": 0.25}
    path = save_model(tmp_path / "cal.safetensors", model.module, model.spec)
    masks = _membrane_mask_dir(tmp_path)
    base = ["synth", "generate", str(masks), "--model", str(path), "--device", "cpu", "--quiet"]
    runs = {"default": [], "s025": ["--noise-strength", "0.25"], "s1": ["--noise-strength", "1"]}
    images = {}
    for name, flags in runs.items():
        assert main([*base, *flags, "--out", str(tmp_path / name)]) == 0
        images[name] = np.asarray(Image.open(tmp_path / name / "m.png"))
    np.testing.assert_array_equal(images["default"], images["s025"])
    assert not np.array_equal(images["default"], images["s1"])
    export = ["synth", "export", "--masks", str(masks), "--model", str(path), "--n", "1",
              "--no-flips", "--no-rot90", "--scale", "1", "1", "--elastic-alpha", "0",
              "--device", "cpu", "--quiet"]  # fmt: skip
    for name, flags in (("e_default", []), ("e025", ["--noise-strength", "0.25"])):
        assert main([*export, *flags, "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    read = [np.asarray(Image.open(tmp_path / n / "images" / "synth_0000.png"))
            for n in ("e_default", "e025")]  # fmt: skip
    np.testing.assert_array_equal(*read)
