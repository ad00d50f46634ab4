"""FID and KID between two image sets, or a labelled domain feature distance (no Qt, no napari).

FID (Heusel et al. 2017) is the Frechet distance between Gaussians fitted to the
Inception-v3 pool3 features of the two sets; KID (Binkowski et al. 2018) is the
unbiased polynomial-kernel MMD of the same features, averaged over random
subsets. The network, weights and preprocessing are torchmetrics' (see
:mod:`.features`) and so are the formulas: the distances call torchmetrics'
functions, so the numbers can be compared with published ones computed the same
way. Without the Inception weights file, :func:`set_distance` reports no FID,
says which file is missing, and gives the same two distances in the feature
space of a napari-segen U-Net encoder, labelled "feature distance".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterable
from typing import Any

import numpy as np
import torch
from scipy import linalg

from ..utils.generators import Progress, drive, map_events
from .features import (
    FeatureExtractor,
    InceptionFeatures,
    UNetEncoderFeatures,
    count_images,
    find_inception_weights,
    iter_features,
    missing_weights_message,
)

FID_HELP = (
    "FID (Frechet Inception distance, 0 = same distribution, lower is better) compares the "
    "two sets as a whole, not pair by pair: the Frechet distance |mu_r - mu_f|^2 + "
    "Tr(S_r + S_f - 2 (S_r S_f)^1/2) between Gaussians fitted to Inception-v3 pool3 features "
    "(2048-d, the 2015-12-05 FID weights), computed like torchmetrics (uint8 RGB input, "
    "antialiased resize to 299x299, float64 statistics). FID is biased by the set size: "
    "compare FIDs only between sets of equal size, ideally thousands of images."
)
KID_HELP = (
    "KID (kernel Inception distance, 0 = same distribution, lower is better) is the unbiased "
    "MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3 on the same Inception features, "
    "averaged over random subsets (mean +/- std over subsets). Unlike FID it is unbiased, so it "
    "is more meaningful for small sets; values are often quoted x1000."
)
FEATURE_DISTANCE_HELP = (
    "Feature distance: the Frechet distance (and the KID-style kernel MMD) computed like FID "
    "and KID but on other features (here the bottleneck of a U-Net encoder, averaged over "
    "space). It is not FID: its scale depends on the network, so compare it only between "
    "runs that use the same extractor."
)
DEFAULT_KID_SUBSETS = 100
DEFAULT_KID_SUBSET_SIZE = 1000  # torchmetrics' default


# --- the distances ------------------------------------------------------------------------------
def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance ``|mu1-mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)`` in float64, as torchmetrics.

    The statistics are checked here (one feature length, finite values); the value is
    torchmetrics' FID formula (``Tr((S1 S2)^1/2)`` from the eigenvalues of ``S1 S2``),
    with the tiny negative values that rounding can give clipped to 0.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances "
            f"{s1.shape} and {s2.shape}; both sets need features of one length"
        )
    for x in (mu1, mu2, s1, s2):
        if not np.isfinite(x).all():
            raise ValueError("the feature statistics hold NaN or inf; check the input images")
    # torchmetrics has no public function for the Frechet distance of two Gaussians:
    # FrechetInceptionDistance takes images (or features through a pass-through
    # `feature=` module), keeps running sums rather than statistics, and always
    # decomposes the D x D product. _compute_fid is the function its compute() calls;
    # calling it on statistics keeps this function's signature and gives torchmetrics'
    # FID by construction. Its (mu1, sigma1, mu2, sigma2) signature is the same in the
    # torchmetrics versions we support; test_frechet_matches_torchmetrics_formula pins it.
    # Imported here, not with the module: torchmetrics loads torchvision and Triton.
    from torchmetrics.image.fid import _compute_fid

    value = float(_compute_fid(*(torch.from_numpy(x) for x in (mu1, s1, mu2, s2))))
    return max(value, 0.0)


def feature_statistics(features: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of ``(N, D)`` features, two-pass and chunked."""
    f = np.asarray(features)
    n = f.shape[0]
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {n}")
    mu = np.zeros(f.shape[1], np.float64)
    for i in range(0, n, chunk):
        mu += f[i : i + chunk].astype(np.float64).sum(0)
    mu /= n
    cov = np.zeros((f.shape[1], f.shape[1]), np.float64)
    for i in range(0, n, chunk):
        c = f[i : i + chunk].astype(np.float64) - mu
        cov += c.T @ c
    return mu, cov / (n - 1)


