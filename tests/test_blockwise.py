"""Block-wise prediction of images bigger than memory: equal to in-memory, resumable,
distributed, and the ``napari-segen predict`` zarr mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import zarr

from napari_segen.cli import main
from napari_segen.data.normalize import normalize_image, stats_from_counts
from napari_segen.inference import predict
from napari_segen.inference.blockwise import (
    BlockSettings,
    StoreMismatchError,
    iter_predict_blocks,
    predict_blocks,
)

TILE = 48  # blocks of 64/70 px are no multiple of the tile grid


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """An odd-sized 8-bit image with structure (smoothed noise)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(157, 141)).cumsum(0).cumsum(1)
    x = (x - x.min()) / np.ptp(x) * 255
    return x.astype(np.uint8)


def _settings(**kw) -> BlockSettings:
    return BlockSettings(**{"block_size": 64, "tile_size": TILE, **kw})


def _same(store, ref, probabilities: bool = False, uncertainty: bool = False) -> None:
    g = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(g["labels"][...], ref.labels)
    if probabilities:
        np.testing.assert_allclose(g["probabilities"][...], ref.probabilities, atol=1e-5)
    if uncertainty:
        np.testing.assert_allclose(g["uncertainty"][...], ref.uncertainty, atol=1e-5)
    assert g["done"][...].all()


def test_percentiles_from_counts_equal_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 1000, 4097):
        for dtype, top in ((np.uint8, 255), (np.uint16, 4000)):
            x = rng.integers(0, top, n).astype(dtype).astype(np.float32)
            norm = {"mode": "percentile", "low": float(rng.uniform(0, 5)), "high": 99.7}
            lo, hi = np.percentile(x, [norm["low"], norm["high"]])
            values, counts = np.unique(x, return_counts=True)
            stats = stats_from_counts(values, counts, norm, dtype)
            assert (stats.lo, stats.hi) == (float(lo), float(hi))
            # precomputed statistics give the in-memory normalisation bit for bit
            chw = x.reshape(1, 1, -1)
            np.testing.assert_array_equal(
                normalize_image(chw, norm, stats=stats), normalize_image(chw, norm)
            )


def test_blockwise_2d_equals_in_memory(tmp_path, tiny_unet, image):
    ref = predict(
        tiny_unet,
        image,
        tile_size=TILE,
        device="cpu",
        return_probabilities=True,
        return_uncertainty=True,
    )
    out = tmp_path / "o.zarr"
    result = predict_blocks(
        tiny_unet,
        image,
        out,
        settings=_settings(probabilities=True, uncertainty=True),
        device="cpu",
    )
    assert (result.total, result.written, result.skipped) == (9, 9, 0)
    _same(out, ref, probabilities=True, uncertainty=True)


def test_blockwise_stack_from_zarr_equals_in_memory(tmp_path, tiny_unet, image):
    stack = np.stack([image, image[::-1], 255 - image])  # each plane its own statistics
    src = zarr.open_array(
        str(tmp_path / "in.zarr"), mode="w", shape=stack.shape, chunks=(1, 50, 50), dtype="u1"
    )
    src[...] = stack
    ref = predict(tiny_unet, stack, tile_size=TILE, device="cpu")
    out = tmp_path / "o.zarr"
    result = predict_blocks(
        tiny_unet, str(tmp_path / "in.zarr"), out, settings=_settings(block_size=70), device="cpu"
    )
    assert result.total == 3 * 3 * 3 and len(result.stats) == 3
    _same(out, ref)


def test_interrupted_run_resumes_without_recomputing(tmp_path, tiny_unet, image):
    ref = predict(tiny_unet, image, tile_size=TILE, device="cpu")
    out = tmp_path / "o.zarr"
    gen = iter_predict_blocks(tiny_unet, image, out, settings=_settings(), device="cpu")
    for event in gen:
        if event.done == 4 and event.message.startswith("block"):
            break
    gen.close()  # as Ctrl-C or a GUI cancel
    done = zarr.open_group(str(out), mode="r")["done"][...]
    assert done.sum() == 4
    result = predict_blocks(tiny_unet, image, out, settings=_settings(), device="cpu")
    assert (result.written, result.skipped) == (5, 4)
    _same(out, ref)
    again = predict_blocks(tiny_unet, image, out, settings=_settings(), device="cpu")
    assert again.written == 0


