"""pix2pix (Isola et al., 2017): a U-Net generator and a PatchGAN discriminator.

The generator turns a label map (class index per pixel, one-hot encoded inside
the network, any number of classes) into an image (1 or 3 channels, ``tanh``
output in [-1, 1]). As in the paper, noise enters only through dropout in the
first decoder blocks, which can stay active at generation time
(:meth:`Pix2PixGenerator.set_stochastic`). The discriminator scores
overlapping patches of the (label map, image) pair; with ``n_layers=3`` each
output scores a 70x70 patch.

Both are fully convolutional: the generator accepts any size divisible by
``2**depth`` (:attr:`Pix2PixGenerator.size_multiple`).

A class-conditional mode (class label + noise -> image, Mirza & Osindero 2014)
is not provided: a uniform label map already names one class per image, and
per-image class labels are not part of the training data this package reads.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def one_hot_labels(
    labels: torch.Tensor, num_classes: int, channels_last: bool = False
) -> torch.Tensor:
    """``(B, H, W)`` integer class indices -> ``(B, K, H, W)`` float one-hot.

    Negative values (unannotated pixels) become all-zero vectors. A float
    ``(B, K, H, W)`` tensor is returned unchanged (it is taken as already encoded).

    The result is contiguous NCHW: ``F.one_hot(...).permute(0, 3, 1, 2)`` would
    give a channels-last view, which sends every following convolution down the
    slower NHWC path on the CPU (forward+backward about 2x slower, see
    ``benchmarks/pix2pix_speed.py``). ``channels_last=True`` asks for the
    channels-last layout instead (what a channels-last model on CUDA wants).
    """
    if labels.is_floating_point():
        if labels.ndim != 4 or labels.shape[1] != num_classes:
            raise ValueError(
                f"expected one-hot label maps of shape (B, {num_classes}, H, W), "
                f"got {tuple(labels.shape)}"
            )
        return labels
    if labels.ndim != 3:
        raise ValueError(f"expected label maps of shape (B, H, W), got {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(
            f"the label map holds class {int(labels.max())} but the generator knows "
            f"{num_classes} classes (0..{num_classes - 1})"
        )
    classes = torch.arange(num_classes, device=labels.device).view(1, num_classes, 1, 1)
    onehot = (labels[:, None] == classes).float()  # negative labels match no class
    if channels_last:
        return onehot.contiguous(memory_format=torch.channels_last)
    return onehot


def _channels_last_on_cuda(module: nn.Module, labels: torch.Tensor) -> bool:
    """Whether ``module`` was put in channels-last layout and runs on CUDA."""
    if not labels.is_cuda:
        return False
    for p in module.parameters():
        if p.ndim == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {kind!r}")


class _UBlock(nn.Module):
    """One level of the U-Net: down conv, the inner levels, up conv, skip concatenation."""

    def __init__(
        self,
        outer: int,
        inner: int,
        in_ch: int | None,
        submodule: nn.Module | None,
        norm: str,
        outermost: bool = False,
        innermost: bool = False,
        dropout: float = 0.0,
        out_ch: int | None = None,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        in_ch = outer if in_ch is None else in_ch
        bias = norm != "batch"
        down = [nn.Conv2d(in_ch, inner, 4, stride=2, padding=1, bias=bias)]
        if outermost:
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner * 2, out_ch or outer, 4, stride=2, padding=1),
                nn.Tanh(),
            ]
            layers = down + [submodule] + up
        elif innermost:
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1, bias=bias),
                _norm(norm, outer),
            ]
            layers = [nn.LeakyReLU(0.2, True)] + down + up
        else:
            up = [
                nn.ReLU(True),
                nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1, bias=bias),
                _norm(norm, outer),
            ]
            if dropout:
                up.append(nn.Dropout(dropout))
            layers = [nn.LeakyReLU(0.2, True)] + down + [_norm(norm, inner)] + [submodule] + up
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class Pix2PixGenerator(nn.Module):
    """The pix2pix U-Net generator: label map -> image in [-1, 1].

    Args:
        num_classes: classes in the label maps (one-hot input channels).
        out_channels: image channels (1 grayscale, 3 RGB).
        ngf: feature channels of the first layer (64 in the paper), doubled per
            level up to ``8 * ngf``.
        depth: number of 2x down-sampling steps (8 in the paper for 256 px
            images); inputs must be divisible by ``2**depth``.
        norm: ``"instance"`` (default: training and generation behave alike),
            ``"batch"`` (the paper's choice) or ``"none"``.
        dropout: dropout in the three decoder blocks nearest the bottleneck
            (the paper's noise source, 0.5); 0 turns it off.
    """

    def __init__(
        self,
        num_classes: int = 2,
        out_channels: int = 1,
        ngf: int = 64,
        depth: int = 8,
        norm: str = "instance",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if out_channels not in (1, 3):
            raise ValueError(f"out_channels must be 1 (grayscale) or 3 (RGB), got {out_channels}")
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        _norm(norm, 1)  # validates the name
        self.num_classes = num_classes
        self.out_channels = out_channels
        self.depth = depth
        widths = [ngf * min(2**i, 8) for i in range(depth)]  # output width of each down conv
        # Build from the bottleneck outwards.
        block: nn.Module = _UBlock(widths[-2], widths[-1], None, None, norm, innermost=True)
        n_inner = depth - 2  # levels between the innermost and the outermost
        for level in range(n_inner, 0, -1):
            # Dropout in the three decoder blocks closest to the bottleneck.
            drop = dropout if level > n_inner - 3 else 0.0
            block = _UBlock(widths[level - 1], widths[level], None, block, norm, dropout=drop)
        self.model = _UBlock(
            widths[0], widths[0], num_classes, block, norm, outermost=True, out_ch=out_channels
        )

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be divisible by this number."""
        return 2**self.depth

    def set_stochastic(self, enabled: bool) -> None:
        """Keep dropout active in eval mode (noise at generation time), or not."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.train(enabled or self.training)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Class indices ``(B, H, W)`` or one-hot ``(B, K, H, W)`` -> images ``(B, C, H, W)``."""
        x = one_hot_labels(labels, self.num_classes, _channels_last_on_cuda(self, labels))
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"label maps of size {tuple(x.shape[-2:])} must be divisible by {m} "
                f"(2**depth); pad them (synthesis.generate pads automatically)"
            )
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """The PatchGAN discriminator on (label map, image) pairs; outputs one logit per patch.

    Args:
        num_classes: classes in the label maps.
        image_channels: image channels (1 or 3).
        ndf: feature channels of the first layer (64 in the paper).
        n_layers: strided layers; 3 gives 70x70 patches, 1 gives 16x16, 5 gives 286x286.
        norm: ``"instance"``, ``"batch"`` or ``"none"``.
    """

    def __init__(
        self,
        num_classes: int = 2,
        image_channels: int = 1,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.num_classes = num_classes
        self.n_layers = n_layers
        bias = norm != "batch"
        layers: list[nn.Module] = [
            nn.Conv2d(num_classes + image_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                _norm(norm, ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    @property
    def receptive_field(self) -> int:
        """Edge in pixels of the patch each output logit sees (70 for ``n_layers=3``)."""
        rf = 1
        # Walk back from the output: final conv (k4 s1), then n_layers convs, then the first.
        strides = [2] + [2 if n < self.n_layers else 1 for n in range(1, self.n_layers + 1)] + [1]
        for s in reversed(strides):
            rf = rf * s + (4 - s)
        return rf

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Patch logits ``(B, 1, h, w)`` for label maps (indices or one-hot) and images."""
        channels_last = _channels_last_on_cuda(self, labels)
        x = one_hot_labels(labels, self.num_classes, channels_last).to(image.dtype)
        return self.model(torch.cat([x, image], 1))


@register_model("pix2pix_generator")
def pix2pix_generator(**kwargs) -> Pix2PixGenerator:
    """Build a :class:`Pix2PixGenerator`; see its docstring for the arguments."""
    return Pix2PixGenerator(**kwargs)


@register_model("patchgan")
def patchgan(**kwargs) -> PatchDiscriminator:
    """Build a :class:`PatchDiscriminator`; see its docstring for the arguments."""
    return PatchDiscriminator(**kwargs)