def frechet_distance_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)``, ``(M, D)``.

    With at least D images in either set this is :func:`frechet_distance` (torchmetrics'
    formula) of :func:`feature_statistics`. When both sets hold fewer images than
    dimensions, the covariances ``A^T A/(N-1)`` and ``B^T B/(M-1)`` (``A``, ``B`` the
    centred features) have low rank, and ``Tr((S1 S2)^1/2)`` equals the sum of the
    singular values of ``A B^T`` divided by ``sqrt((N-1)(M-1))``: the same number from
    an N x M matrix. This is the usual case in the widget (tens of images, 2048-d
    features), where decomposing the mostly-zero D x D product takes seconds on a CPU
    and the square roots of its rounding-level eigenvalues add noise.
    """
    f1, f2 = np.asarray(f1), np.asarray(f2)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(
            f"expected feature arrays (N, D) and (M, D), got {f1.shape} and {f2.shape}"
        )
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if min(n1, n2) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, got {n1} and {n2}")
    if max(n1, n2) >= d:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    a, b = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    a -= mu1
    b -= mu2
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("the features hold NaN or inf; check the input images")
    tr1 = float((a * a).sum()) / (n1 - 1)
    tr2 = float((b * b).sum()) / (n2 - 1)
    tr_covmean = float(linalg.svdvals(a @ b.T).sum()) / float(np.sqrt((n1 - 1) * (n2 - 1)))
    diff = mu1 - mu2
    return max(float(diff @ diff) + tr1 + tr2 - 2.0 * tr_covmean, 0.0)


def polynomial_mmd(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> float:
    """Unbiased MMD^2 of two equal-size samples with kernel ``(gamma x.y + coef)^degree``.

    ``gamma`` defaults to ``1/D``. Computed by torchmetrics' ``poly_mmd`` (the KID
    paper's estimator) in float64.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(
            f"the kernel MMD needs two samples of equal size >= 2, got {m} and {len(y)}"
        )
    from torchmetrics.image.kid import poly_mmd  # on use: torchmetrics loads torchvision

    return float(poly_mmd(torch.from_numpy(x), torch.from_numpy(y), degree, gamma, coef))


def kernel_distance(
    f_real: np.ndarray,
    f_fake: np.ndarray,
    subset_size: int | None = None,
    subsets: int = DEFAULT_KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float, int]:
    """KID: mean and std (population, over subsets) of :func:`polynomial_mmd` on random subsets.

    Each subset draws ``subset_size`` features of each set without replacement
    (default ``min(1000, N_real, N_fake)``); the seed makes the result repeatable.
    Returns ``(mean, std, subset_size)``.
    """
    # torchmetrics' KernelInceptionDistance draws its subsets with the global torch RNG,
    # so its value changes from call to call; the subsets are drawn here from `seed`,
    # and each one is scored by torchmetrics' poly_mmd, as KernelInceptionDistance does.
    n = min(len(f_real), len(f_fake))
    size = min(DEFAULT_KID_SUBSET_SIZE, n) if subset_size is None else int(subset_size)
    if size < 2 or size > n:
        raise ValueError(
            f"the KID subset size must be between 2 and the smaller set's size ({n}), got {size}"
        )
    rng = np.random.default_rng(seed)
    values = [
        polynomial_mmd(
            f_real[rng.choice(len(f_real), size, replace=False)],
            f_fake[rng.choice(len(f_fake), size, replace=False)],
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values)), size


