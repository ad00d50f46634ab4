"""Synthesis core: cGAN training, checkpoints and resume, mask transforms, generation, export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from napari_segen.data.datasets import LabeledImage, pairs_from_folders
from napari_segen.models import load_model, read_spec
from napari_segen.synthesis import (
    MaskTransformConfig,
    SynthConfig,
    export_pairs,
    generate_image,
    generate_tensor,
    iter_generate,
    iter_random_masks,
    load_generator,
    random_mask_transform,
    train_pix2pix,
)
from napari_segen.training.checkpoint import last_checkpoint_path, load_checkpoint
from napari_segen.utils.atomic import OverwriteError
from napari_segen.utils.generators import drive

pytestmark = pytest.mark.usefixtures("one_thread")


def _blob_pairs(n: int, size: int = 48, classes: int = 2, rgb: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for k in range(n):
        mask = np.zeros((size, size), np.int64)
        for c in range(1, classes):
            for _ in range(3):
                cy, cx = rng.integers(6, size - 6, 2)
                r = int(rng.integers(4, 9))
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = c
        base = 30 + 180 * mask / max(classes - 1, 1) + rng.normal(0, 8, mask.shape)
        img = base.clip(0, 255).astype(np.uint8)
        if rgb:
            img = np.stack([img, 255 - img, img // 2], axis=-1)
        out.append(LabeledImage(img, mask, name=f"blob{k}.png"))
    return out


def _tiny(**kw) -> SynthConfig:
    base = dict(
        steps=40,
        crop_size=32,
        ngf=8,
        ndf=8,
        n_layers=2,
        device="cpu",
        sample_every=20,
        checkpoint_every=20,
        evaluate=False,
        lr=1e-3,
    )
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny generator trained for a few steps, its files and its pairs."""
    out = tmp_path_factory.mktemp("gan") / "gen.safetensors"
    pairs = _blob_pairs(3)
    events = []
    gen = train_pix2pix(pairs[:2], out, config=_tiny(), val_pairs=pairs[2:])
    result = drive(gen, events.append)
    return out, pairs, events, result


def test_training_reduces_l1_and_writes_files(trained):
    out, pairs, events, result = trained
    kinds = {e.kind for e in events}
    assert {"step", "sample", "saved"} <= kinds
    steps = [e for e in events if e.kind == "step"]
    assert steps[-1].step == 40 and steps[-1].total_steps == 40
    first = np.mean([e.losses["l1"] for e in steps[:5]])
    last = np.mean([e.losses["l1"] for e in steps[-5:]])
    assert last < 0.8 * first
    assert result.steps == 40 and result.path == out
    spec = read_spec(out)
    assert spec.task == "synthesis"
    assert spec.class_names == ["background", "class 1"]
    assert spec.normalization["output_dtype"] == "uint8"
    assert spec.provenance["steps"] == 40
    assert spec.provenance["train_images"] == ["blob0.png", "blob1.png"]
    # sample grids: mask | real | generated, one row per held-out sample
    assert [p.name for p in result.samples] == [
        "step_000000.png",
        "step_000020.png",
        "step_000040.png",
    ]
    grid = [e for e in events if e.kind == "sample"][-1].image
    assert grid.dtype == np.uint8 and grid.shape == (32, 3 * 32 + 2 * 4, 3)


def test_model_file_round_trip(trained):
    out, pairs, _, result = trained
    loaded = load_generator(out)
    a = generate_image(loaded, pairs[2].mask, device="cpu")
    b = generate_image(result.model, pairs[2].mask, device="cpu")
    assert a.dtype == np.uint8 and a.shape == pairs[2].mask.shape
    np.testing.assert_array_equal(a, b)
    # the resume file holds tensors and JSON only
    ckpt = load_checkpoint(last_checkpoint_path(out))
    meta = ckpt.train_state
    assert meta["step"] == 40
    with safe_open(str(ckpt.path), "pt") as f:
        tensors = list(f.keys())
    assert any(k.startswith("module/disc/") for k in tensors)
    assert any(k.startswith("optim/opt_d/") for k in tensors)
    json.dumps(meta)


