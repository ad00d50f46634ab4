"""The pix2pix networks: shapes, one-hot encoding, any class count, gray and RGB."""

from __future__ import annotations

import pytest
import torch

from napari_segen.models import build_model, list_models
from napari_segen.models.pix2pix import PatchDiscriminator, Pix2PixGenerator, one_hot_labels

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered():
    assert {"pix2pix_generator", "patchgan", "multiscale_patchgan"} <= set(list_models())


def test_one_hot_any_class_count_and_unannotated():
    labels = torch.tensor([[[0, 1], [4, -100]]])
    oh = one_hot_labels(labels, 5)
    assert oh.shape == (1, 5, 2, 2)
    assert oh[0, :, 0, 0].tolist() == [1, 0, 0, 0, 0]
    assert oh[0, 4, 1, 0] == 1
    assert oh[0, :, 1, 1].sum() == 0  # unannotated: no class
    with pytest.raises(ValueError, match="holds class 5"):
        one_hot_labels(torch.tensor([[[5]]]), 5)
    assert one_hot_labels(oh, 5) is oh


@pytest.mark.parametrize(("classes", "channels"), [(2, 1), (3, 3), (7, 1)])
def test_generator_shapes_and_range(classes, channels):
    torch.manual_seed(0)
    g = build_model("pix2pix_generator", num_classes=classes, out_channels=channels, ngf=4, depth=4)
    labels = torch.randint(0, classes, (2, 32, 48))
    out = g(labels)
    assert out.shape == (2, channels, 32, 48)
    assert out.min() >= -1 and out.max() <= 1
    # one-hot input gives the same result as indices
    g.eval()
    assert torch.allclose(g(labels), g(one_hot_labels(labels, classes)))


def test_generator_rejects_bad_sizes_and_arguments():
    g = Pix2PixGenerator(num_classes=2, ngf=4, depth=4)
    with pytest.raises(ValueError, match="divisible by 16"):
        g(torch.zeros((1, 20, 32), dtype=torch.long))
    with pytest.raises(ValueError, match="out_channels"):
        Pix2PixGenerator(out_channels=2)
    with pytest.raises(ValueError, match="norm"):
        build_model("pix2pix_generator", norm="group")


def test_paper_generator_size():
    # The paper's 256x256 U-Net generator (ngf 64, 8 levels) has 54.4 M parameters.
    g = Pix2PixGenerator(num_classes=3, out_channels=3)
    n = sum(p.numel() for p in g.parameters())
    assert 54.0e6 < n < 54.7e6


def test_dropout_noise_switch():
    torch.manual_seed(0)
    g = Pix2PixGenerator(num_classes=2, ngf=4, depth=5, dropout=0.5).eval()
    labels = torch.randint(0, 2, (1, 32, 32))
    with torch.no_grad():
        a, b = g(labels), g(labels)
        assert torch.equal(a, b)  # deterministic in eval mode
        g.set_stochastic(True)
        c, d = g(labels), g(labels)
        g.set_stochastic(False)
        e = g(labels)
    assert not torch.equal(c, d)
    assert torch.equal(a, e)
    assert not g.training


@pytest.mark.parametrize(("n_layers", "field"), [(1, 16), (3, 70), (5, 286)])
def test_patchgan_receptive_field(n_layers, field):
    assert PatchDiscriminator(n_layers=n_layers, ndf=4).receptive_field == field


def test_patchgan_outputs_patch_logits():
    d = build_model("patchgan", num_classes=3, image_channels=3, ndf=4, n_layers=3, norm="batch")
    labels = torch.randint(0, 3, (2, 64, 64))
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    out = d(labels, image)
    assert out.shape == (2, 1, 6, 6)
