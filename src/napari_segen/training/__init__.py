"""Segmentation training: losses, the trainer loop, distributed entry (no Qt, no napari)."""

from .trainer import (
    TrainConfig,
    TrainEvent,
    TrainResult,
    evaluate_model,
    new_unet_spec,
    train_segmentation,
)

__all__ = [
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "evaluate_model",
    "new_unet_spec",
    "train_segmentation",
]