def test_resume_continues_from_checkpoint(tmp_path):
    pairs = _blob_pairs(2)
    out = tmp_path / "g.safetensors"
    drive(train_pix2pix(pairs, out, config=_tiny(steps=20)))
    with pytest.raises(OverwriteError):
        drive(train_pix2pix(pairs, out, config=_tiny(steps=20)))
    before = load_model(out).module.state_dict()
    gen = train_pix2pix(pairs, out, config=_tiny(steps=30), resume=True)
    steps = []
    result = drive(gen, lambda ev: steps.append(ev.step) if ev.kind == "step" else None)
    assert steps == list(range(21, 31))
    assert result.steps == 30
    after = load_model(out).module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    spec = read_spec(out)
    assert spec.provenance["steps"] == 30
    assert [r["until_step"] for r in spec.provenance["runs"]] == [20, 30]


def test_resume_without_state_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        drive(
            train_pix2pix(_blob_pairs(1), tmp_path / "x.safetensors", config=_tiny(), resume=True)
        )


def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth"):
        drive(train_pix2pix(_blob_pairs(1), None, config=_tiny(crop_size=40)))
    with pytest.raises(ValueError, match="gan_loss"):
        drive(train_pix2pix(_blob_pairs(1), None, config=_tiny(gan_loss="wgan")))
    with pytest.raises(ValueError, match="no training pairs"):
        drive(train_pix2pix([], None, config=_tiny()))


def test_rgb_three_classes_bce(tmp_path):
    pairs = _blob_pairs(2, classes=3, rgb=True)
    cfg = _tiny(steps=4, gan_loss="bce", norm="batch", batch_size=2, sample_every=0)
    result = drive(train_pix2pix(pairs, tmp_path / "rgb.safetensors", config=cfg))
    assert result.model.spec.in_channels == 3
    assert result.model.spec.num_classes == 3
    img = generate_image(result.model, pairs[0].mask, device="cpu")
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert len(result.samples) == 1  # the final one


def test_generate_pads_tiles_and_stacks(trained):
    _, pairs, _, result = trained
    model = result.model
    odd = pairs[0].mask[:45, :37]
    assert generate_image(model, odd, device="cpu").shape == (45, 37)
    big = np.tile(pairs[0].mask, (3, 2))  # 144 x 96
    tiled = generate_image(model, big, device="cpu", tile_size=64)
    whole = generate_image(model, big, device="cpu")
    assert tiled.shape == whole.shape == big.shape
    # tiles are blended, not wildly different from the whole-image result
    assert np.abs(tiled.astype(float) - whole).mean() < 40
    gen = iter_generate(model, np.stack([pairs[0].mask, pairs[1].mask]), device="cpu")
    events = []
    stack = drive(gen, events.append)
    assert stack.shape == (2, 48, 48) and [e.done for e in events] == [1, 2]
    with pytest.raises(ValueError, match="holds class 5"):
        generate_image(model, np.full((32, 32), 5), device="cpu")
    # dropout noise: stochastic generation varies with the seed, reproducibly
    s1 = generate_image(model, pairs[0].mask, device="cpu", stochastic=True, seed=1)
    s1b = generate_image(model, pairs[0].mask, device="cpu", stochastic=True, seed=1)
    s2 = generate_image(model, pairs[0].mask, device="cpu", stochastic=True, seed=2)
    np.testing.assert_array_equal(s1, s1b)
    assert not np.array_equal(s1, s2)


def _batch_norm_generator(classes: int = 3, depth: int = 3):
    """An untrained small generator with batch norm in eval mode (per-pixel statistics)."""
    from napari_segen.models.model_file import LoadedModel, ModelSpec
    from napari_segen.models.pix2pix import Pix2PixGenerator

    torch.manual_seed(0)
    gen = Pix2PixGenerator(classes, 1, ngf=8, depth=depth, norm="batch", dropout=0.5)
    for m in gen.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # stored statistics that are not the identity
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    names = [f"class {i}" for i in range(classes)]
    spec = ModelSpec("pix2pix_generator", {}, 1, names, task="synthesis")
    return LoadedModel(gen.eval(), spec)


