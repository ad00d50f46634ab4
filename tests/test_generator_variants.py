"""Generator variants: resize up-sampling, per-layer noise, multi-scale discriminator,
feature matching, the "texture" preset, and old generator files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_segen.data.datasets import LabeledImage
from napari_segen.models import build_model, load_model
from napari_segen.models.model_file import ModelSpec, save_model
from napari_segen.models.pix2pix import (
    MultiScalePatchDiscriminator,
    NoiseInjection,
    PatchDiscriminator,
    Pix2PixGenerator,
)
from napari_segen.synthesis import SynthConfig, generate_tensor, load_generator, train_pix2pix
from napari_segen.synthesis.trainer import PRESETS
from napari_segen.training.checkpoint import last_checkpoint_path, load_checkpoint
from napari_segen.utils.generators import drive

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).parent / "data"


def _noisy(**kw) -> Pix2PixGenerator:
    """A small noise generator whose noise scales are on (they start at zero)."""
    torch.manual_seed(0)
    g = Pix2PixGenerator(num_classes=3, ngf=4, depth=4, noise=True, **kw).eval()
    for m in g.modules():
        if isinstance(m, NoiseInjection):
            nn.init.constant_(m.weight, 0.5)
    return g


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the generator ------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["resize", "bilinear"])
def test_resize_upsampling_has_no_transposed_convolutions(mode):
    g = build_model("pix2pix_generator", num_classes=2, ngf=4, depth=4, upsample=mode)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())
    ups = [m for m in g.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 4 and {m.mode for m in ups} == {"nearest" if mode == "resize" else mode}
    out = g(torch.randint(0, 2, (2, 32, 48)))
    assert out.shape == (2, 1, 32, 48) and out.abs().max() <= 1
    paper = build_model("pix2pix_generator", num_classes=2, ngf=4, depth=4)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in paper.modules()) == 4
    with pytest.raises(ValueError, match="upsample must be one of"):
        Pix2PixGenerator(upsample="pixelshuffle")


def test_noise_same_seed_same_image_other_seed_other_image():
    g = _noisy()
    labels = torch.randint(0, 3, (1, 32, 32))
    with torch.no_grad():
        a, b = g(labels, noise_rng=_seeded(1)), g(labels, noise_rng=_seeded(1))
        c = g(labels, noise_rng=_seeded(2))
        d, e = g(labels), g(labels)  # unseeded: torch's global generator
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert not torch.equal(d, e)
    # one noise layer per decoder block below the output, a scale per channel
    injections = [m for m in g.modules() if isinstance(m, NoiseInjection)]
    assert len(injections) == 3 and all(m.rng is None for m in injections)  # nothing left set
    # the scales start at zero: an untrained noise generator is the noiseless one
    fresh = Pix2PixGenerator(num_classes=3, ngf=4, depth=4, noise=True).eval()
    with torch.no_grad():
        assert torch.equal(fresh(labels, noise_rng=_seeded(1)), fresh(labels, _seeded(2)))


def test_noise_strength_scales_the_noise_per_sample():
    g = _noisy()
    labels = torch.randint(0, 3, (1, 32, 32))
    with torch.no_grad():
        full = g(labels, noise_rng=_seeded(1))
        none_a = g(labels, noise_rng=_seeded(1), noise_strength=0.0)
        none_b = g(labels, noise_rng=_seeded(2), noise_strength=0.0)
        half = g(labels, noise_rng=_seeded(1), noise_strength=0.5)
        # one batch [noisy; noise-free] equals the two single runs (what training uses)
        both = g(labels.repeat(2, 1, 1), noise_rng=_seeded(1),
                 noise_strength=torch.tensor([1.0, 0.0]))  # fmt: skip
    assert torch.equal(none_a, none_b)  # no noise: the seed does not matter
    assert (full - none_a).abs().max() > 1e-3
    # half strength lies between the noise-free and the full drawing
    assert 0 < (half - none_a).abs().mean() < (full - none_a).abs().mean()
    assert torch.allclose(both[1], none_a, atol=1e-6)
    assert all(m.strength == 1.0 for m in g.modules() if isinstance(m, NoiseInjection))


def test_generation_seed_picks_the_noise_on_a_loaded_file(tmp_path):
    g = _noisy(upsample="resize")
    spec = ModelSpec(
        "pix2pix_generator",
        dict(num_classes=3, out_channels=1, ngf=4, depth=4, upsample="resize", noise=True),
        in_channels=1, class_names=["a", "b", "c"], task="synthesis",
        normalization={"mode": "range", "min": 0.0, "max": 255.0, "output_dtype": "uint8"},
    )  # fmt: skip
    path = save_model(tmp_path / "noisy.safetensors", g, spec)
    model = load_generator(path)
    labels = np.random.default_rng(0).integers(0, 3, (40, 36))
    a = generate_tensor(model, labels, device="cpu", seed=7)
    b = generate_tensor(load_generator(path), labels, device="cpu", seed=7)
    c = generate_tensor(model, labels, device="cpu", seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # noise strength 0: the noise-free drawing, whatever the seed
    z7 = generate_tensor(model, labels, device="cpu", seed=7, noise_strength=0.0)
    assert torch.equal(z7, generate_tensor(model, labels, device="cpu", seed=8, noise_strength=0))
    assert not torch.equal(z7, a)
    with pytest.raises(ValueError, match="noise strength must be 0 to 4"):
        generate_tensor(model, labels, device="cpu", noise_strength=-1)
    # tiles draw their noise one after another from the same seeded generator
    t1 = generate_tensor(model, labels, device="cpu", seed=7, tile_size=32)
    t2 = generate_tensor(model, labels, device="cpu", seed=7, tile_size=32)
    assert torch.equal(t1, t2)


def test_old_generator_file_loads_and_generates_identically():
    """A file written before the variants existed (spec without upsample/noise) still loads
    and draws the same image (made by the previous version, stored in tests/data)."""
    path = DATA / "pix2pix-before-variants.safetensors"
    model = load_model(path)
    assert "upsample" not in model.spec.arch_kwargs and "noise" not in model.spec.arch_kwargs
    gen = model.module
    assert gen.upsample == "transpose" and not gen.noise
    labels = (np.indices((24, 24)).sum(0) % 7 > 3).astype(np.int64)
    expected = np.load(DATA / "pix2pix-before-variants.expected.npy")
    for seed in (None, 0, 5):  # a noiseless generator does not depend on the seed
        out = generate_tensor(load_generator(path), labels, device="cpu", seed=seed)
        np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)


def test_paper_generator_weights_keep_their_names():
    """With the defaults the network (and so every weight name) is the paper's."""
    paper = Pix2PixGenerator(num_classes=2, ngf=2, depth=3).state_dict()
    stored = load_model(DATA / "pix2pix-before-variants.safetensors").module.state_dict()
    assert {k: v.shape for k, v in paper.items()} == {k: v.shape for k, v in stored.items()}


