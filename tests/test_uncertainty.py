"""Test-time augmentation, entropy maps, ranking regions to correct, and error AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segen.inference.uncertainty import (
    dihedral_tta,
    entropy_map,
    error_auroc,
    next_region,
    rank_regions,
)


def test_tta_of_an_equivariant_predictor_is_the_predictor():
    def pointwise(x):  # a per-pixel rule commutes with flips and rotations
        p = torch.sigmoid(x)
        return torch.cat([1 - p, p], 1)

    x = torch.randn(2, 1, 16, 24)
    assert torch.allclose(dihedral_tta(pointwise)(x), pointwise(x), atol=1e-6)


def test_tta_averages_views_of_a_direction_dependent_predictor():
    def left_edge(x):  # "probability 1 in the first column": not rotation invariant
        p = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        p[:, 0] = 1
        p[:, 1, :, 0] = 1
        p[:, 0, :, 0] = 0
        return p

    out = dihedral_tta(left_edge)(torch.zeros(1, 1, 8, 8))
    # every border pixel is "first column" in some of the 8 views, the centre in none
    assert torch.allclose(out.sum(1), torch.ones(1, 8, 8))
    assert out[0, 1, 4, 4] == 0 and 0 < out[0, 1, 0, 4] < 1
    assert out[0, 1, 0, 0] == pytest.approx(out[0, 1, 7, 7].item())  # symmetric


def test_entropy_is_zero_when_sure_and_one_when_uniform():
    p = np.zeros((3, 2, 2), np.float32)
    p[0, 0, 0] = 1
    p[:, 0, 1] = 1 / 3
    p[1, 1, :] = 1
    h = entropy_map(p)
    assert h[0, 0] == pytest.approx(0, abs=1e-6)
    assert h[0, 1] == pytest.approx(1, abs=1e-5)
    assert h[1] == pytest.approx(0, abs=1e-6)


def test_regions_are_ranked_and_visited_in_order():
    u = np.zeros((300, 260))
    u[130:250, 10:120] = 0.9  # mostly inside the tile at (128, 0)
    u[0:20, 200:260] = 0.5
    ranked = rank_regions(u, 128)
    assert len(ranked) == 3 * 3
    assert (ranked[0].y, ranked[0].x) == (128, 0)
    assert ranked[0].score > ranked[1].score >= ranked[-1].score
    second = next_region(ranked, [(128, 0)])
    assert second is not None and (second.y, second.x) != (128, 0)
    assert next_region(ranked, [(r.y, r.x) for r in ranked]) is None
    assert ranked[0].corners().tolist()[2] == [256, 128]


def test_error_auroc_ranks_wrong_pixels():
    wrong = np.array([0, 0, 1, 1, 0, 1], bool)
    assert error_auroc(np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7]), wrong) == 1.0
    assert error_auroc(np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3]), wrong) == 0.0
    assert error_auroc(np.full(6, 0.5), wrong) == 0.5
    # positives {0.9, 0.2}, negatives {0.1, 0.5}: 3 of 4 pairs ranked right
    assert error_auroc(np.array([0.9, 0.1, 0.2, 0.5]), np.array([1, 0, 1, 0], bool)) == 0.75
    assert np.isnan(error_auroc(np.ones(3), np.zeros(3, bool)))


def test_predict_returns_uncertainty_and_tta_labels(tiny_unet, blobs_image):
    from napari_segen.inference import predict

    image, _ = blobs_image
    plain = predict(tiny_unet, image, tile_size=None, device="cpu", return_uncertainty=True)
    assert plain.uncertainty.shape == image.shape
    assert plain.uncertainty.min() >= 0 and plain.uncertainty.max() <= 1
    tta = predict(
        tiny_unet, image, tile_size=48, device="cpu", tta=True, return_probabilities=True,
        return_uncertainty=True,
    )  # fmt: skip
    assert tta.probabilities.shape == (2, *image.shape)
    assert np.allclose(tta.probabilities.sum(0), 1, atol=1e-5)
    assert np.allclose(tta.uncertainty, entropy_map(tta.probabilities), atol=1e-6)
    # whole-image TTA is the average of the 8 transformed images' predictions, undone
    whole = predict(tiny_unet, image, tile_size=None, device="cpu", tta=True,
                    return_probabilities=True).probabilities  # fmt: skip
    views = []
    for k in range(4):
        for flip in (False, True):
            im = np.rot90(image[:, ::-1] if flip else image, k)
            p = predict(tiny_unet, np.ascontiguousarray(im), tile_size=None, device="cpu",
                        return_probabilities=True).probabilities  # fmt: skip
            p = np.rot90(p, -k, axes=(1, 2))
            views.append(p[:, :, ::-1] if flip else p)
    assert np.allclose(whole, np.mean(views, 0), atol=1e-5)
    assert not np.allclose(whole, views[0], atol=1e-6)
    stack = predict(tiny_unet, np.stack([image, image]), device="cpu", return_uncertainty=True)
    assert stack.uncertainty.shape == (2, *image.shape)
