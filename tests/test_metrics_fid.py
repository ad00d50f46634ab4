"""FID / KID: the Frechet distance against closed forms and scipy, KID against torchmetrics,
the Inception pipeline against torchmetrics, and the labelled feature distance without weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from napari_segen.data.image_io import read_image
from napari_segen.metrics import features as feats
from napari_segen.metrics.features import (
    INCEPTION_FILES,
    FeatureWeightsError,
    find_inception_weights,
    iter_features,
    load_inception_state,
    to_uint8_rgb,
)
from napari_segen.metrics.fid import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    kernel_distance,
    polynomial_mmd,
    set_distance,
)
from napari_segen.utils.generators import drive


# --- the Frechet distance -----------------------------------------------------------------------
def _closed_form_diag(mu1, s1, mu2, s2) -> float:
    """FID of N(mu1, diag s1) and N(mu2, diag s2): |mu1-mu2|^2 + sum(s1 + s2 - 2 sqrt(s1 s2))."""
    return float(((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum())


def _scipy_reference(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch-fid's float64 formula: scipy sqrtm with the eps offset fallback."""
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_frechet_closed_form_diagonal_gaussians():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = _closed_form_diag(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, 1e-10)
    # rotating both Gaussians by one orthogonal matrix keeps the distance
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-9)


def test_frechet_from_samples_converges_to_closed_form():
    rng = np.random.default_rng(1)
    d, n = 8, 20000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = np.linspace(0.5, 2, d), np.linspace(2, 0.5, d)
    f1 = mu1 + rng.normal(size=(n, d)) * np.sqrt(s1)
    f2 = mu2 + rng.normal(size=(n, d)) * np.sqrt(s2)
    expected = _closed_form_diag(mu1, s1, mu2, s2)
    assert frechet_distance_from_features(f1, f2) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("n1,n2,d", [(40, 30, 16), (12, 9, 64), (300, 200, 64)])
def test_frechet_matches_scipy_sqrtm_reference(n1, n2, d):
    """Both code paths (covariances, and the small-set SVD shortcut) against float64 sqrtm."""
    rng = np.random.default_rng(n1)
    f1 = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d)) * 0.3
    f2 = rng.normal(0.2, 1.0, size=(n2, d)) @ rng.normal(size=(d, d)) * 0.3
    stats = (*feature_statistics(f1), *feature_statistics(f2))
    reference = _scipy_reference(*stats)
    assert frechet_distance(*stats) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance_from_features(f1, f2) == pytest.approx(reference, rel=1e-6)
    mu, cov = feature_statistics(f1)
    np.testing.assert_allclose(mu, f1.mean(0))
    np.testing.assert_allclose(cov, np.cov(f1, rowvar=False))


def test_frechet_rejects_bad_statistics():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


# --- KID --------------------------------------------------------------------------------
def test_polynomial_mmd_matches_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 16)), rng.normal(0.3, 1.2, size=(50, 16))
    expected = float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y)))
    assert polynomial_mmd(x, y) == pytest.approx(expected, rel=1e-10)


def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same_mean, same_std, size = kernel_distance(a, b, subset_size=100, subsets=50)
    assert size == 100
    assert abs(same_mean) < 3 * same_std + 1e-3
    shifted_mean, _, _ = kernel_distance(a, b + 0.5, subset_size=100, subsets=50)
    assert shifted_mean > 10 * max(abs(same_mean), same_std)
    # repeatable (seeded)
    assert kernel_distance(a, b, 100, 50) == kernel_distance(a, b, 100, 50)
    with pytest.raises(ValueError, match="subset size"):
        kernel_distance(a, b, subset_size=1000)


# --- images to Inception input -------------------------------------------------------------------
def test_to_uint8_rgb_scaling():
    g8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = to_uint8_rgb(g8)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], g8)
    np.testing.assert_array_equal(to_uint8_rgb(g8.astype(np.uint16) * 257), out)
    np.testing.assert_array_equal(to_uint8_rgb(g8 / 255.0, 1.0), out)
    np.testing.assert_array_equal(to_uint8_rgb(g8 / 127.5 - 1, (-1, 1)), out)
    with pytest.raises(ValueError, match="data range"):
        to_uint8_rgb(g8 / 255.0)


# --- Inception pipeline vs torchmetrics --------------------------------------------------
@pytest.fixture(scope="module")
def random_inception_file(tmp_path_factory):
    """An Inception-v3 with random (He-initialised) weights, saved like the FID file.

    Not the real FID weights, but the same network, preprocessing and formula:
    enough to check our pipeline against torchmetrics without any download.
    """
    from torchvision.models import Inception3

    torch.manual_seed(0)
    net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("incep") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


