"""Calibrating a noise generator's texture strength against a flat class-mean painting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_segen.data.datasets import LabeledImage
from napari_segen.models.model_file import LoadedModel, ModelSpec, save_model
from napari_segen.models.pix2pix import NoiseInjection, Pix2PixGenerator
from napari_segen.synthesis import (
    SynthConfig,
    generate_tensor,
    iter_generate,
    load_generator,
    train_pix2pix,
)
from napari_segen.synthesis import calibrate as cal
from napari_segen.synthesis.calibrate import (
    STRENGTH_GRID,
    NoiseCalibration,
    class_mean_painting,
    file_noise_strength,
    half_crops,
    iter_calibrate_noise_strength,
    recommended_noise_strength,
)
from napari_segen.synthesis.quality import evaluate_generator
from napari_segen.utils.generators import drive

pytestmark = pytest.mark.usefixtures("one_thread")

NORM = {"mode": "range", "min": 0.0, "max": 255.0, "output_dtype": "uint8"}


class MeanStd:
    """A cheap feature extractor for tests: mean and std of each image."""

    name, dim, is_inception = "mean/std", 2, False

    def __call__(self, batch):
        return np.array([[float(np.mean(b)), float(np.std(b))] for b in batch])


def _model(noise: bool = True, provenance: dict | None = None) -> LoadedModel:
    torch.manual_seed(0)
    g = Pix2PixGenerator(num_classes=2, ngf=4, depth=3, noise=noise).eval()
    for m in g.modules():
        if isinstance(m, NoiseInjection):
            nn.init.constant_(m.weight, 0.5)
    kw = dict(num_classes=2, out_channels=1, ngf=4, depth=3)
    if noise:
        kw["noise"] = True
    spec = ModelSpec(
        "pix2pix_generator", kw, in_channels=1, class_names=["a", "b"], task="synthesis",
        normalization=dict(NORM), provenance=dict(provenance or {}),
    )  # fmt: skip
    return LoadedModel(g, spec)


def _pairs(n: int, size: int = 32, seed: int = 0) -> list[LabeledImage]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        mask = (rng.random((size, size)) > 0.6).astype(np.int64)
        image = (40 + 150 * mask + rng.normal(0, 10, mask.shape)).clip(0, 255).astype(np.uint8)
        out.append(LabeledImage(image, mask, f"p{k}"))
    return out


# --- building blocks ----------------------------------------------------------------------
def test_grid_crops_and_painting():
    assert STRENGTH_GRID[0] == 0 and STRENGTH_GRID[-1] == 1 and len(STRENGTH_GRID) == 17
    assert np.allclose(np.diff(STRENGTH_GRID), 1 / 16)
    im = np.arange(64.0).reshape(8, 8)
    crops = half_crops([im, im])
    assert len(crops) == 8 and all(c.shape == (4, 4) for c in crops)
    assert crops[1][0, 0] == im[0, 4] and crops[3][0, 0] == im[4, 4]
    # class means over the fit pairs; negative (unannotated) pixels ignored, painted as 0
    model = _model()
    image = np.array([[0, 0], [255, 51]], np.uint8)
    fit = [LabeledImage(image, np.array([[0, 0], [1, -1]]), "f")]
    (painted,) = class_mean_painting(fit, [np.array([[1, 0], [-1, 1]])], model)
    np.testing.assert_allclose(painted, [[1.0, 0.0], [0.0, 1.0]])
    assert painted.dtype == np.float32


# --- the choice rule ----------------------------------------------------------------------
def _fake_scores(monkeypatch, table):
    """Replace the scorer: the painting (no strength) and each strength get ``table``'s
    (ssim, distance); the strength is read back from the generated images."""
    calls = []

    def fake(reals, fakes, *, device="auto", extractor=None):
        key = calls.pop(0) if calls else None
        ssim, dist = table[key]
        return {"ssim": ssim, "fid": None, "feature_distance": dist, "distance": dist}

    monkeypatch.setattr(cal, "score_images", fake)
    # the painting is scored first, then the strengths in ascending order
    return calls


def test_rule_picks_the_widest_margin_over_the_painting_on_both(monkeypatch):
    """0.25 and 0.5 beat the painting on both; 0.5 only by 4% SSIM (the edge of the winning
    range, first to lose on new images), 0.25 by at least 10% on each: 0.25 is chosen."""
    strengths = [0.0, 0.25, 0.5, 0.75, 1.0]
    table = {None: (0.50, 10.0), 0.0: (0.60, 12.0), 0.25: (0.58, 9.0), 0.5: (0.52, 8.0),
             0.75: (0.49, 7.0), 1.0: (0.40, 6.0)}  # fmt: skip
    order = _fake_scores(monkeypatch, table)
    order.extend([None, *strengths])
    model = _model()
    events = []
    result = drive(
        iter_calibrate_noise_strength(model, _pairs(2), _pairs(2, seed=1), strengths=strengths,
                                      device="cpu"),
        events.append,
    )  # fmt: skip
    assert [e.done for e in events] == [1, 2, 3, 4, 5] and events[-1].total == 5
    assert result.chosen == 0.25 and result.beats_painting
    assert "widest margin" in result.reason
    assert result.distance_name == "feature distance" and result.pairs == ["p0", "p1"]
    line = result.summary()
    assert line == (
        "texture strength x0.25: beats the flat painting on SSIM (0.580 vs 0.500) and "
        "feature distance (9 vs 10) on 2 held-out pairs"
    )
    blob = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert blob["chosen"] == 0.25 and set(blob["rows"]) == {"0", "0.25", "0.5", "0.75", "1"}


def test_rule_takes_the_closest_strength_when_none_beats_the_painting(monkeypatch):
    """0 misses on the distance by 20%, 1 on SSIM by 20%, 0.5 on SSIM by 10%: 0.5."""
    strengths = [0.0, 0.5, 1.0]
    table = {None: (0.50, 10.0), 0.0: (0.60, 12.0), 0.5: (0.45, 8.0), 1.0: (0.40, 6.0)}
    order = _fake_scores(monkeypatch, table)
    order.extend([None, *strengths])
    result = drive(
        iter_calibrate_noise_strength(_model(), _pairs(1), _pairs(1, seed=1), strengths=strengths,
                                      device="cpu")
    )  # fmt: skip
    assert result.chosen == 0.5 and not result.beats_painting
    assert "no strength beats the flat painting on both" in result.reason
    assert "misses by the least" in result.reason
    assert "no strength beats the flat painting on both" in result.summary()
    assert len(result.summary().splitlines()) == 1


def test_real_scores_and_no_noise_generator():
    """With the real scorer (a cheap extractor), every row is scored and the choice obeys
    the rule; a generator without noise maps is refused in one line."""
    model = _model()
    result = drive(
        iter_calibrate_noise_strength(model, _pairs(2), _pairs(2, seed=1), device="cpu",
                                      strengths=[0.0, 0.5, 1.0], extractor=MeanStd())
    )  # fmt: skip
    assert set(result.rows) == {0.0, 0.5, 1.0}
    painted = result.painted
    margins = {
        s: min((r["ssim"] - painted["ssim"]) / painted["ssim"],
               (painted["distance"] - r["distance"]) / painted["distance"])
        for s, r in result.rows.items()
    }  # fmt: skip
    assert result.chosen == max(margins, key=lambda s: (margins[s], s))
    # generation at strength s with seed i is what was scored
    assert result.rows[0.0]["ssim"] != result.rows[1.0]["ssim"]
    with pytest.raises(ValueError, match="has no noise maps") as err:
        drive(iter_calibrate_noise_strength(_model(noise=False), _pairs(1), _pairs(1)))
    assert len(str(err.value).splitlines()) == 1


# --- the recorded strength ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ({"noise_calibration": {"chosen": 0.4375}}, 0.4375),
        ({"noise_calibration": {"chosen": 0}}, 0.0),
        ({}, 1.0),
        ({"noise_calibration": {}}, 1.0),
        ({"noise_calibration": "x"}, 1.0),
        ({"noise_calibration": {"chosen": 7.0}}, 1.0),
        ({"noise_calibration": {"chosen": -0.5}}, 1.0),
        ({"noise_calibration": {"chosen": "0.5"}}, 1.0),
        ({"noise_calibration": {"chosen": True}}, 1.0),
        ({"noise_calibration": {"chosen": None}}, 1.0),
    ],
)
def test_recommended_strength_is_read_and_checked(recorded, expected, tmp_path):
    model = _model(provenance=recorded)
    assert recommended_noise_strength(model) == expected
    assert recommended_noise_strength(model.spec) == expected
    path = save_model(tmp_path / "g.safetensors", model.module, model.spec)
    assert file_noise_strength(path) == expected


def test_file_strength_of_missing_or_damaged_sidecars(tmp_path):
    assert file_noise_strength(None) == 1.0
    assert file_noise_strength(tmp_path / "none.safetensors") == 1.0
    (tmp_path / "bad.json").write_text("{not json")
    assert file_noise_strength(tmp_path / "bad.safetensors") == 1.0
    (tmp_path / "list.json").write_text("[1, 2]")
    assert file_noise_strength(tmp_path / "list.safetensors") == 1.0


def test_generation_defaults_to_the_recorded_strength():
    model = _model(provenance={"noise_calibration": {"chosen": 0.25}})
    labels = _pairs(1)[0].mask
    default = generate_tensor(model, labels, device="cpu", seed=3)
    assert torch.equal(default, generate_tensor(model, labels, device="cpu", seed=3,
                                                noise_strength=0.25))  # fmt: skip
    assert not torch.equal(default, generate_tensor(model, labels, device="cpu", seed=3,
                                                    noise_strength=1.0))  # fmt: skip
    series = drive(iter_generate(model, [labels], device="cpu", seed=3))
    explicit = drive(iter_generate(model, [labels], device="cpu", seed=3, noise_strength=0.25))
    np.testing.assert_array_equal(series[0], explicit[0])
    pairs = _pairs(2)
    q = evaluate_generator(model, pairs, device="cpu", fid=False)
    q_explicit = evaluate_generator(model, pairs, device="cpu", fid=False, noise_strength=0.25)
    assert q["ssim"] == q_explicit["ssim"]


# --- calibration at the end of training ---------------------------------------------------
def _cfg(**kw) -> SynthConfig:
    base = dict(
        steps=4, crop_size=32, ngf=4, ndf=4, n_layers=2, device="cpu", sample_every=0,
        checkpoint_every=0, lr=1e-3,
    )  # fmt: skip
    return SynthConfig.from_preset("texture", **{**base, **kw})


def test_training_records_the_calibration_and_generation_uses_it(tmp_path):
    pairs, val = _pairs(2, size=40), _pairs(2, size=40, seed=1)
    out = tmp_path / "g.safetensors"
    events = []
    result = drive(train_pix2pix(pairs, out, config=_cfg(), val_pairs=val), events.append)
    kinds = [e.kind for e in events]
    assert kinds.count("calibrating") == len(STRENGTH_GRID)
    assert kinds.index("calibration") < kinds.index("quality")
    ev = events[kinds.index("calibration")]
    assert ev.message.startswith("texture strength x") and len(ev.message.splitlines()) == 1
    side = json.loads(out.with_suffix(".json").read_text())
    recorded = side["provenance"]["noise_calibration"]
    assert recorded["chosen"] in STRENGTH_GRID and len(recorded["rows"]) == len(STRENGTH_GRID)
    assert "held_out_quality" in side["provenance"]
    model = load_generator(out)
    assert recommended_noise_strength(model) == recorded["chosen"]
    assert recommended_noise_strength(result.model) == recorded["chosen"]
    labels = val[0].mask
    explicit = generate_tensor(model, labels, device="cpu", seed=2,
                               noise_strength=recorded["chosen"])  # fmt: skip
    assert torch.equal(generate_tensor(model, labels, device="cpu", seed=2), explicit)


def test_no_calibration_when_switched_off_or_without_noise(tmp_path):
    pairs, val = _pairs(2), _pairs(1, seed=1)
    paper = SynthConfig(steps=2, crop_size=32, ngf=4, ndf=4, n_layers=2, device="cpu",
                        sample_every=0, checkpoint_every=0)  # fmt: skip
    for name, cfg in {"off": _cfg(calibrate_noise=False), "paper": paper}.items():
        out = tmp_path / f"{name}.safetensors"
        events = list(train_pix2pix(pairs, out, config=cfg, val_pairs=val))
        assert not any(e.kind.startswith("calibrat") for e in events)
        prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
        assert "noise_calibration" not in prov and "held_out_quality" in prov


def test_summary_of_a_stored_calibration_is_one_line():
    c = NoiseCalibration(1.0, "why", {"ssim": 0.5, "distance": 2.0},
                         {1.0: {"ssim": 0.4, "distance": 3.0}}, "FID", ["a"])  # fmt: skip
    assert c.summary() == (
        "texture strength x1, the closest: no strength beats the flat painting on both SSIM "
        "and FID on 1 held-out pair (SSIM 0.400 vs 0.500, FID 3 vs 2)"
    )
