"""Conventions shared by data, inference, training, metrics and the CLI (no heavy imports)."""

from __future__ import annotations

#: Mask value of pixels nobody annotated: losses and scores skip them (torch's default).
IGNORE_INDEX = -100

#: The default tile edge. Measured with the bundled U-Net (benchmarks/tiling_agreement.py,
#: 2048^2): 512-px tiles with the default halo differ from one whole-image pass on 0.005%
#: of the labels (256 px: 0.12%) and take 0.84x the time of 256-px tiles.
DEFAULT_TILE_SIZE = 512

#: Why synthetic pairs join a training run only when asked (benchmarks/synth_augmentation.py,
#: docs/benchmarks.md "Synthetic pairs as extra training data"); the CLI and widgets say it.
#: The synthetic share of the training crops the benchmark measured a gain at (the cap that
#: the CLI and the widgets suggest).
SUGGESTED_SYNTHETIC_SHARE = 0.33

#: The generator recipe (``synth train --preset``, the Synthesize widget's Recipe) a new run
#: starts from: of the four measured, the only one whose pairs helped a U-Net beyond the
#: seeds' spread (docs/benchmarks.md, "Synthetic pairs as extra training data").
DEFAULT_SYNTH_PRESET = "augment"

SYNTHETIC_MIXING_NOTE = (
    "synthetic pairs are not mixed into training unless you ask: on ISBI (4 real pairs) "
    "pairs from an 'augment'-recipe generator (the default recipe) capped at a third of the "
    "crops gave +0.020 Dice (5 seeds, beyond their spread), the paper's pix2pix -0.019 and "
    "other recipes +0.001 to +0.009; uncapped the same pairs cost 0.047 and pre-training on "
    "them 0.041 (docs/benchmarks.md)"
)
