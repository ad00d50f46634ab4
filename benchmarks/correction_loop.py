"""Benchmark: do corrections chosen by uncertainty teach the model more than random ones?

A simulated annotator on ISBI 2012 (CPU):

1. A U-Net is trained briefly on 2 annotated slices (train 00-01): the model a
   user starts from.
2. It segments a pool of unannotated slices (train 02-07) with test-time
   augmentation; each slice is cut into 128x128 tiles.
3. The annotator corrects a budget of K tiles with the ground truth (inside a
   corrected tile every pixel is right; elsewhere nothing is annotated), chosen
   (a) by the model's uncertainty (mean TTA entropy, most uncertain first, at
   most ``--per-image`` tiles from one slice), (b) at random, or (c) none: the
   same fine-tune on the old data only.
4. Each arm fine-tunes the start model for the same number of steps with the
   same settings, replaying the 2 original slices (corrected tiles are listed
   ``--repeat`` times so they get about as many crops as the replay), for each
   of ``--seeds`` seeds.
5. Held-out membrane Dice on test slices 20-23 (never seen): mean and spread.

Also printed: how well the start model's uncertainty detects its own wrong
pixels on the held-out slices (AUROC, 0.5 = chance), with and without TTA.

    python benchmarks/correction_loop.py [--budget 8] [--seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_segen._sample_data import ISBI_MASK_MAP
from napari_segen.data.datasets import LabeledImage
from napari_segen.data.image_io import read_image, read_mask
from napari_segen.inference import predict
from napari_segen.inference.uncertainty import entropy_map, error_auroc, rank_regions
from napari_segen.metrics.segmentation import SegmentationScores
from napari_segen.training import TrainConfig, new_unet_spec, train_segmentation
from napari_segen.utils.generators import drive

ISBI = Path(__file__).resolve().parents[1] / "sample_data" / "isbi2012"
CLASSES = ["cell interior", "membrane"]
TILE = 128


def pair(split: str, i: int) -> LabeledImage:
    img = read_image(ISBI / split / "images" / f"{i:02d}.png")
    mask = read_mask(ISBI / split / "masks" / f"{i:02d}.png", ISBI_MASK_MAP)
    return LabeledImage(img, mask, f"{split}/{i:02d}")


def membrane_dice(model, pairs: list[LabeledImage]) -> float:
    scores = SegmentationScores(2)
    for p in pairs:
        scores.update(predict(model, p.image, tile_size=512, device="cpu").labels, p.mask)
    return float(scores.dice[1])


def tta_probabilities(model, image: np.ndarray) -> np.ndarray:
    return predict(
        model, image, tile_size=512, device="cpu", return_probabilities=True, tta=True
    ).probabilities


def corrected_pairs(pool: list[LabeledImage], tiles: list[tuple[int, int, int]], repeat: int):
    """Each chosen ``(image, y, x)`` tile as its own fully annotated pair, ``repeat`` times.

    The annotator made every pixel of a corrected tile right; the rest of the
    image was never looked at, so it is not training data. Repeating the tiles
    gives the corrections about as many training crops as the replayed data.
    """
    out = []
    for i, y, x in tiles:
        p = pool[i]
        sl = (slice(y, y + TILE), slice(x, x + TILE))
        out += [LabeledImage(p.image[sl], p.mask[sl], f"{p.name} tile {y},{x}")] * repeat
    return out


def choose_by_uncertainty(ranked, budget: int, per_image: int) -> list[tuple[int, int, int]]:
    """The most uncertain tiles, at most ``per_image`` from any one image (spread the budget)."""
    chosen, count = [], {}
    for _, i, y, x in ranked:
        if count.get(i, 0) < per_image:
            chosen.append((i, y, x))
            count[i] = count.get(i, 0) + 1
        if len(chosen) == budget:
            break
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budget", type=int, default=8, help="tiles the annotator corrects")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--base-epochs", type=int, default=12)
    ap.add_argument("--tune-epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate of the start model")
    ap.add_argument("--tune-lr", type=float, default=5e-4, help="learning rate of fine-tuning")
    ap.add_argument("--per-image", type=int, default=2, help="most tiles chosen from one image")
    ap.add_argument("--repeat", type=int, default=4, help="times each corrected tile is listed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    base_pairs = [pair("train", 0), pair("train", 1)]
    pool = [pair("train", i) for i in range(2, 8)]
    test = [pair("test", i) for i in (20, 21, 22, 23)]
    spec = new_unet_spec(1, CLASSES, depth=3, base_channels=16)

    def config(epochs: int, seed: int, n_images: int, lr: float) -> TrainConfig:
        return TrainConfig(
            epochs=epochs, batch_size=4, crop_size=TILE, samples_per_epoch=16 * n_images,
            lr=lr, patience=None, device="cpu", seed=seed,
        )  # fmt: skip

    base = drive(
        train_segmentation(
            base_pairs, [], None, start=spec, config=config(args.base_epochs, 0, 4, args.lr)
        )
    ).model
    base_dice = membrane_dice(base, test)
    print(f"start model (2 slices, {time.monotonic() - t0:.0f}s): held-out Dice {base_dice:.4f}")

    # How well does uncertainty find the model's mistakes on the held-out slices?
    auroc_tta, auroc_one = [], []
    for p in test:
        probs = tta_probabilities(base, p.image)
        wrong = probs.argmax(0) != p.mask
        auroc_tta.append(error_auroc(entropy_map(probs), wrong))
        one = predict(base, p.image, tile_size=512, device="cpu", return_probabilities=True)
        auroc_one.append(error_auroc(entropy_map(one.probabilities), one.labels != p.mask))
    print(
        f"error AUROC of uncertainty: TTA {np.mean(auroc_tta):.3f}, "
        f"one pass {np.mean(auroc_one):.3f}"
    )

    ranked = []
    for i, p in enumerate(pool):
        u = entropy_map(tta_probabilities(base, p.image))
        ranked += [(r.score, i, r.y, r.x) for r in rank_regions(u, TILE)]
    ranked.sort(key=lambda t: -t[0])
    chosen_unc = choose_by_uncertainty(ranked, args.budget, args.per_image)

    results: dict[str, list[float]] = {"uncertainty": [], "random": [], "none": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        all_tiles = [(i, y, x) for _, i, y, x in ranked]
        chosen_rnd = [all_tiles[j] for j in rng.choice(len(all_tiles), args.budget, replace=False)]
        arms = {
            "uncertainty": corrected_pairs(pool, chosen_unc, args.repeat),
            "random": corrected_pairs(pool, chosen_rnd, args.repeat),
            "none": [],
        }
        for arm, extra in arms.items():
            # Same steps in every arm: samples per epoch fixed, not scaled with the data.
            cfg = config(args.tune_epochs, seed, 4, args.tune_lr)
            run = train_segmentation(base_pairs + extra, [], None, start=base, config=cfg)
            tuned = drive(run).model
            d = membrane_dice(tuned, test)
            results[arm].append(d)
            print(f"seed {seed} {arm:<12} Dice {d:.4f}  ({time.monotonic() - t0:.0f}s)", flush=True)

    print(
        f"\nbudget {args.budget} tiles of {TILE}px, {args.seeds} seeds; start model {base_dice:.4f}"
    )
    print(f"{'arm':<14}{'mean Dice':>10}{'std':>8}   per seed")
    for arm, v in results.items():
        print(f"{arm:<14}{np.mean(v):>10.4f}{np.std(v):>8.4f}   {', '.join(f'{x:.4f}' for x in v)}")
    unc, rnd, none = (np.array(results[k]) for k in ("uncertainty", "random", "none"))
    spread = max(unc.std(), rnd.std(), none.std())
    print(
        f"(a)-(c) {unc.mean() - none.mean():+.4f}, (a)-(b) {unc.mean() - rnd.mean():+.4f}, "
        f"largest spread {spread:.4f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "budget": args.budget,
                    "seeds": args.seeds,
                    "start_dice": base_dice,
                    "auroc_tta": float(np.mean(auroc_tta)),
                    "auroc_one_pass": float(np.mean(auroc_one)),
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
