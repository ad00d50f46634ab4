"""Training: the shared run kernel and checkpoints, the segmentation trainer, distributed entry.

No Qt, no napari. ``evaluate_model`` is re-exported from :mod:`napari_segen.metrics.evaluate`.
"""

from .checkpoint import CheckpointError
from .run import TrainingRun
from .trainer import (
    TrainConfig,
    TrainEvent,
    TrainResult,
    evaluate_model,
    new_unet_spec,
    train_segmentation,
)

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "TrainingRun",
    "evaluate_model",
    "new_unet_spec",
    "train_segmentation",
]
