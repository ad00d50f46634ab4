"""Training: the shared run kernel and checkpoints, the segmentation trainer, distributed entry.

No Qt, no napari. Scoring a trained model is :func:`napari_segen.metrics.evaluate.evaluate_model`.
"""

from .checkpoint import CheckpointError
from .run import TrainingRun
from .trainer import (
    TrainConfig,
    TrainEvent,
    TrainResult,
    new_unet_spec,
    train_segmentation,
)

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "TrainingRun",
    "new_unet_spec",
    "train_segmentation",
]
