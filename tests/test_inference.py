"""Tiled, blended inference: equal to whole-image inference, any dtype, layout and size."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_segen.inference import (
    iter_predict,
    iter_sliding_window,
    predict,
    sliding_window,
    spatial_layout,
    tiling,
)
from napari_segen.inference.predict import class_labels
from napari_segen.inference.sliding_window import plan_window
from napari_segen.inference.tiling import plan_tiles
from napari_segen.utils.generators import drive

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
    drive(gen, events.append)
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


def _conv3x3() -> torch.nn.Conv2d:
    torch.manual_seed(0)
    return torch.nn.Conv2d(2, 3, 3, padding=1).eval()


@pytest.mark.parametrize("shape", [(45, 61), (33, 17), (3, 5)])
def test_sliding_window_with_plain_callables(shape):
    """Identity gives the input back; a conv gives the conv of the padded input, cropped."""
    x = torch.from_numpy(np.random.default_rng(6).random((2, *shape)).astype(np.float32))
    kw = dict(tile_size=32, overlap=16, halo=2, size_multiple=8, batch_size=3)
    out = sliding_window(x, lambda b: b, **kw)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, x, rtol=0, atol=1e-6)
    conv = _conv3x3()
    hp, wp = -(-shape[0] // 8) * 8, -(-shape[1] // 8) * 8
    mode = "reflect" if hp - shape[0] < shape[0] and wp - shape[1] < shape[1] else "replicate"
    padded = F.pad(x[None], (0, wp - shape[1], 0, hp - shape[0]), mode=mode)
    with torch.no_grad():
        expected = conv(padded)[0, :, : shape[0], : shape[1]]
        out = sliding_window(x, conv, **kw)
    assert out.shape == (3, *shape)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_sliding_window_progress_counts_up_to_total():
    x = torch.zeros((1, 100, 70))
    layout, _ = plan_window((100, 70), 32, 16, 4, 8)
    events = []
    out = drive(
        iter_sliding_window(
            x, lambda b: b, tile_size=32, overlap=16, halo=4, size_multiple=8, batch_size=4
        ),
        events.append,
    )
    assert out.shape == (1, 100, 70)
    assert [e.done for e in events] == [
        min(i + 4, layout.num_tiles) for i in range(0, layout.num_tiles, 4)
    ]
    assert all(e.total == layout.num_tiles for e in events)


def test_blending_weights_are_built_once_per_layout(tiny_unet, monkeypatch):
    calls = []
    real = tiling.blend_window
    monkeypatch.setattr(tiling, "blend_window", lambda *a, **k: calls.append(a) or real(*a, **k))
    tiling.blend_weights.cache_clear()
    stack = np.random.default_rng(7).integers(0, 255, (3, 100, 100), dtype=np.uint8)
    predict(tiny_unet, stack, **TILED)
    info = tiling.blend_weights.cache_info()
    assert info.misses == 1 and info.hits == 2  # one layout, three slices
    layout, _ = plan_window((100, 100), **TILED, size_multiple=4)
    assert layout.num_tiles > 9 and len(calls) == 9  # one window per kind of tile border


def test_whole_image_pass_returns_the_predictor_output_unchanged():
    x = torch.from_numpy(np.random.default_rng(8).random((1, 40, 24)).astype(np.float32))
    assert torch.equal(sliding_window(x, torch.sigmoid, tile_size=None), torch.sigmoid(x))


def test_sliding_window_errors_are_sentences():
    x = torch.zeros((1, 64, 64))

    def oom(batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="try a smaller tile size or batch size, or the CPU"):
        sliding_window(x, oom, tile_size=32, batch_size=2)
    with pytest.raises(ValueError, match="must return"):
        sliding_window(x, lambda b: b[..., ::2, ::2], tile_size=32)
    with pytest.raises(ValueError, match="expected a \\(C, H, W\\) tensor"):
        sliding_window(torch.zeros((64, 64)), lambda b: b)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_cheap_labels_equal_argmax(k):
    rng = np.random.default_rng(k)
    # a coarse grid of values makes ties common: the lower class must win, as in argmax
    p = torch.from_numpy(rng.integers(0, 3, (k, 30, 40)).astype(np.float32))
    expected = p.argmax(0).numpy()
    out = np.zeros((30, 40), np.uint8)
    out[...] = class_labels(p)
    np.testing.assert_array_equal(out, expected)
    view = p[:, 3:, 5:]  # the sliding window returns a cropped view
    np.testing.assert_array_equal(class_labels(view), view.argmax(0).numpy())


def test_cpu_settings_change_speed_not_results(tiny_unet, tmp_path, monkeypatch):
    """The malloc thresholds and channels-last weights (cpu_runtime) leave outputs as they are,
    end with glibc's settings restored, and a model still saves after predicting."""
    from napari_segen.inference import cpu_runtime
    from napari_segen.models import load_model, save_model

    img = np.random.default_rng(7).integers(0, 255, (150, 130), dtype=np.uint8)
    fresh = load_model(save_model(tmp_path / "a.safetensors", tiny_unet.module, tiny_unet.spec))
    monkeypatch.setenv("NAPARI_SEGEN_KEEP_FREED_MEMORY", "0")
    plain = fresh.module.eval()
    x = torch.from_numpy(np.random.default_rng(8).random((2, 1, 64, 64), np.float32))
    with torch.no_grad():
        before = plain(x)
    off = predict(fresh, img, return_probabilities=True, **TILED)
    monkeypatch.delenv("NAPARI_SEGEN_KEEP_FREED_MEMORY")
    with cpu_runtime.fewer_page_faults(), cpu_runtime.fewer_page_faults():  # nests
        on = predict(fresh, img, return_probabilities=True, **TILED)
    assert cpu_runtime._active == 0
    np.testing.assert_array_equal(on.labels, off.labels)
    np.testing.assert_allclose(on.probabilities, off.probabilities, atol=1e-6)
    with torch.no_grad():  # channels-last weights: the same function
        torch.testing.assert_close(plain(x), before, atol=1e-5, rtol=1e-5)
    again = load_model(save_model(tmp_path / "b.safetensors", fresh.module, fresh.spec))
    want = tiny_unet.module.state_dict()
    for name, value in again.module.state_dict().items():
        torch.testing.assert_close(value, want[name], atol=0, rtol=0)