# --- the discriminator --------------------------------------------------------------------
def test_multiscale_discriminator_scales_and_features():
    d = build_model("multiscale_patchgan", num_scales=3, num_classes=2, ndf=4, n_layers=2)
    assert isinstance(d, MultiScalePatchDiscriminator) and len(d.scales) == 3
    labels, image = torch.randint(0, 2, (2, 64, 64)), torch.rand(2, 1, 64, 64) * 2 - 1
    logits = d(labels, image)
    assert [tuple(x.shape) for x in logits] == [(2, 1, 14, 14), (2, 1, 6, 6), (2, 1, 2, 2)]
    feats = d.features(labels, image)
    assert [len(f) for f in feats] == [4, 4, 4]  # 3 LeakyReLU outputs, then the logits
    for f, x in zip(feats, logits, strict=True):
        assert torch.equal(f[-1], x)
    # a single PatchGAN: the same logits through features()
    p = PatchDiscriminator(ndf=4, n_layers=2)
    assert torch.equal(p.features(labels, image)[0][-1], p(labels, image))
    with pytest.raises(ValueError, match="num_scales"):
        MultiScalePatchDiscriminator(num_scales=1)
    with pytest.raises(ValueError, match="num_scales"):
        MultiScalePatchDiscriminator(num_scales=100)


# --- training -----------------------------------------------------------------------------
def _pairs() -> list[LabeledImage]:
    rng = np.random.default_rng(0)
    mask = (rng.random((40, 40)) > 0.6).astype(np.int64)
    image = (40 + 150 * mask + rng.normal(0, 10, mask.shape)).clip(0, 255).astype(np.uint8)
    return [
        LabeledImage(image, mask, "a"),
        LabeledImage(image[:, ::-1].copy(), mask[:, ::-1].copy(), "b"),
    ]


