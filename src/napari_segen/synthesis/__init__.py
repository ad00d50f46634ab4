"""Synthetic training pairs: pix2pix training, mask transforms, generation, export, and the
calibration of a noise generator's texture strength.

No Qt, no napari.
"""

from .calibrate import (
    NoiseCalibration,
    iter_calibrate_noise_strength,
    recommended_noise_strength,
)
from .generate import (
    ExportResult,
    export_pairs,
    generate_image,
    generate_tensor,
    iter_export_pairs,
    iter_generate,
    load_generator,
    seeded_series,
)
from .masks import MaskTransformConfig, iter_random_masks, random_mask_transform
from .trainer import SynthConfig, SynthEvent, SynthResult, train_pix2pix

__all__ = [
    "ExportResult",
    "MaskTransformConfig",
    "NoiseCalibration",
    "SynthConfig",
    "SynthEvent",
    "SynthResult",
    "export_pairs",
    "generate_image",
    "generate_tensor",
    "iter_export_pairs",
    "iter_calibrate_noise_strength",
    "iter_generate",
    "iter_random_masks",
    "load_generator",
    "random_mask_transform",
    "recommended_noise_strength",
    "seeded_series",
    "train_pix2pix",
]
