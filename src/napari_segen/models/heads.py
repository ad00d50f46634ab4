"""Changing a segmentation model's classes: rename them, or replace its final layer.

Fine-tuning a model on classes it was not made for keeps everything it learned
(the encoder and decoder) and gives it a new, freshly initialised last layer
(the "head": one output channel per class). Same number of classes, other
names: only the names change, the weights stay. Which layer is the head is
known per architecture (:data:`HEADS`); an architecture without one (a pix2pix
generator) cannot change its classes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import nn

from .model_file import DEFAULT_COLORS, LoadedModel, ModelSpec

#: The final layer of each segmentation architecture: a dotted path to a ``Conv2d``.
HEADS = {"unet": "head", "fcn_resnet50": "net.classifier.4"}


def class_change(old: Sequence[str], new: Sequence[str]) -> str:
    """``"same"``, ``"rename"`` (same count, other names) or ``"new head"`` (another count)."""
    if list(old) == list(new):
        return "same"
    return "rename" if len(old) == len(new) else "new head"


def check_segmentation_model(model: LoadedModel | ModelSpec, what: str = "the start model") -> None:
    """ValueError (one line) unless ``model`` is a segmentation model whose classes can change."""
    spec = model.spec if isinstance(model, LoadedModel) else model
    name = model.name if isinstance(model, LoadedModel) else spec.architecture
    if spec.task != "segmentation" or spec.architecture not in HEADS:
        kind = "an image generator (pix2pix)" if spec.task == "synthesis" else spec.architecture
        raise ValueError(
            f"{what} {name} is {kind}, not a segmentation model (U-Net or FCN); "
            "fine-tune a segmentation model file or train from scratch"
        )


def with_classes(
    model: LoadedModel, class_names: Sequence[str], seed: int | None = 0
) -> LoadedModel:
    """A copy of ``model`` for ``class_names`` (the caller's model is left as it was).

    Same names: the model itself. Same count: the names change, the weights
    stay. Another count: the final layer is replaced by a new one (PyTorch's
    default initialisation, seeded by ``seed``) and everything before it is
    kept. The spec's class names, colours and ``num_classes`` follow, and its
    provenance records ``classes_changed_from`` (the old names).

    Raises:
        ValueError: for a model that is not a U-Net or FCN segmentation model,
            or for fewer than two class names.
    """
    check_segmentation_model(model)
    names = [str(n) for n in class_names]
    if len(names) < 2:
        raise ValueError(
            f"a segmentation model needs at least 2 classes (background first), got {names}"
        )
    old = list(model.spec.class_names)
    change = class_change(old, names)
    if change == "same":
        return model
    spec = ModelSpec(**copy.deepcopy(asdict(model.spec)))
    spec.class_names = names
    spec.provenance = {**spec.provenance, "classes_changed_from": old}
    if change == "rename":
        return LoadedModel(model.module, spec, model.path)
    module = copy.deepcopy(model.module)
    path = HEADS[spec.architecture]
    parent_path, _, attr = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    head = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
    if not isinstance(head, nn.Conv2d):  # pragma: no cover - a changed architecture
        raise ValueError(f"{spec.architecture}: {path} is not the final convolution")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        new_head = nn.Conv2d(
            head.in_channels, len(names), head.kernel_size, bias=head.bias is not None
        )
    new_head = new_head.to(device=head.weight.device, dtype=head.weight.dtype)
    if attr.isdigit():
        parent[int(attr)] = new_head
    else:
        setattr(parent, attr, new_head)
    spec.arch_kwargs = {**spec.arch_kwargs, "num_classes": len(names)}
    kept = model.spec.class_colors[: len(names)]
    spec.class_colors = kept + [
        DEFAULT_COLORS[i % len(DEFAULT_COLORS)] if i else None for i in range(len(kept), len(names))
    ]
    return LoadedModel(module.train(model.module.training), spec, model.path)