def _small_sets(n: int = 4, size: int = 48):
    yy, xx = np.mgrid[:size, :size]
    rng = np.random.default_rng(0)
    reals = [(127 + 100 * np.sin(xx / (3 + i) + yy / 7)).astype(np.uint8) for i in range(n)]
    fakes = [np.clip(r + rng.normal(20, 30, r.shape), 0, 255).astype(np.uint8) for r in reals]
    return reals, fakes


def _uint8_batch(ims) -> torch.Tensor:
    return torch.from_numpy(np.stack([to_uint8_rgb(i) for i in ims]).transpose(0, 3, 1, 2))


def _torchmetrics_fid(weights, reals, fakes) -> float:
    """torchmetrics' FID end to end (its 2048x2048 eigvals takes a while on CPU)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights))
    metric.update(_uint8_batch(reals), real=True)
    metric.update(_uint8_batch(fakes), real=False)
    return float(metric.compute())


def test_inception_features_match_torchmetrics(random_inception_file):
    """Same network, weights and preprocessing as torchmetrics' FID: the same features."""
    pytest.importorskip("torch_fidelity", reason="torchmetrics' FID needs torch-fidelity")
    from torchmetrics.image.fid import FrechetInceptionDistance

    reals, fakes = _small_sets(1)  # each image costs a 299x299 Inception pass, twice
    ext = feats.InceptionFeatures(random_inception_file, device="cpu")
    assert ext.is_inception and ext.dim == 2048
    images = [reals[0], fakes[0]]
    ours = ext(images)
    metric = FrechetInceptionDistance(
        feature=2048, feature_extractor_weights_path=str(random_inception_file)
    )
    with torch.no_grad():
        theirs = metric.inception(_uint8_batch(images)).double().numpy()
    assert np.abs(ours).max() > 1e-3  # the random network gives non-trivial features
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * np.abs(theirs).max())


def test_frechet_matches_torchmetrics_formula():
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(5)
    f1, f2 = (
        rng.normal(size=(80, 24)),
        rng.normal(0.1, 1.3, size=(60, 24)) @ rng.normal(size=(24, 24)),
    )
    m1, s1 = feature_statistics(f1)
    m2, s2 = feature_statistics(f2)
    theirs = float(_compute_fid(*(torch.from_numpy(x) for x in (m1, s1, m2, s2))))
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(theirs, rel=1e-8)
    assert frechet_distance_from_features(f1, f2) == pytest.approx(theirs, rel=1e-8)


@pytest.mark.slow
def test_fid_pipeline_matches_torchmetrics(random_inception_file):
    """End to end against torchmetrics (slow on CPU: its 2048x2048 eigvals)."""
    pytest.importorskip("torch_fidelity", reason="torchmetrics' FID needs torch-fidelity")
    reals, fakes = _small_sets(3)
    ours = set_distance(
        reals, fakes, weights=random_inception_file, device="cpu", batch_size=3, kid_subset_size=2
    )
    assert ours["feature"].startswith("Inception-v3 pool3")
    assert ours["fid"] is not None and ours["fid"] > 0
    assert ours["fid"] == ours["feature_distance"]
    assert ours["kid_mean"] is not None and ours["kid_subset_size"] == 2
    assert (ours["n_real"], ours["n_fake"]) == (3, 3)
    assert any("rank-deficient" in w for w in ours["warnings"])
    expected = _torchmetrics_fid(random_inception_file, reals, fakes)
    assert ours["fid"] == pytest.approx(expected, rel=0.01)


def test_set_distance_with_inception_weights(random_inception_file):
    """FID/KID fields filled, labelled Inception, with the small-set warning (fake extractor)."""
    pytest.importorskip("torch_fidelity", reason="torchmetrics' FID needs torch-fidelity")
    reals, fakes = _small_sets(2)
    ours = set_distance(reals, fakes, weights=random_inception_file, device="cpu")
    assert ours["feature"].startswith("Inception-v3 pool3")
    assert ours["fid"] is not None and ours["fid"] == ours["feature_distance"] > 0
    assert ours["kid_mean"] is not None and ours["kid_std"] is not None
    assert (ours["n_real"], ours["n_fake"]) == (2, 2)
    assert any("rank-deficient" in w for w in ours["warnings"])
    assert ours["message"].startswith("FID and KID")


def test_fid_real_weights_match_torchmetrics(isbi_dir):
    pytest.importorskip("torch_fidelity", reason="torchmetrics' FID needs torch-fidelity")
    path = find_inception_weights()
    if path is None:
        pytest.skip(
            f"FID Inception weights not installed: put {INCEPTION_FILES[0]} into "
            f"{torch.hub.get_dir()}/checkpoints/ (see docs/metrics.md)"
        )
    image = read_image(isbi_dir / "test" / "images" / "20.png")
    reals = [image[i * 64 : i * 64 + 96, :96] for i in range(4)]
    fakes = [np.clip(r + 25, 0, 255).astype(np.uint8) for r in reals]
    ours = set_distance(reals, fakes, weights=path, device="cpu", kid_subset_size=3)
    assert ours["fid"] == pytest.approx(_torchmetrics_fid(path, reals, fakes), rel=0.01)


