"""Train a generator on ISBI training slices 00-15 for ``synth_quality.py --calibrate 4``.

Slices 16-19 stay unseen (the calibration slices) and 20-23 are the held-out
test slices. The recipe is a preset with ``--set`` overrides; the defaults are
the CPU-sized settings of the quality runs in docs/benchmarks.md (3000 steps,
crop 128, generator width 16, discriminator width 32, one thread):

    python benchmarks/train_quality_generator.py --preset balanced --set noise_init=0.1 \\
        --seed 0 --out bench_out/ni/balanced_ni0.1_s0.safetensors
    python benchmarks/synth_quality.py --generator bench_out/ni/balanced_ni0.1_s0.safetensors \\
        --preset balanced --noise-strengths 0.9375,0.875,...,0.0625,0 --calibrate 4 --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from _settings import parse_settings  # benchmarks/ is on sys.path when a benchmark runs

REPO = Path(__file__).resolve().parents[1]
ISBI = REPO / "sample_data" / "isbi2012"
VALUE_MAP = {0: 1, 255: 0}  # ISBI masks: membrane = 0 (black) -> class 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="balanced")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a SynthConfig field (repeatable)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slices", type=int, default=16, help="train on slices 00 to N-1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_segen.data.datasets import pairs_from_folders
    from napari_segen.synthesis import SynthConfig, train_pix2pix
    from napari_segen.utils.generators import drive

    train = pairs_from_folders(ISBI / "train/images", ISBI / "train/masks", value_map=VALUE_MAP)
    settings = dict(
        steps=3000, crop_size=128, ngf=16, ndf=32, time_limit_s=4000, evaluate=False,
        seed=args.seed, sample_every=1000, checkpoint_every=0, device="cpu",
    )  # fmt: skip
    cfg = SynthConfig.from_preset(args.preset, **{**settings, **parse_settings(args.set)})
    t0 = time.monotonic()

    def log(ev) -> None:
        if ev.kind == "step" and ev.step % 250 == 0:
            loss = ev.losses["l1"]
            print(f"step {ev.step} l1 {loss:.3f} {time.monotonic() - t0:.0f}s", flush=True)

    names = ["cell interior", "membrane"]
    pairs = train[: args.slices]
    drive(train_pix2pix(pairs, args.out, config=cfg, class_names=names, overwrite=True), log)
    print(f"trained on {pairs[0].name}..{pairs[-1].name} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
