"""Shared fixtures: small synthetic data and a tiny model, built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "sample_data" / "isbi2012"
ISBI_MASK_MAP = {0: 1, 255: 0}

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """The ISBI 2012 sample shipped in the repo (train/ 00-19, test/ 20-23)."""
    return ISBI


@pytest.fixture(scope="session")
def tiny_unet():
    """An untrained 2-class depth-2 U-Net (a LoadedModel), fast on CPU."""
    from napari_segen.models import ModelSpec, build_model
    from napari_segen.models.model_file import LoadedModel

    torch.manual_seed(0)
    spec = ModelSpec(
        architecture="unet",
        arch_kwargs={"in_channels": 1, "num_classes": 2, "depth": 2, "base_channels": 8},
        in_channels=1,
        class_names=["background", "foreground"],
    )
    module = build_model(spec.architecture, **spec.arch_kwargs).eval()
    return LoadedModel(module, spec)


@pytest.fixture
def tiny_model_file(tmp_path, tiny_unet) -> Path:
    """``tiny_unet`` saved as a model file."""
    from napari_segen.models import save_model

    return save_model(tmp_path / "tiny.safetensors", tiny_unet.module, tiny_unet.spec)


@pytest.fixture
def blobs_image() -> tuple[np.ndarray, np.ndarray]:
    """A 96x80 uint8 image of bright discs on a dark noisy background, and its 0/1 mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :80]
    mask = np.zeros((96, 80), np.int64)
    for cy, cx, r in [(20, 20, 10), (60, 50, 14), (30, 65, 8), (80, 15, 9)]:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1
    image = (40 + 150 * mask + rng.normal(0, 15, mask.shape)).clip(0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture(scope="module")
def one_thread():
    """Run a test's torch work on one thread.

    Tiny convolutions on a shared 2-core CPU run far faster on one thread than on two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
