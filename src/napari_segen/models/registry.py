"""A small registry of segmentation / generator architectures.

Each architecture is a builder ``fn(**kwargs) -> nn.Module`` registered under
a name. Model files store the name and its keyword arguments, so loading a
file only ever calls registered builders (no pickled code).

This module is a leaf: it imports nothing from the package. The architecture
modules (``unet``, ``fcn``, ``pix2pix``) register themselves with
:func:`register_model`, and ``napari_segen.models`` imports them, so any import
of ``napari_segen.models...`` has the built-in architectures registered, and an
error inside one of them surfaces as itself when the package is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers ``fn`` as the builder for architecture ``name``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"architecture {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Names of all registered architectures."""
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with ``kwargs``.

    Raises a ``ValueError`` naming the known architectures when ``name`` is unknown,
    and one naming the bad argument when the builder rejects ``kwargs``.
    """
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown architecture {name!r}; known architectures: {', '.join(sorted(_BUILDERS))}"
        )
    try:
        return _BUILDERS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for architecture {name!r}: {err}") from err