# --- the set comparison -------------------------------------------------------------------------
def _resolve_extractor(
    weights: Any, extractor: Any, device: Any, data_range: Any
) -> tuple[FeatureExtractor | None, str]:
    """The extractor to use and a note about the choice (e.g. why there is no FID)."""
    if extractor is not None and not isinstance(extractor, (str, os.PathLike)):
        if hasattr(extractor, "module") and hasattr(extractor, "spec"):  # a LoadedModel
            return UNetEncoderFeatures(extractor, device), ""
        if not isinstance(extractor, FeatureExtractor):
            raise TypeError(
                "extractor must be 'inception', 'unet', a U-Net model file, a LoadedModel or "
                f"an object with name, dim, is_inception and __call__; got {type(extractor)}"
            )
        return extractor, ""
    choice = "auto" if extractor is None else str(extractor)
    if choice in ("auto", "inception"):
        path = find_inception_weights(weights)
        if path is not None:
            try:
                return InceptionFeatures(path, device, data_range=data_range), ""
            except ImportError as err:
                note = f"No FID: {err}."
        else:
            note = missing_weights_message()
        if choice == "inception":
            return None, note
        return UNetEncoderFeatures(None, device), note
    if choice == "unet":
        return UNetEncoderFeatures(None, device), ""
    return UNetEncoderFeatures(choice, device), ""


def _size_warnings(n_real: int, n_fake: int, dim: int, is_inception: bool) -> list[str]:
    what = "FID" if is_inception else "the feature distance"
    out = []
    small = min(n_real, n_fake)
    if 2 <= small < dim:
        out.append(
            f"Only {n_real} real and {n_fake} synthetic images for {dim}-d features: with fewer "
            f"images than feature dimensions the covariance is rank-deficient (rank < {dim}), so "
            f"{what} is biased upward and noisy. Use at least {dim} images per set"
            + (" (10 000+ is usual for FID)" if is_inception else "")
            + f", compare {what} only between sets of equal size, and prefer "
            + ("KID" if is_inception else "the kernel MMD")
            + " for small sets."
        )
    return out


def _features_progress(offset: int, total: int, label: str) -> Callable[[int], Progress]:
    """Images done in one set -> progress over both sets (a ``total`` of 0, unknown, grows)."""

    def progress(done: int) -> Progress:
        step = offset + done
        return Progress(step, max(total, step), f"features of {done} {label} image(s)")

    return progress