def test_existing_store_of_another_run_needs_overwrite(tmp_path, tiny_unet, image):
    out = tmp_path / "o.zarr"
    predict_blocks(tiny_unet, image, out, settings=_settings(), device="cpu")
    other = dataclasses.replace(_settings(), block_size=80)
    with pytest.raises(StoreMismatchError, match="overwrite"):
        predict_blocks(tiny_unet, image, out, settings=other, device="cpu")
    result = predict_blocks(tiny_unet, image, out, settings=other, device="cpu", overwrite=True)
    assert result.written == result.total == 4


def test_distributed_equals_single_process(tmp_path, tiny_unet, tiny_model_file, image):
    distributed = pytest.importorskip("distributed")
    ref = tmp_path / "ref.zarr"
    predict_blocks(tiny_unet, image, ref, settings=_settings(), device="cpu")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        for model, name in ((str(tiny_model_file), "a.zarr"), (tiny_unet, "b.zarr")):
            result = predict_blocks(
                model, image, tmp_path / name, settings=_settings(), device="cpu", client=client
            )
            assert result.written == 9
            got = zarr.open_group(str(tmp_path / name), mode="r")["labels"][...]
            np.testing.assert_array_equal(got, zarr.open_group(str(ref))["labels"][...])


def test_cli_zarr_in_and_out(tmp_path, tiny_model_file, tiny_unet, image, capsys):
    src = tmp_path / "big.zarr"
    arr = zarr.open_array(str(src), mode="w", shape=image.shape, chunks=(64, 64), dtype="u1")
    arr[...] = image
    out = tmp_path / "labels.zarr"
    args = ["predict", str(src), "-m", str(tiny_model_file), "--out", str(out)]
    args += ["--tile-size", str(TILE), "--block-size", "64", "--device", "cpu"]
    assert main(args) == 0
    ref = predict(tiny_unet, image, tile_size=TILE, device="cpu")
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels"][...], ref.labels)
    assert "9 block(s) written" in capsys.readouterr().out
    assert main(args) == 0  # a finished store of the same run: nothing to redo
    assert "0 block(s) written, 9 already done" in capsys.readouterr().out
    assert main([*args[:-6], "--tile-size", "64", "--block-size", "64"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args[:-6], "--tile-size", "64", "--block-size", "64", "--overwrite"]) == 0


def test_cli_tiff_to_zarr_and_errors(tmp_path, tiny_model_file, tiny_unet, image, capsys):
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, image, tile=(32, 32))
    out = tmp_path / "labels.zarr"
    base = ["-m", str(tiny_model_file), "--tile-size", str(TILE), "--device", "cpu", "-q"]
    assert main(["predict", str(tif), "--out", str(out), "--block-size", "100", *base]) == 0
    ref = predict(tiny_unet, image, tile_size=TILE, device="cpu")
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels"][...], ref.labels)
    capsys.readouterr()
    zin = tmp_path / "in.zarr"
    zarr.open_array(str(zin), mode="w", shape=(40, 40), dtype="u1")[...] = 1
    assert main(["predict", str(zin), "--out", str(tmp_path / "x"), *base]) == 2
    assert "NAME.zarr" in capsys.readouterr().err
    assert main(["predict", str(zin), "--out", str(tmp_path / "y.zarr"), "--instances", *base]) == 2
    assert "--instances" in capsys.readouterr().err


def test_cli_workers_processes_equal_single_process(tmp_path, tiny_model_file, image):
    """--workers 2: a LocalCluster of 2 processes, each loading the model file (~5 s)."""
    pytest.importorskip("distributed")
    src = tmp_path / "big.zarr"
    zarr.open_array(str(src), mode="w", shape=image.shape, chunks=(64, 64), dtype="u1")[...] = image
    base = ["-m", str(tiny_model_file), "--tile-size", str(TILE), "--block-size", "64", "-q"]
    base += ["--device", "cpu"]
    assert main(["predict", str(src), "--out", str(tmp_path / "one.zarr"), *base]) == 0
    two = tmp_path / "two.zarr"
    assert main(["predict", str(src), "--out", str(two), "--workers", "2", *base]) == 0
    np.testing.assert_array_equal(
        zarr.open_group(str(two))["labels"][...],
        zarr.open_group(str(tmp_path / "one.zarr"))["labels"][...],
    )
