"""pix2pix (Isola et al., 2017): a U-Net generator and a PatchGAN discriminator.

The generator turns a label map (class index per pixel, one-hot encoded inside
the network, any number of classes) into an image (1 or 3 channels, ``tanh``
output in [-1, 1]). As in the paper, noise enters through dropout in the
first decoder blocks, which can stay active at generation time
(:meth:`Pix2PixGenerator.set_stochastic`). The discriminator scores
overlapping patches of the (label map, image) pair; with ``n_layers=3`` each
output scores a 70x70 patch.

Two generator options fix the paper's known failures on textured images
(both off by default, so the paper's network and older model files are
unchanged):

* ``upsample="resize"`` (or ``"bilinear"``): each decoder step doubles the size
  by nearest (bilinear) interpolation and then applies a 3x3 convolution,
  instead of a 4x4 stride-2 transposed convolution, whose uneven kernel overlap
  paints a periodic checkerboard (Odena et al., Distill 2016);
* ``noise=True``: a Gaussian noise map is added after each decoder convolution
  below the output, scaled by a learned per-channel weight (StyleGAN, Karras et
  al. 2019), so texture can vary per sample. The noise comes from the
  ``noise_rng`` :class:`torch.Generator` given to :meth:`Pix2PixGenerator.forward`
  (a seed picks the image), or from torch's global generator.

:class:`MultiScalePatchDiscriminator` runs several PatchGANs on the pair at
full, half and quarter size (pix2pixHD, Wang et al. 2018); every discriminator
also returns its intermediate features for a feature-matching loss.

Both are fully convolutional: the generator accepts any size divisible by
``2**depth`` (:attr:`Pix2PixGenerator.size_multiple`).

A class-conditional mode (class label + noise -> image, Mirza & Osindero 2014)
is not provided: a uniform label map already names one class per image, and
per-image class labels are not part of the training data this package reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


#: Generator up-sampling: learned transposed convolution (the paper's), or resize + 3x3 conv.
UPSAMPLE_MODES = ("transpose", "resize", "bilinear")


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {kind!r}")


class NoiseInjection(nn.Module):
    """``x + weight[c] * n``: one Gaussian noise map per sample, a learned scale per channel.

    The scale starts at zero (as in StyleGAN): the network learns how much
    noise each channel uses. The noise is drawn from :attr:`rng` when it is set
    (on the generator's device, then moved to ``x``'s, so a CPU generator gives
    the same noise on any device), else from torch's global generator.
    :attr:`strength` scales it: a number, or one per sample (a ``(B,)`` tensor);
    the noise is drawn either way, so a seed gives the same maps at any strength.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.rng: torch.Generator | None = None
        self.strength: float | torch.Tensor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self.rng is None:
            noise = torch.randn((b, 1, h, w), device=x.device, dtype=torch.float32)
        else:
            noise = torch.randn((b, 1, h, w), generator=self.rng, device=self.rng.device)
        noise = noise.to(device=x.device, dtype=x.dtype)
        if isinstance(self.strength, torch.Tensor):
            noise = noise * self.strength.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
        elif self.strength != 1.0:
            noise = noise * self.strength
        return x + self.weight.to(x.dtype) * noise


