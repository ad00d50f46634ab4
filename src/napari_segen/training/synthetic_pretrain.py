"""Two-stage training with synthetic pairs: pre-train on them, then fine-tune on the real ones.

Stage 1 trains the run's start model on the synthetic pairs alone (validated
on the real validation pairs) and writes ``<out>.pretrain.safetensors``;
stage 2 fine-tunes that model on the real pairs and writes ``<out>``. Both
stages are the ordinary :func:`~napari_segen.training.train_segmentation`;
:func:`pretrain_then_fine_tune` yields their events (and one
:class:`StageStarted` before each stage), so a CLI progress bar and a GUI
worker follow it alike. No Qt, no napari.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..utils.generators import Progress
from .trainer import TrainConfig, TrainEvent, TrainResult, train_segmentation

if TYPE_CHECKING:
    from .assembly import SegmentationRun

#: Provenance ``stage`` of each stage's model file.
STAGE_PRETRAIN = "synthetic pretrain (1 of 2)"
STAGE_FINE_TUNE = "fine-tune (2 of 2)"


@dataclass
class StageStarted(Progress):
    """A stage of :func:`pretrain_then_fine_tune` begins: ``message`` says which, and where
    its model goes (``path``)."""

    stage: int = 1
    stages: int = 2


def pretrain_path(out: str | os.PathLike) -> Path:
    """Where the first stage of a synthetic pre-training run writes its model."""
    out = Path(out)
    return out.with_name(f"{out.stem}.pretrain{out.suffix or '.safetensors'}")


def pretrain_then_fine_tune(
    run: SegmentationRun,
    out_path: str | os.PathLike,
    *,
    config: TrainConfig | None = None,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
) -> Generator[StageStarted | TrainEvent, None, TrainResult]:
    """Pre-train ``run.start`` on ``run.pretrain`` (synthetic), then fine-tune it on ``run.train``.

    Both output files (:func:`pretrain_path` of ``out_path``, and ``out_path``)
    are checked before stage 1 starts, so nothing is trained that could not be
    written. Stage 2's provenance records ``synthetic.pretrained_model`` and
    ``synthetic.pretrain_best`` (stage 1's best validation Dice); each file's
    ``stage`` says which stage made it.

    Args:
        run: an assembled run with synthetic pairs in ``pretrain`` (``SyntheticData``
            mode ``"pretrain"``).
        out_path: the final (fine-tuned) model file.
        config: training settings, the same for both stages.
        overwrite: allow replacing existing output files.
        provenance: facts recorded in both model files (default: ``run.provenance``).

    Returns:
        Stage 2's result (its ``path`` is ``out_path``).
    """
    from ..models.model_file import load_model
    from ..utils.atomic import plan_outputs

    if not run.pretrain:
        raise ValueError("no synthetic pairs to pre-train on; give a synthetic images folder")
    provenance = dict(run.provenance if provenance is None else provenance)
    first = pretrain_path(out_path)
    plan_outputs(
        [(first, "the synthetic pre-training model"), (out_path, "the model")],
        overwrite=overwrite,
    )
    yield StageStarted(
        0, 0,
        f"stage 1 of 2: pre-training on {len(run.pretrain)} synthetic pair(s) -> {first}",
        str(first), stage=1,
    )  # fmt: skip
    pretrained = yield from train_segmentation(
        run.pretrain, run.val, first, start=run.start, config=config, overwrite=overwrite,
        provenance={**provenance, "stage": STAGE_PRETRAIN}, save_last=False,
    )  # fmt: skip
    # The best model on validation is the one to fine-tune, not the last epoch's.
    start = load_model(pretrained.path) if pretrained.path is not None else pretrained.model
    yield StageStarted(
        0, 0,
        f"stage 2 of 2: fine-tuning the pre-trained model on the real pairs -> {out_path}",
        str(out_path), stage=2,
    )  # fmt: skip
    synthetic = {**provenance.get("synthetic", {}), "pretrained_model": str(first),
                 "pretrain_best": pretrained.best_metrics.get("foreground_dice")}  # fmt: skip
    result = yield from train_segmentation(
        run.train, run.val, out_path, start=start, config=config, overwrite=overwrite,
        provenance={**provenance, "synthetic": synthetic, "stage": STAGE_FINE_TUNE},
    )  # fmt: skip
    return result