def test_tiled_generation_equals_whole_with_batch_norm():
    """With batch norm (eval) and a halo over the receptive field, tiles are seamless.

    Instance norm would normalise each tile by its own statistics: an approximation.
    """
    model = _batch_norm_generator()
    labels = np.random.default_rng(0).integers(-1, 3, (101, 90))  # odd size, unannotated pixels
    whole = generate_tensor(model, labels, device="cpu")
    tiled = generate_tensor(model, labels, device="cpu", tile_size=64, halo=16)
    assert whole.shape == tiled.shape == (1, 101, 90)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    # noise is drawn tile after tile: seeded tiled runs repeat, other seeds differ
    a = generate_tensor(model, labels, device="cpu", tile_size=64, stochastic=True, seed=3)
    b = generate_tensor(model, labels, device="cpu", tile_size=64, stochastic=True, seed=3)
    c = generate_tensor(model, labels, device="cpu", tile_size=64, stochastic=True, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not any(m.training for m in model.module.modules())  # dropout is back off


def test_generation_runs_tiles_through_the_sliding_window(monkeypatch):
    from napari_segen.synthesis import generate

    calls = []
    real = generate.sliding_window
    monkeypatch.setattr(
        generate, "sliding_window", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    model = _batch_norm_generator(depth=2)
    generate_tensor(model, np.zeros((40, 40), np.int64), device="cpu", tile_size=16)
    assert calls and calls[0]["size_multiple"] == 4 and calls[0]["tile_size"] == 16


def test_segmentation_model_is_refused(tiny_model_file):
    with pytest.raises(ValueError, match="not a pix2pix generator"):
        load_generator(tiny_model_file)


@pytest.mark.parametrize("square", [True, False])
def test_mask_transforms_keep_classes_exact(square):
    rng = np.random.default_rng(0)
    shape = (40, 40) if square else (40, 56)
    src = rng.integers(0, 4, shape) * 3  # classes 0, 3, 6, 9
    src[:5, :5] = -100  # unannotated stays unannotated
    cfg = MaskTransformConfig(scale_range=(0.6, 1.6), elastic_alpha=6, elastic_sigma=4, elastic_p=1)
    for _ in range(20):
        out = random_mask_transform(src, rng, cfg)
        assert out.shape == shape and out.dtype == src.dtype
        assert set(np.unique(out)) <= set(np.unique(src))
    out = random_mask_transform(src, rng, cfg, out_shape=(24, 70))
    assert out.shape == (24, 70)


def test_mask_transforms_are_seeded_and_identity_is_possible():
    src = np.arange(30 * 30).reshape(30, 30) % 5
    a = [m for _, m in iter_random_masks([src, src.T], 4, seed=3)]
    b = [m for _, m in iter_random_masks([src, src.T], 4, seed=3)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    off = MaskTransformConfig(flips=False, rot90=False, scale_range=(1, 1), elastic_alpha=0)
    ((_, same),) = iter_random_masks([src], 1, off)
    np.testing.assert_array_equal(same, src)
    with pytest.raises(ValueError, match="scale range"):
        MaskTransformConfig(scale_range=(2, 1))
    with pytest.raises(ValueError, match="2D integer"):
        random_mask_transform(src.astype(float), np.random.default_rng())


def test_export_pairs_read_by_segmentation_loader(trained, tmp_path):
    _, pairs, _, result = trained
    masks = [p.mask for p in pairs]
    res = export_pairs(result.model, masks, tmp_path / "synth", 5, seed=1, device="cpu")
    assert res.count == 5
    assert sorted(p.name for p in (tmp_path / "synth" / "images").iterdir()) == [
        f"synth_{i:04d}.png" for i in range(5)
    ]
    loaded = pairs_from_folders(tmp_path / "synth" / "images", tmp_path / "synth" / "masks")
    assert len(loaded) == 5
    for lp in loaded:
        assert lp.image.dtype == np.uint8 and lp.image.shape == (48, 48)
        assert set(np.unique(lp.mask)) <= {0, 1}
    # the written masks are exactly the masks the images were generated from
    raw = generate_image(result.model, loaded[0].mask, device="cpu")
    np.testing.assert_array_equal(raw, loaded[0].image)
    with pytest.raises(OverwriteError):
        export_pairs(result.model, masks, tmp_path / "synth", 2, device="cpu")
    again = export_pairs(result.model, masks, tmp_path / "synth", 2, device="cpu", overwrite=True)
    assert again.count == 2


def test_quality_readout(trained):
    from napari_segen.metrics.report import format_quality_report
    from napari_segen.synthesis.quality import evaluate_generator

    _, pairs, _, result = trained
    q = evaluate_generator(result.model, pairs, device="cpu", fid=False)
    assert q["ssim"]["n"] == 3 and -1 <= q["ssim"]["mean"] <= 1
    assert np.isfinite(q["psnr"]["mean"])
    assert "SSIM" in q["message"]
    # the one renderer of quality results (CLI, widgets) reads it
    text = format_quality_report(q)
    assert text.splitlines()[0].startswith("SSIM") and "(n=3)" in text and "FID" not in text


# --- texture strength and export + filter as one task ----------------------------------------
def _membrane_labels(size: int = 64) -> np.ndarray:
    """ISBI-style classes for the bundled generator: 0 = cell interior, 1 = membrane."""
    labels = np.zeros((size, size), np.int64)
    labels[size // 2 - 2 : size // 2 + 2] = 1
    labels[:, size // 3 - 2 : size // 3 + 2] = 1
    return labels


@pytest.fixture(scope="module")
def bundled_generator():
    from napari_segen.models import default_generator_path

    return load_generator(default_generator_path())


_AS_IS = MaskTransformConfig(flips=False, rot90=False, scale_range=(1, 1), elastic_alpha=0)


def test_noise_strength_reaches_generation_and_export(bundled_generator, tmp_path):
    from PIL import Image

    model, labels = bundled_generator, _membrane_labels()
    one = drive(iter_generate(model, labels, device="cpu", seed=3))
    zero = drive(iter_generate(model, labels, device="cpu", seed=3, noise_strength=0))
    assert not np.array_equal(one, zero)  # the bundled generator draws with noise
    # strength 0 is the noise-free drawing: the same for any seed
    np.testing.assert_array_equal(
        zero, drive(iter_generate(model, labels, device="cpu", seed=8, noise_strength=0.0))
    )
    for strength, expected in ((1.0, one), (0.0, zero)):
        out = tmp_path / f"s{strength:g}"
        export_pairs(model, [labels], out, 1, transform=_AS_IS, seed=3, device="cpu",
                     noise_strength=strength)  # fmt: skip
        written = np.asarray(Image.open(out / "images" / "synth_0000.png"))
        np.testing.assert_array_equal(written, expected)
    with pytest.raises(ValueError, match="noise strength must be 0 to 4"):
        export_pairs(model, [labels], tmp_path / "neg", 1, device="cpu", noise_strength=-0.5)
    assert not (tmp_path / "neg").exists()  # refused before any folder is made


def test_export_filtered_checks_first_and_counts_both_phases(
    bundled_generator, tiny_unet, tmp_path
):
    from napari_segen.synthesis.filter import SCORES_NAME, iter_export_filtered, read_scores

    model, labels = bundled_generator, _membrane_labels()
    events = []
    res = drive(
        iter_export_filtered(model, [labels], tmp_path / "all", 2, filter_model=tiny_unet,
                             min_dice=0.0, transform=_AS_IS, device="cpu"),
        events.append,
    )  # fmt: skip
    # one progress count: 2 exported, then 2 scored
    assert [(e.done, e.total) for e in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert events[-1].message.startswith("filtering")
    assert res.count == res.export.count == 2 and res.filter.summary().startswith("kept 2 of 2")
    assert res.scores_path == tmp_path / "all" / SCORES_NAME
    assert [s.name for s in read_scores(res.scores_path)] == ["synth_0000.png", "synth_0001.png"]
    # without a filter: the plain export, no scores
    plain = drive(iter_export_filtered(model, [labels], tmp_path / "plain", 1, device="cpu"))
    assert plain.filter is None and plain.count == 1
    assert not (tmp_path / "plain" / SCORES_NAME).exists()
    # scores.csv, a generator as filter model, a bad Dice: refused before any pair is written
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / SCORES_NAME).write_text("name,dice,kept,reason\n")
    with pytest.raises(OverwriteError):
        drive(iter_export_filtered(model, [labels], tmp_path / "taken", 1, filter_model=tiny_unet))
    with pytest.raises(ValueError, match="needs a segmentation model"):
        drive(iter_export_filtered(model, [labels], tmp_path / "gen", 1, filter_model=model))
    with pytest.raises(ValueError, match="between 0 and 1"):
        drive(iter_export_filtered(model, [labels], tmp_path / "d", 1, filter_model=tiny_unet,
                                   min_dice=1.5))  # fmt: skip
    assert not (tmp_path / "taken" / "images").exists() and not (tmp_path / "gen").exists()
    assert not (tmp_path / "d").exists()