def _texture_cfg(**kw) -> SynthConfig:
    base = dict(
        steps=8, crop_size=32, ngf=4, ndf=4, n_layers=2, device="cpu", sample_every=3,
        checkpoint_every=4, evaluate=False, lr=1e-3,
    )  # fmt: skip
    return SynthConfig.from_preset("texture", **{**base, **kw})


def _cancel_after_first_save(gen) -> None:
    for ev in gen:
        if ev.kind == "saved":
            gen.close()
            break


def test_texture_recipe_trains_and_resumes_bit_exactly(tmp_path):
    pairs = _pairs()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    losses = []
    straight = drive(
        train_pix2pix(pairs, a, config=_texture_cfg()),
        lambda ev: losses.append(ev.losses) if ev.kind == "step" else None,
    )
    assert len(losses) == 8 and {"d", "g_gan", "l1", "fm"} <= set(losses[0])
    assert all(math.isfinite(v) for step in losses for v in step.values())
    assert losses[0]["fm"] > 0
    # the generator file describes the variant; the checkpoint holds both discriminators
    spec = load_model(a).spec
    assert spec.arch_kwargs["upsample"] == "resize" and spec.arch_kwargs["noise"] is True
    assert "feature matching" in spec.provenance["method"]
    ckpt = load_checkpoint(last_checkpoint_path(a))
    assert ckpt.train_state["disc_kwargs"]["num_scales"] == 2
    assert {k.split(".")[1] for k in ckpt.modules["disc"]} == {"0", "1"}

    _cancel_after_first_save(train_pix2pix(pairs, b, config=_texture_cfg()))
    assert load_checkpoint(last_checkpoint_path(b)).train_state["step"] == 4
    torch.manual_seed(5)  # noise and dropout: the resumed run restores the generator states
    resumed = drive(train_pix2pix(pairs, b, config=_texture_cfg(), resume=True))
    assert resumed.steps == straight.steps == 8
    assert resumed.history == straight.history
    ca, cb = load_checkpoint(last_checkpoint_path(a)), load_checkpoint(last_checkpoint_path(b))
    assert ca.modules.keys() == cb.modules.keys() == {"gen", "disc"}
    for name in ca.modules:
        for k, v in ca.modules[name].items():
            assert torch.equal(v, cb.modules[name][k]), f"{name}.{k} differs"
    for name in ca.optimizers:
        for idx, per_param in ca.optimizers[name]["state"].items():
            for k, v in per_param.items():
                assert torch.equal(v, cb.optimizers[name]["state"][idx][k])

    # the trained noise generator: same seed same image, another seed another image
    model = load_generator(a)
    noise = [m.weight for m in model.module.modules() if isinstance(m, NoiseInjection)]
    assert noise and any(w.abs().max() > 0 for w in noise)  # the scales have learned
    one = generate_tensor(model, pairs[0].mask, device="cpu", seed=1)
    assert torch.equal(one, generate_tensor(model, pairs[0].mask, device="cpu", seed=1))
    assert not torch.equal(one, generate_tensor(model, pairs[0].mask, device="cpu", seed=2))


def test_paper_recipe_is_the_default_and_writes_no_new_keys(tmp_path):
    assert SynthConfig() == SynthConfig.from_preset("pix2pix")
    cfg = SynthConfig(steps=2, crop_size=32, ngf=4, ndf=4, n_layers=2, device="cpu",
                      sample_every=0, checkpoint_every=0, evaluate=False)  # fmt: skip
    drive(train_pix2pix(_pairs(), tmp_path / "p.safetensors", config=cfg))
    spec = load_model(tmp_path / "p.safetensors").spec
    assert set(spec.arch_kwargs) == {"num_classes", "out_channels", "ngf", "depth", "norm",
                                     "dropout"}  # fmt: skip
    ckpt = load_checkpoint(last_checkpoint_path(tmp_path / "p.safetensors"))
    assert "num_scales" not in ckpt.train_state["disc_kwargs"]
    assert spec.provenance["method"] == "pix2pix (Isola et al. 2017)"


