"""Image and mask reading, dataset sources and augmentation (no Qt, no napari)."""

from .files import list_images
from .image_io import (
    IMAGE_SUFFIXES,
    ImageReadError,
    map_mask_values,
    parse_value_map,
    read_image,
    read_mask,
    write_labels,
)
from .normalize import normalize_image, to_channels_first

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "list_images",
    "map_mask_values",
    "normalize_image",
    "parse_value_map",
    "read_image",
    "read_mask",
    "to_channels_first",
    "write_labels",
]
