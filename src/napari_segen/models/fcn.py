"""FCN-ResNet50 from ``torchvision.models.segmentation``, adapted to any channels and classes.

No weights are downloaded: ``weights=None`` by default. A user can point to a
local torchvision file (COCO/VOC FCN weights or ImageNet ResNet-50 backbone
weights); they are read with ``torch.load(weights_only=True)``, which never
executes pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .registry import register_model

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class FCN(nn.Module):
    """torchvision's FCN-ResNet50 returning plain logits.

    Grayscale input is repeated to the 3 channels ResNet expects; inputs in
    [0, 1] are standardised with the ImageNet statistics the backbone was
    trained with.
    """

    size_multiple = 8

    def __init__(self, in_channels: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"FCN takes 1 or 3 input channels, got {in_channels}")
        # torchvision is imported on first use, not with the package: it loads torch._dynamo
        # and with it Triton, which must not happen after Mesa's LLVM (see napari_segen._compat).
        from torchvision.models.segmentation import fcn_resnet50

        self.in_channels = in_channels
        self.net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes)
        self.register_buffer(
            "mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return self.net(x)["out"]

    def load_pretrained(self, path: str | os.PathLike) -> list[str]:
        """Load a local torchvision FCN or ResNet-50 weights file; returns the keys left untouched.

        The classifier's last layer is kept when its class count differs.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained weights file not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path} is not a readable torch weights file: {err}") from err
        own = self.net.state_dict()
        if not any(k.startswith("backbone.") for k in state):  # a plain ResNet-50 file
            state = {f"backbone.{k}": v for k, v in state.items()}
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ValueError(f"{path} holds no weights that fit FCN-ResNet50")
        self.net.load_state_dict(usable, strict=False)
        return sorted(set(own) - set(usable))


def find_cached_backbone() -> Path | None:
    """The ImageNet ResNet-50 file in the torch hub cache, if a previous download left it there."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    hits = sorted(cache.glob("resnet50-*.pth")) if cache.is_dir() else []
    return hits[0] if hits else None


@register_model("fcn_resnet50")
def fcn(in_channels: int = 3, num_classes: int = 2) -> FCN:
    """Build an :class:`FCN` (no pretrained weights; see :meth:`FCN.load_pretrained`)."""
    return FCN(in_channels=in_channels, num_classes=num_classes)