# --- weights handling -------------------------------------------------------------------------
@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """A torch hub cache without the Inception file, and no environment override."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(feats.WEIGHTS_ENV, raising=False)
    return tmp_path


def test_without_weights_no_fid_but_labelled_feature_distance(no_weights, tiny_unet):
    assert find_inception_weights() is None
    reals, fakes = _small_sets(6, 32)
    result = set_distance(iter(reals), iter(fakes), device="cpu", batch_size=4)
    assert result["fid"] is None and result["kid_mean"] is None and result["kid_std"] is None
    assert INCEPTION_FILES[0] in result["message"]
    assert str(no_weights / "hub" / "checkpoints") in result["message"]
    assert result["feature"].startswith("feature distance (")
    assert "FID" not in result["feature"]
    assert result["feature_distance"] is not None and result["feature_distance"] > 0
    assert (result["n_real"], result["n_fake"]) == (6, 6)
    # another U-Net (here the tiny test one) can be plugged in
    other = set_distance(reals, fakes, extractor=tiny_unet, device="cpu")
    assert other["fid"] is None and other["feature_dim"] == 32
    assert "feature distance (" in other["feature"]
    # asking for Inception explicitly gives the message and no number at all
    only = set_distance(reals, fakes, extractor="inception", device="cpu")
    assert only["fid"] is None and only["feature_distance"] is None
    assert INCEPTION_FILES[0] in only["message"]


def test_weights_found_in_hub_cache_and_env(no_weights, random_inception_file, monkeypatch):
    checkpoints = no_weights / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    target = checkpoints / INCEPTION_FILES[1]
    target.write_bytes(random_inception_file.read_bytes())
    assert find_inception_weights() == target
    monkeypatch.setenv(feats.WEIGHTS_ENV, str(random_inception_file))
    assert find_inception_weights() == random_inception_file
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILES[0]):
        find_inception_weights(no_weights / "missing.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_or_wrong_weights_are_refused(tmp_path, random_inception_file):
    evil = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, evil)
    with pytest.raises(FeatureWeightsError, match="plain tensors"):
        load_inception_state(evil)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(FeatureWeightsError, match="not the FID Inception-v3"):
        load_inception_state(wrong)
    with pytest.raises(FeatureWeightsError):
        set_distance([np.zeros((16, 16), np.uint8)] * 2, [np.zeros((16, 16), np.uint8)] * 2,
                     weights=wrong)  # fmt: skip
    state = load_inception_state(random_inception_file)
    assert state["fc.weight"].shape == (1008, 2048)
    # converted checkpoints without BatchNorm step counters still load
    lean = tmp_path / "lean.pth"
    torch.save({k: v for k, v in state.items() if "num_batches" not in k}, lean)
    assert "fc.bias" in load_inception_state(lean)


# --- streaming, custom extractors, small sets ----------------------------------------------------
class _MeanStd:
    """A toy extractor: per-image mean and std, counting the calls."""

    name = "mean and std"
    dim = 2
    is_inception = False

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, batch):
        self.batches.append(len(batch))
        return np.array([[b.mean(), b.std()] for b in batch])


def test_streaming_batches_by_shape():
    ext = _MeanStd()
    images = (np.full((20, 20), i, np.uint8) for i in range(5))  # a generator
    mixed = [*images, np.zeros((30, 30), np.uint8), np.zeros((3, 20, 20), np.uint8)]
    counts: list[int] = []
    result = drive(iter_features(mixed, ext, batch_size=2), counts.append)
    assert result.shape == (9, 2)
    assert ext.batches == [2, 2, 1, 1, 2, 1]  # never more than 2, split where the shape changes
    assert counts[-1] == 9


def test_custom_extractor_and_small_set_warnings():
    rng = np.random.default_rng(4)
    reals = [rng.integers(0, 100, (16, 16)).astype(np.uint8) for _ in range(5)]
    fakes = [rng.integers(100, 255, (16, 16)).astype(np.uint8) for _ in range(5)]
    result = set_distance(reals, fakes, extractor=_MeanStd(), kid_subset_size=50)
    assert result["feature"] == "feature distance (mean and std)"
    assert result["fid"] is None and result["feature_distance"] > 100
    assert any("larger than the smaller set" in w for w in result["warnings"])
    one = set_distance(reals[:1], fakes, extractor=_MeanStd())
    assert one["feature_distance"] is None
    assert any("at least 2" in w for w in one["warnings"])
    with pytest.raises(ValueError, match="holds no images"):
        set_distance([], fakes, extractor=_MeanStd())
