"""Tiled, blended inference: equal to whole-image inference, any dtype, layout and size."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_segen.inference import iter_predict, predict, spatial_layout
from napari_segen.inference.tiling import plan_tiles

TILED = dict(tile_size=64, overlap=56, halo=24)  # halo > receptive radius of a depth-2 U-Net


def _assert_tiled_equals_whole(model, image, **kw):
    whole = predict(model, image, tile_size=None, return_probabilities=True, **kw)
    tiled = predict(model, image, return_probabilities=True, batch_size=3, **TILED, **kw)
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    assert (tiled.labels == whole.labels).mean() > 0.999
    return tiled


@pytest.mark.parametrize("shape", [(101, 157), (77, 64), (130, 99)])
def test_tiled_equals_whole_on_odd_sizes(tiny_unet, shape):
    img = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    out = _assert_tiled_equals_whole(tiny_unet, img)
    assert out.labels.shape == shape and out.probabilities.shape == (2, *shape)
    np.testing.assert_allclose(out.probabilities.sum(0), 1, atol=1e-5)


def test_tiled_equals_whole_on_16bit(tiny_unet):
    img = np.random.default_rng(2).integers(0, 65535, (90, 120), dtype=np.uint16)
    _assert_tiled_equals_whole(tiny_unet, img)


def test_tiled_equals_whole_on_rgb_and_rgba(tiny_unet):
    rgb = np.random.default_rng(3).integers(0, 255, (83, 97, 3), dtype=np.uint8)
    _assert_tiled_equals_whole(tiny_unet, rgb)
    rgba = np.concatenate([rgb, np.full((83, 97, 1), 255, np.uint8)], -1)
    a = predict(tiny_unet, rgb, **TILED).labels
    b = predict(tiny_unet, rgba, **TILED).labels
    np.testing.assert_array_equal(a, b)  # alpha is ignored


def test_float_image_and_intensity_scale_invariance(tiny_unet):
    img = np.random.default_rng(4).random((70, 70)).astype(np.float32)
    a = predict(tiny_unet, img, **TILED).labels
    b = predict(tiny_unet, img * 1000 + 5, **TILED).labels  # percentile normalisation
    assert (a == b).mean() > 0.999


def test_stack_is_segmented_slice_by_slice(tiny_unet):
    rng = np.random.default_rng(5)
    stack = rng.integers(0, 255, (3, 60, 70), dtype=np.uint8)
    out = predict(tiny_unet, stack, **TILED)
    assert out.labels.shape == (3, 60, 70)
    for z in range(3):
        np.testing.assert_array_equal(out.labels[z], predict(tiny_unet, stack[z], **TILED).labels)
    lazy = predict(tiny_unet, da.from_array(stack, chunks=(1, 60, 70)), **TILED)
    np.testing.assert_array_equal(lazy.labels, out.labels)


def test_tiny_image_smaller_than_model_grid(tiny_unet):
    out = predict(tiny_unet, np.zeros((3, 5), np.uint8))
    assert out.labels.shape == (3, 5)


def test_progress_counts_every_tile(tiny_unet):
    gen = iter_predict(tiny_unet, np.zeros((2, 100, 100), np.uint8), batch_size=2, **TILED)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration:
        pass
    assert events[0].done == 0
    assert events[-1].done == events[-1].total
    assert [e.done for e in events] == sorted(e.done for e in events)


def test_layout_detection():
    assert spatial_layout((10, 20), None) == ((), False)
    assert spatial_layout((10, 20, 3), None) == ((), True)
    assert spatial_layout((5, 10, 20), None) == ((5,), False)
    assert spatial_layout((5, 10, 20, 3), None) == ((5,), True)
    assert spatial_layout((4, 5, 10, 20), False) == ((4, 5), False)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        spatial_layout((10,), None)


def test_tiles_cover_image_and_sit_on_grid():
    layout = plan_tiles((512, 320), 128, 32, 8, 16)
    assert layout.starts_y[-1] + layout.tile[0] == 512
    assert layout.starts_x[-1] + layout.tile[1] == 320
    assert all(s % 16 == 0 for s in layout.starts_y + layout.starts_x)
    with pytest.raises(ValueError, match="too small for an overlap"):
        plan_tiles((512, 512), 32, 64, 8, 16)


def test_device_errors_are_sentences(tiny_unet):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        predict(tiny_unet, np.zeros((32, 32), np.uint8), device="cuda")
