"""A small registry of segmentation / generator architectures.

Each architecture is a builder ``fn(**kwargs) -> nn.Module`` registered under
a name. Model files store the name and its keyword arguments, so loading a
file only ever calls registered builders (no pickled code).
"""

from __future__ import annotations

import contextlib
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
    _ensure_builtin()
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` with ``kwargs``.

    Raises a ``ValueError`` naming the known architectures when ``name`` is unknown,
    and one naming the bad argument when the builder rejects ``kwargs``.
    """
    _ensure_builtin()
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown architecture {name!r}; known architectures: {', '.join(sorted(_BUILDERS))}"
        )
    try:
        return _BUILDERS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for architecture {name!r}: {err}") from err


def _ensure_builtin() -> None:
    # Importing the modules runs their @register_model decorators.
    from . import fcn, unet  # noqa: F401

    with contextlib.suppress(ImportError):  # pix2pix is optional while it is being built
        from . import pix2pix  # noqa: F401
