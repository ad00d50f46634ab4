"""SSIM and PSNR: the Wang et al. 2004 variant, against skimage and closed forms, on ISBI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_segen.data.image_io import read_image
from napari_segen.metrics.image_quality import (
    SSIM_HELP,
    paired_quality,
    psnr,
    split_planes,
    ssim,
)


@pytest.fixture(scope="module")
def isbi20(isbi_dir) -> np.ndarray:
    """ISBI test slice 20, uint8 512x512, cropped to 256x256 to stay fast."""
    image = read_image(isbi_dir / "test" / "images" / "20.png")
    assert image.dtype == np.uint8 and image.ndim == 2
    return image[:256, :256]


def _noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(image + rng.normal(0, sigma, image.shape)), 0, 255).astype(np.uint8)


def _wang(a, b, data_range, channel_axis=None) -> float:
    return structural_similarity(
        a,
        b,
        data_range=data_range,
        channel_axis=channel_axis,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )


@pytest.mark.parametrize("sigma", [2.0, 10.0, 30.0])
def test_ssim_psnr_match_skimage_with_noise(isbi20, sigma):
    noisy = _noisy(isbi20, sigma)
    assert ssim(isbi20, noisy) == pytest.approx(_wang(isbi20, noisy, 255), abs=1e-12)
    expected = peak_signal_noise_ratio(isbi20, noisy, data_range=255)
    assert psnr(isbi20, noisy) == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("blur", [0.7, 1.5, 3.0])
def test_ssim_psnr_match_skimage_with_blur(isbi20, blur):
    blurred = np.rint(ndimage.gaussian_filter(isbi20.astype(float), blur)).astype(np.uint8)
    assert ssim(isbi20, blurred) == pytest.approx(_wang(isbi20, blurred, 255), abs=1e-12)
    expected = peak_signal_noise_ratio(isbi20, blurred, data_range=255)
    assert psnr(isbi20, blurred) == pytest.approx(expected, abs=1e-10)


def test_ssim_is_not_skimage_default(isbi20):
    """The 7x7 uniform default gives another number: we must not be using it."""
    noisy = _noisy(isbi20, 20)
    default = structural_similarity(isbi20, noisy, data_range=255)
    assert abs(ssim(isbi20, noisy) - default) > 1e-3
    assert "7x7" in SSIM_HELP and "sigma 1.5" in SSIM_HELP


def test_psnr_closed_form_gaussian_noise(isbi20):
    """Unclipped Gaussian noise of std s: PSNR ~ 10 log10(R^2 / s^2)."""
    rng = np.random.default_rng(1)
    base = isbi20.astype(np.float64)
    for s in (1.0, 5.0, 25.0):
        noisy = base + rng.normal(0, s, base.shape)
        closed = 10 * math.log10(255.0**2 / s**2)
        # 65536 samples: the MSE is within ~1.5% -> +/- 0.07 dB at 3 sigma
        assert psnr(base, noisy, data_range=255) == pytest.approx(closed, abs=0.08)


def test_ssim_decreases_monotonically_with_blur(isbi20):
    values = [ssim(isbi20, isbi20)]
    for b in (0.5, 1.0, 2.0, 4.0, 8.0):
        blurred = np.rint(ndimage.gaussian_filter(isbi20.astype(float), b)).astype(np.uint8)
        values.append(ssim(isbi20, blurred))
    assert values[0] == pytest.approx(1.0)
    assert all(x > y for x, y in zip(values, values[1:], strict=False)), values


def test_ssim_decreases_with_noise(isbi20):
    values = [ssim(isbi20, _noisy(isbi20, s)) for s in (1, 5, 15, 40)]
    assert all(x > y for x, y in zip(values, values[1:], strict=False)), values


def test_16bit_uses_dtype_range(isbi20):
    a = isbi20.astype(np.uint16) * 257
    b = _noisy(isbi20, 10).astype(np.uint16) * 257
    assert ssim(a, b) == pytest.approx(_wang(a, b, 65535), abs=1e-12)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=65535))
    # the same images scaled by 257 give the same scores as 8-bit
    assert ssim(a, b) == pytest.approx(ssim(isbi20, _noisy(isbi20, 10)), abs=1e-9)
    assert psnr(a, b) == pytest.approx(psnr(isbi20, _noisy(isbi20, 10)), abs=1e-9)


def test_float_needs_data_range(isbi20):
    a = isbi20 / 255.0
    b = _noisy(isbi20, 10) / 255.0
    with pytest.raises(ValueError, match="data range"):
        ssim(a, b)
    with pytest.raises(ValueError, match="data range"):
        psnr(a, b)
    assert ssim(a, b, data_range=1.0) == pytest.approx(ssim(isbi20, _noisy(isbi20, 10)), abs=1e-9)
    assert psnr(a, b, data_range=1.0) == pytest.approx(psnr(isbi20, _noisy(isbi20, 10)), abs=1e-9)


def test_rgb_matches_skimage_channel_axis(isbi20):
    rgb = np.stack([isbi20, isbi20[::-1], isbi20[:, ::-1]], axis=-1)
    noisy = _noisy(rgb, 12)
    assert ssim(rgb, noisy) == pytest.approx(_wang(rgb, noisy, 255, channel_axis=-1), abs=1e-12)
    assert psnr(rgb, noisy) == pytest.approx(peak_signal_noise_ratio(rgb, noisy, data_range=255))
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    noisy_a = np.concatenate([noisy, rgba[..., 3:]], axis=-1)
    assert ssim(rgba, noisy_a) == pytest.approx(ssim(rgb, noisy))


def test_bad_inputs_say_what_to_do(isbi20):
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(isbi20, isbi20[:100])
    with pytest.raises(ValueError, match="different dtypes"):
        psnr(isbi20, isbi20.astype(np.uint16))
    with pytest.raises(ValueError, match="too small"):
        ssim(isbi20[:8, :8], isbi20[:8, :8])
    with pytest.raises(ValueError, match="positive"):
        psnr(isbi20, isbi20, data_range=0)
    assert psnr(isbi20, isbi20) == math.inf


def test_paired_quality_stats_and_stacks(isbi20):
    reals = [isbi20[:128, :128], isbi20[128:, 128:], isbi20[:128, 128:]]
    fakes = [_noisy(r, s) for r, s in zip(reals, (5, 10, 20), strict=True)]
    q = paired_quality(iter(reals), iter(fakes))  # plain iterators: read lazily
    s_values = [ssim(r, f) for r, f in zip(reals, fakes, strict=True)]
    p_values = [psnr(r, f) for r, f in zip(reals, fakes, strict=True)]
    assert q["ssim"]["n"] == q["psnr"]["n"] == 3
    assert q["ssim"]["mean"] == pytest.approx(np.mean(s_values))
    assert q["ssim"]["std"] == pytest.approx(np.std(s_values))
    assert q["psnr"]["mean"] == pytest.approx(np.mean(p_values))
    # a stack counts as one pair per plane
    stacked = paired_quality([np.stack(reals)], [np.stack(fakes)])
    assert stacked["ssim"] == pytest.approx(q["ssim"])
    with pytest.raises(ValueError, match="differ in length"):
        paired_quality(reals, fakes[:2])
    with pytest.raises(ValueError, match="no image pairs"):
        paired_quality([], [])


def test_split_planes():
    assert len(split_planes(np.zeros((5, 20, 20)))) == 5
    assert len(split_planes(np.zeros((20, 20, 3)))) == 1
    assert len(split_planes(np.zeros((4, 20, 20, 3)))) == 4
    with pytest.raises(ValueError, match="cannot read"):
        split_planes(np.zeros((2, 2, 20, 20, 7)))
