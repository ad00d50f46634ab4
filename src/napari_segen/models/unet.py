"""The U-Net of Ronneberger et al. (2015), with padded convolutions.

Padded ("same") convolutions keep the output the size of the input, which
makes tiling simple; inputs must be divisible by ``2**depth`` (the inference
code pads for that).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model


def _double_conv(in_ch: int, out_ch: int, norm: str, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(2):
        layers.append(
            nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=norm == "none")
        )
        if norm == "batch":
            layers.append(nn.BatchNorm2d(out_ch))
        elif norm == "instance":
            layers.append(nn.InstanceNorm2d(out_ch, affine=True))
        layers.append(nn.ReLU(inplace=True))
        if dropout and i == 0:
            layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net: an encoder of ``depth`` down-sampling steps, a mirrored decoder, skip connections.

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        num_classes: number of output classes (logits channels).
        depth: number of 2x down-sampling steps (the original has 4).
        base_channels: feature channels at full resolution (the original has 64);
            doubled at each step down.
        norm: ``"batch"``, ``"instance"`` or ``"none"``.
        dropout: dropout in the bottleneck.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        base_channels: int = 64,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")
        self.depth = depth
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        prev = in_channels
        for ch in chans[:-1]:
            self.encoders.append(_double_conv(prev, ch, norm))
            prev = ch
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(chans[-2], chans[-1], norm, dropout)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            self.ups.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2))
            self.decoders.append(_double_conv(chans[i] * 2, chans[i], norm))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be divisible by this number."""
        return 2**self.depth

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features, full resolution first, bottleneck last."""
        feats = []
        for enc in self.encoders:
            x = enc(x)
            feats.append(x)
            x = self.pool(x)
        feats.append(self.bottleneck(x))
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        x = feats[-1]
        for up, dec, skip in zip(self.ups, self.decoders, reversed(feats[:-1]), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


@register_model("unet")
def unet(**kwargs) -> UNet:
    """Build a :class:`UNet`; see its docstring for the arguments."""
    return UNet(**kwargs)