def _up(
    in_ch: int, out_ch: int, mode: str, bias: bool = True, noise: bool = False
) -> list[nn.Module]:
    """A 2x up-sampling convolution, followed by noise injection when asked."""
    if mode == "transpose":
        layers: list[nn.Module] = [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, padding=1, bias=bias)]
    else:
        interp = nn.Upsample(scale_factor=2, mode="nearest" if mode == "resize" else mode)
        layers = [interp, nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)]
    if noise:
        layers.append(NoiseInjection(out_ch))
    return layers


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
        upsample: str = "transpose",
        noise: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        in_ch = outer if in_ch is None else in_ch
        bias = norm != "batch"
        down = [nn.Conv2d(in_ch, inner, 4, stride=2, padding=1, bias=bias)]
        # With the defaults the layers, and so the weight names, are the paper's
        # network's: older generator files load.
        if outermost:
            up = [nn.ReLU(True), *_up(inner * 2, out_ch or outer, upsample), nn.Tanh()]
            layers = down + [submodule] + up
        elif innermost:
            up = [nn.ReLU(True), *_up(inner, outer, upsample, bias, noise), _norm(norm, outer)]
            layers = [nn.LeakyReLU(0.2, True)] + down + up
        else:
            up = [
                nn.ReLU(True),
                *_up(inner * 2, outer, upsample, bias, noise),
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
        upsample: ``"transpose"`` (the paper's 4x4 stride-2 transposed convolutions),
            ``"resize"`` (nearest 2x up-sampling, then a 3x3 convolution: no
            checkerboard) or ``"bilinear"`` (bilinear, then a 3x3 convolution).
        noise: add learned-scale Gaussian noise maps after every decoder convolution
            below the output (StyleGAN-style per-layer noise; see :class:`NoiseInjection`).
    """

    def __init__(
        self,
        num_classes: int = 2,
        out_channels: int = 1,
        ngf: int = 64,
        depth: int = 8,
        norm: str = "instance",
        dropout: float = 0.5,
        upsample: str = "transpose",
        noise: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if out_channels not in (1, 3):
            raise ValueError(f"out_channels must be 1 (grayscale) or 3 (RGB), got {out_channels}")
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        _norm(norm, 1)  # validates the name
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(
                f"upsample must be one of {', '.join(map(repr, UPSAMPLE_MODES))}, got {upsample!r}"
            )
        if not isinstance(noise, bool):
            raise ValueError(f"noise must be true or false, got {noise!r}")
        self.num_classes = num_classes
        self.out_channels = out_channels
        self.depth = depth
        self.upsample = upsample
        self.noise = noise
        widths = [ngf * min(2**i, 8) for i in range(depth)]  # output width of each down conv
        up = dict(upsample=upsample, noise=noise)
        # Build from the bottleneck outwards.
        block: nn.Module = _UBlock(widths[-2], widths[-1], None, None, norm, innermost=True, **up)
        n_inner = depth - 2  # levels between the innermost and the outermost
        for level in range(n_inner, 0, -1):
            # Dropout in the three decoder blocks closest to the bottleneck.
            drop = dropout if level > n_inner - 3 else 0.0
            block = _UBlock(widths[level - 1], widths[level], None, block, norm, dropout=drop, **up)
        self.model = _UBlock(
            widths[0], widths[0], num_classes, block, norm, outermost=True, out_ch=out_channels,
            upsample=upsample,
        )  # fmt: skip

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be divisible by this number."""
        return 2**self.depth

    def set_stochastic(self, enabled: bool) -> None:
        """Keep dropout active in eval mode (noise at generation time), or not."""
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.train(enabled or self.training)

    def forward(
        self,
        labels: torch.Tensor,
        noise_rng: torch.Generator | None = None,
        noise_strength: float | torch.Tensor = 1.0,
    ) -> torch.Tensor:
        """Class indices ``(B, H, W)`` or one-hot ``(B, K, H, W)`` -> images ``(B, C, H, W)``.

        ``noise_rng`` draws the noise maps of a ``noise=True`` generator (a seeded
        one gives the same image for the same seed); None draws from torch's
        global generator. ``noise_strength`` scales the noise (1: as trained, 0:
        the generator's noise-free drawing), one number or one per sample. A
        generator without noise ignores both.
        """
        x = one_hot_labels(labels, self.num_classes, _channels_last_on_cuda(self, labels))
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(
                f"label maps of size {tuple(x.shape[-2:])} must be divisible by {m} "
                f"(2**depth); pad them (synthesis.generate pads automatically)"
            )
        plain = isinstance(noise_strength, (int, float)) and noise_strength == 1.0
        if not self.noise or (noise_rng is None and plain):
            return self.model(x)
        injections = [m for m in self.modules() if isinstance(m, NoiseInjection)]
        for inj in injections:
            inj.rng, inj.strength = noise_rng, noise_strength
        try:
            return self.model(x)
        finally:
            for inj in injections:
                inj.rng, inj.strength = None, 1.0


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

    def _input(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        channels_last = _channels_last_on_cuda(self, labels)
        x = one_hot_labels(labels, self.num_classes, channels_last).to(image.dtype)
        return torch.cat([x, image], 1)

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Patch logits ``(B, 1, h, w)`` for label maps (indices or one-hot) and images."""
        return self.model(self._input(labels, image))

    def features(self, labels: torch.Tensor, image: torch.Tensor) -> list[list[torch.Tensor]]:
        """``[[f_1, ..., f_n, logits]]``: the activations after each LeakyReLU, then the logits.

        One list per scale (here one), as :meth:`MultiScalePatchDiscriminator.features`
        gives, for a feature-matching loss; the logits equal :meth:`forward`'s.
        """
        x, feats = self._input(labels, image), []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return [feats + [x]]


#: Most discriminator scales (each halves the input once more).
MAX_SCALES = 4


class MultiScalePatchDiscriminator(nn.Module):
    """PatchGANs on the (label map, image) pair at full, half, quarter... size (pix2pixHD).

    Discriminator ``i`` sees the pair down-sampled ``i`` times by 3x3 average
    pooling with stride 2 (the one-hot label map is pooled with the image, so it
    becomes soft at class borders), so the coarser ones judge larger structures
    with the same patch size.

    Args:
        num_scales: number of discriminators (2 to :data:`MAX_SCALES`).
        **kwargs: :class:`PatchDiscriminator`'s arguments, the same for each scale.
    """

    def __init__(self, num_scales: int = 2, **kwargs) -> None:
        super().__init__()
        if not isinstance(num_scales, int) or not 2 <= num_scales <= MAX_SCALES:
            raise ValueError(
                f"num_scales must be a whole number from 2 to {MAX_SCALES}, got {num_scales!r} "
                "(one scale is the plain PatchGAN)"
            )
        self.num_classes = kwargs.get("num_classes", 2)
        self.scales = nn.ModuleList(PatchDiscriminator(**kwargs) for _ in range(num_scales))

    @property
    def receptive_field(self) -> int:
        """Edge in input pixels of the patch each logit of the coarsest scale sees (about)."""
        return self.scales[0].receptive_field * 2 ** (len(self.scales) - 1)

    def _pyramid(
        self, labels: torch.Tensor, image: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (one-hot label map, image) pair at each scale, finest first."""
        x = one_hot_labels(labels, self.num_classes, _channels_last_on_cuda(self, labels))
        levels = [(x.to(image.dtype), image)]
        for _ in range(len(self.scales) - 1):
            x, image = (
                F.avg_pool2d(t, 3, stride=2, padding=1, count_include_pad=False) for t in levels[-1]
            )
            levels.append((x, image))
        return levels

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> list[torch.Tensor]:
        """Patch logits of each scale, finest first."""
        pyramid = self._pyramid(labels, image)
        return [d(x, img) for d, (x, img) in zip(self.scales, pyramid, strict=True)]

    def features(self, labels: torch.Tensor, image: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per scale, finest first: the intermediate features, then the logits."""
        pyramid = self._pyramid(labels, image)
        return [d.features(x, img)[0] for d, (x, img) in zip(self.scales, pyramid, strict=True)]


@register_model("pix2pix_generator")
def pix2pix_generator(**kwargs) -> Pix2PixGenerator:
    """Build a :class:`Pix2PixGenerator`; see its docstring for the arguments."""
    return Pix2PixGenerator(**kwargs)


@register_model("patchgan")
def patchgan(**kwargs) -> PatchDiscriminator:
    """Build a :class:`PatchDiscriminator`; see its docstring for the arguments."""
    return PatchDiscriminator(**kwargs)


@register_model("multiscale_patchgan")
def multiscale_patchgan(**kwargs) -> MultiScalePatchDiscriminator:
    """Build a :class:`MultiScalePatchDiscriminator`; see its docstring for the arguments."""
    return MultiScalePatchDiscriminator(**kwargs)