def test_l1_on_the_noise_free_drawing_and_on_a_low_pass_train(tmp_path):
    for name, kw in {"free": dict(l1_noise_free=True), "lowpass": dict(l1_sigma=1.5)}.items():
        gen = train_pix2pix(_pairs(), tmp_path / f"{name}.safetensors", config=_texture_cfg(**kw))
        losses = [ev.losses for ev in gen if ev.kind == "step"]
        assert len(losses) == 8 and all(math.isfinite(s["l1"]) and s["l1"] > 0 for s in losses)
        prov = load_model(tmp_path / f"{name}.safetensors").spec.provenance
        assert prov["ran_with"]["device"] == "cpu" and prov["ran_with"]["amp"] is False
        method = prov["method"]
        assert ("noise-free" in method) == (name == "free")
        assert ("low-pass" in method) == (name == "lowpass")


def test_mode_seeking_makes_the_generator_use_its_noise(tmp_path):
    """A heavy per-pixel L1 term teaches a noise generator to cancel its noise; with the
    mode-seeking term two seeds must still give clearly different images (and the run
    reports the spread)."""
    spreads = {}
    for w in (0.0, 1.0):
        path = tmp_path / f"ms{w:g}.safetensors"
        cfg = _texture_cfg(l1_weight=100.0, ms_weight=w, steps=40)
        events = list(train_pix2pix(_pairs(), path, config=cfg))
        steps = [ev.losses for ev in events if ev.kind == "step"]
        assert ("spread" in steps[-1]) == bool(w)
        model = load_generator(path)
        assert ("mode seeking" in model.spec.provenance["method"]) == bool(w)
        one, two = (generate_tensor(model, _pairs()[0].mask, device="cpu", seed=s) for s in (1, 2))
        spreads[w] = float((one - two).abs().mean())
    assert spreads[1.0] > 2.5 * spreads[0.0], spreads


def test_noise_init_starts_every_noise_map_visible(tmp_path):
    """StyleGAN's zero start leaves all but the last layer's noise near 0 in a short run;
    noise_init starts every layer's noise at that scale (a 1-step run barely moves it)."""
    scales = {}
    for start in (0.0, 0.2):
        path = tmp_path / f"n{start:g}.safetensors"
        drive(train_pix2pix(_pairs(), path, config=_texture_cfg(steps=1, noise_init=start)))
        model = load_generator(path)
        noise = [m for m in model.module.modules() if isinstance(m, NoiseInjection)]
        scales[start] = [float(m.weight.detach().abs().mean()) for m in noise]
        assert model.spec.provenance["config"]["noise_init"] == start
    assert max(scales[0.0]) < 0.01 and min(scales[0.2]) > 0.15, scales


def test_ssim_term_trains_the_drawing_l1_sees(tmp_path):
    cfg = _texture_cfg(l1_noise_free=True, ssim_weight=50.0)
    events = list(train_pix2pix(_pairs(), tmp_path / "s.safetensors", config=cfg))
    ssims = [ev.losses["ssim"] for ev in events if ev.kind == "step"]
    assert len(ssims) == 8 and all(-1 <= v <= 1 for v in ssims)
    assert "SSIM x50" in load_model(tmp_path / "s.safetensors").spec.provenance["method"]


def test_variant_settings_are_checked():
    with pytest.raises(ValueError, match="unknown preset"):
        SynthConfig.from_preset("hd")
    with pytest.raises(ValueError, match="upsample"):
        _texture_cfg(upsample="deconv").check()
    with pytest.raises(ValueError, match="scales must be 1 to 4"):
        _texture_cfg(d_scales=5).check()
    with pytest.raises(ValueError, match="coarsest discriminator sees 8 px"):
        _texture_cfg(d_scales=3).check()
    with pytest.raises(ValueError, match="loss weights"):
        _texture_cfg(fm_weight=-1).check()
    with pytest.raises(ValueError, match="needs a generator with noise"):
        _texture_cfg(noise=False, l1_noise_free=True).check()
    with pytest.raises(ValueError, match="ms_weight needs a generator with noise"):
        _texture_cfg(noise=False, ms_weight=1.0).check()
    with pytest.raises(ValueError, match="noise_init needs a generator with noise"):
        _texture_cfg(noise=False, noise_init=0.1).check()
    with pytest.raises(ValueError, match="starting scale must be 0 to 1"):
        _texture_cfg(noise_init=2.0).check()
    with pytest.raises(ValueError, match="mode-seeking and SSIM weights must be >= 0"):
        _texture_cfg(ms_weight=-1.0).check()
    with pytest.raises(ValueError, match="low-pass sigma must be 0 to crop size / 8 = 4"):
        _texture_cfg(l1_sigma=5).check()
    assert PRESETS["texture"]["noise"] and not PRESETS["pix2pix"]["noise"]