def iter_set_distance(
    reals: Iterable[Any],
    fakes: Iterable[Any],
    *,
    weights: str | os.PathLike | None = None,
    extractor: Any = None,
    device: str = "auto",
    batch_size: int = 32,
    kid_subset_size: int | None = None,
    data_range: float | tuple[float, float] | None = None,
) -> Generator[Progress, None, dict[str, Any]]:
    """Generator version of :func:`set_distance`: yields :class:`Progress`, returns the result."""
    n_real_hint, n_fake_hint = count_images(reals), count_images(fakes)
    total = (n_real_hint or 0) + (n_fake_hint or 0) if None not in (n_real_hint, n_fake_hint) else 0
    result: dict[str, Any] = {
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "feature": "",
        "n_real": n_real_hint or 0,
        "n_fake": n_fake_hint or 0,
        "warnings": [],
        "message": "",
        "feature_distance": None,
        "feature_kid_mean": None,
        "feature_kid_std": None,
        "feature_dim": None,
        "kid_subset_size": None,
    }
    yield Progress(0, total, "loading the feature extractor")
    ext, note = _resolve_extractor(weights, extractor, device, data_range)
    if ext is None:
        result["message"] = note
        return result
    is_fid = bool(ext.is_inception)
    result["feature"] = ext.name if is_fid else f"feature distance ({ext.name})"
    result["feature_dim"] = int(ext.dim)

    feats = []
    done_before = 0
    for label, images in (("real", reals), ("synthetic", fakes)):
        progress = _features_progress(done_before, total, label)
        feats.append((yield from map_events(iter_features(images, ext, batch_size), progress)))
        done_before += len(feats[-1])
    f_real, f_fake = feats
    n_real, n_fake = len(f_real), len(f_fake)
    result["n_real"], result["n_fake"] = n_real, n_fake
    for n, label in ((n_real, "real"), (n_fake, "synthetic")):
        if n == 0:
            raise ValueError(f"the {label} set holds no images; give at least 2 images per set")
    warnings = _size_warnings(n_real, n_fake, ext.dim, is_fid)
    yield Progress(done_before, max(total, done_before), "computing the distances")
    distance = kid = kid_std = None
    if min(n_real, n_fake) < 2:
        warnings.append(
            f"{n_real} real and {n_fake} synthetic image(s): a set distance needs at least 2 "
            "images in each set (and thousands for a meaningful FID); none was computed."
        )
    else:
        distance = frechet_distance_from_features(f_real, f_fake)
        size = kid_subset_size
        smaller = min(n_real, n_fake)
        if size is not None and size > smaller:
            warnings.append(
                f"KID subset size {size} is larger than the smaller set ({smaller}); "
                f"used {smaller}."
            )
            size = smaller
        kid, kid_std, used = kernel_distance(f_real, f_fake, size)
        result["kid_subset_size"] = used
    result.update(feature_distance=distance, feature_kid_mean=kid, feature_kid_std=kid_std)
    if is_fid:
        result.update(fid=distance, kid_mean=kid, kid_std=kid_std)
    result["warnings"] = warnings
    sets = f"{n_real} real and {n_fake} synthetic image(s)"
    if is_fid:
        result["message"] = f"FID and KID from {ext.name} features of {sets}."
    else:
        lead = f"{note} " if note else ""
        result["message"] = (
            f"{lead}Shown instead: feature distance ({ext.name}) of {sets} - a Frechet distance "
            "and kernel MMD like FID and KID but in that network's feature space; not FID, "
            "comparable only with runs using the same extractor."
        )
    return result


def set_distance(reals: Iterable[Any], fakes: Iterable[Any], **kwargs: Any) -> dict[str, Any]:
    """FID and KID between a real and a synthetic image set (or a labelled feature distance).

    Runs :func:`iter_set_distance` to the end.

    Args:
        reals, fakes: iterables of images (``(H, W)`` or ``(H, W, C)``, any dtype; stacks
            ``(N, H, W[, C])`` count as N images), read lazily in batches.
        weights: the FID Inception weights file; None looks for
            ``weights-inception-2015-12-05-6726825d.pth`` (or pytorch-fid's
            ``pt_inception-...``) in ``$NAPARI_SEGEN_FID_WEIGHTS`` and
            ``torch.hub.get_dir()/checkpoints/``. Never downloaded.
        extractor: None = Inception if its weights are found, else the U-Net encoder
            feature distance; ``"inception"`` (FID or nothing), ``"unet"`` (the bundled
            U-Net), a U-Net model file, a ``LoadedModel``, or any
            :class:`~napari_segen.metrics.features.FeatureExtractor`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        batch_size: images per forward pass (consecutive images of one shape).
        kid_subset_size: images per KID subset (default ``min(1000, N_real, N_fake)``).
        data_range: range of float images for Inception (R for ``[0, R]``, or ``(lo, hi)``);
            integer images use their dtype's range.

    Returns:
        ``{"fid", "kid_mean", "kid_std", "feature", "n_real", "n_fake", "warnings",
        "message"}``: ``fid``/``kid_*`` are None unless Inception features were used;
        ``feature`` names the features ("feature distance (<extractor>)" when not
        Inception); ``feature_distance``, ``feature_kid_mean``/``_std``, ``feature_dim``
        and ``kid_subset_size`` give the numbers whichever features were used.

    Raises:
        FileNotFoundError: ``weights`` was given but does not exist.
        ValueError: unreadable images, an empty set, or a weights file that is not the
            FID Inception-v3.
    """
    return drive(iter_set_distance(reals, fakes, **kwargs))
