"""Which axes of an image are stack axes, which are space and whether the last is colour.

The one place that reads an array's shape as an image: prediction, training
pairs, synthesis and the widgets all ask here.
"""

from __future__ import annotations


def spatial_layout(image_shape: tuple[int, ...], rgb: bool | None) -> tuple[tuple[int, ...], bool]:
    """Split a shape into leading (stack) axes and whether the last axis is colour.

    ``(H, W)`` gray, ``(H, W, 3|4)`` colour (unless ``rgb`` is False), ``(Z, H, W)``
    a gray stack, ``(Z, H, W, 3|4)`` a colour stack (when ``rgb`` is not False), and so on.
    """
    ndim = len(image_shape)
    if ndim < 2:
        raise ValueError(f"expected an image with at least 2 dimensions, got shape {image_shape}")
    rgb_now = is_rgb_shape(image_shape, rgb)
    if rgb_now and ndim < 3:
        raise ValueError(f"shape {image_shape} cannot be a colour image")
    spatial_end = ndim - 1 if rgb_now else ndim
    return tuple(image_shape[: spatial_end - 2]), rgb_now


def is_rgb_shape(image_shape: tuple[int, ...], rgb: bool | None = None) -> bool:
    """Whether the last axis is colour: as told, else a last axis of 3 or 4 on a 3D+ shape."""
    if rgb is not None:
        return bool(rgb)
    return len(image_shape) >= 3 and image_shape[-1] in (3, 4)
