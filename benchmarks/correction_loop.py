"""Benchmark: do a user's corrections pay off, and do uncertainty-chosen regions pay off more?

A simulated annotator on ISBI 2012 (CPU):

1. A U-Net is trained briefly on 2 annotated slices (train 00-01): the model a
   user starts from.
2. The user's new images (train 02-07) come from a new acquisition
   (``--shift blur``: Gaussian blur, sigma 2 px; ``--shift none``: as they are).
   The model segments them with test-time augmentation; each is cut into
   128x128 tiles.
3. The annotator reviews a budget of K tiles and makes every pixel there right
   (the ground truth), chosen (a) by the model's uncertainty (mean TTA entropy,
   most uncertain first, at most ``--per-image`` tiles from one slice: the
   "Next region to correct" order), (b) at random, or (c) none: the same
   fine-tune on the old data only (the control).
4. The training pairs are the product's: ``data.corrections.correction_pairs``
   with the reviewed tiles (fixed pixels weight 2, accepted pixels there 1,
   everything outside them ``--untouched``), mixed with the 2 old slices by
   ``with_replay``. Each arm fine-tunes the start model for the same steps with
   the same settings, for each of ``--seeds`` seeds.
5. Held-out membrane Dice on test slices 20-23 (never seen) of the new
   acquisition, and on the original 20-23 (does the model forget?): mean and
   spread.

Also printed: how well the start model's uncertainty detects its own wrong
pixels on the held-out slices (AUROC, 0.5 = chance), with and without TTA.

    python benchmarks/correction_loop.py [--shift blur] [--budget 8] [--seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_segen._sample_data import ISBI_MASK_MAP
from napari_segen.data.corrections import UNTOUCHED_MODES, correction_pairs, with_replay
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


def blurred(image: np.ndarray) -> np.ndarray:
    """The same tissue from a blurrier acquisition (Gaussian, sigma 2 px)."""
    return ndimage.gaussian_filter(image.astype(np.float32), 2.0).astype(np.uint8)


def corrected_pairs(
    pool: list[LabeledImage],
    predictions: list[np.ndarray],
    tiles: list[tuple[int, int, int]],
    untouched: str,
) -> list[LabeledImage]:
    """What the user trains on after reviewing ``tiles`` (``(image, y, x)``): the product's pairs.

    The Labels layer starts as the model's prediction; in each reviewed tile the
    annotator makes every pixel right (the ground truth). ``correction_pairs``
    then weights the pixels they changed, keeps the ones they accepted there,
    and treats the rest by ``untouched``.
    """
    out = []
    for i in sorted({t[0] for t in tiles}):
        p, pred = pool[i], predictions[i]
        labels, reviewed = pred.copy(), np.zeros(pred.shape, bool)
        for _, y, x in (t for t in tiles if t[0] == i):
            sl = (slice(y, y + TILE), slice(x, x + TILE))
            labels[sl], reviewed[sl] = p.mask[sl], True
        out += correction_pairs(
            p.image, labels, pred, reviewed=reviewed, untouched=untouched, name=p.name
        )
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


def choose_round_robin(ranked, budget: int) -> list[tuple[int, int, int]]:
    """The most uncertain tile of each image in turn (images by their best tile), then the
    second of each, ...: the budget spread over every image, the worst regions first."""
    per_image: dict[int, list[tuple[int, int, int]]] = {}
    for _, i, y, x in ranked:  # ranked is sorted, so each list is too
        per_image.setdefault(i, []).append((i, y, x))
    chosen, depth = [], 0
    while len(chosen) < budget and any(depth < len(v) for v in per_image.values()):
        chosen += [v[depth] for v in per_image.values() if depth < len(v)]
        depth += 1
    return chosen[:budget]


def tile_features(model, image: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Each tile's description by the start model's own encoder: the mean of every encoder
    level's features over the tile (what it looks like to the model), by tile corner."""
    from napari_segen.data.normalize import normalize_image, to_channels_first

    chw = normalize_image(
        to_channels_first(image, model.spec.in_channels), model.spec.normalization,
        source_dtype=image.dtype,
    )  # fmt: skip
    with torch.no_grad():
        feats = model.module.eval().encode(torch.from_numpy(np.ascontiguousarray(chw))[None])
    h, w = image.shape[:2]
    out = {}
    for y in range(0, h, TILE):
        for x in range(0, w, TILE):
            parts = []
            for f in feats:
                s = h // f.shape[-2]
                region = f[0, :, y // s : (y + TILE) // s, x // s : (x + TILE) // s]
                parts.append(region.mean((1, 2)))
            out[(y, x)] = torch.cat(parts).numpy()
    return out


def choose_covering(ranked, features, budget: int) -> list[tuple[int, int, int]]:
    """Spread the budget over what the images look like, then pick by uncertainty: k-means
    (k = budget) on the tiles' encoder features, and in each cluster its most uncertain tile.

    At small budgets a few top-uncertainty tiles cover one kind of region; covering
    the kinds of region first is what low-budget active learning recommends
    (Hacohen et al. 2022, "Active learning on a budget").
    """
    from scipy.cluster.vq import kmeans2

    keys = [(i, y, x) for _, i, y, x in ranked]
    x = np.stack([features[k] for k in keys]).astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    _, cluster = kmeans2(x, budget, minit="++", seed=0)
    chosen, taken = [], set()
    for key, c in zip(keys, cluster, strict=True):  # ranked: most uncertain first
        if c not in taken:
            taken.add(c)
            chosen.append(key)
    for key in keys:  # an empty cluster: fill up with the next most uncertain
        if len(chosen) >= budget:
            break
        if key not in chosen:
            chosen.append(key)
    return chosen[:budget]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--budget", type=int, default=8, help="tiles the annotator corrects")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--base-epochs", type=int, default=12)
    ap.add_argument("--tune-epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate of the start model")
    ap.add_argument("--tune-lr", type=float, default=1e-3, help="learning rate of fine-tuning")
    ap.add_argument("--per-image", type=int, default=2, help="most tiles chosen from one image")
    ap.add_argument(
        "--shift",
        choices=("blur", "none"),
        default="blur",
        help="the new images' acquisition: blurrier than the old ones, or the same",
    )
    ap.add_argument(
        "--untouched",
        choices=UNTOUCHED_MODES,
        default="ignore",
        help="pixels outside the reviewed tiles",
    )
    ap.add_argument(
        "--select",
        choices=("top", "round-robin", "cover"),
        default="top",
        help="uncertainty arm: the top tiles (at most --per-image from one image), each "
        "image's best tile in turn, or the most uncertain tile of each of --budget clusters "
        "of tiles that look alike to the model (cover)",
    )
    ap.add_argument(
        "--rank",
        choices=("entropy", "entropy+prior"),
        default="entropy",
        help="tile score: mean TTA entropy, or plus the distance of the tile's predicted "
        "membrane share from the training data's",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    new_kind = blurred if args.shift == "blur" else (lambda image: image)

    def acquired(p: LabeledImage) -> LabeledImage:
        return LabeledImage(new_kind(p.image), p.mask, p.name)

    base_pairs = [pair("train", 0), pair("train", 1)]
    pool = [acquired(pair("train", i)) for i in range(2, 8)]
    test_old = [pair("test", i) for i in (20, 21, 22, 23)]
    test = [acquired(p) for p in test_old]
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
    base_dice, base_old = membrane_dice(base, test), membrane_dice(base, test_old)
    print(
        f"start model (2 slices, {time.monotonic() - t0:.0f}s): held-out Dice {base_dice:.4f} "
        f"on the new acquisition ({args.shift}), {base_old:.4f} on the old one"
    )

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

    # the class balance the model was trained on (membrane share of the old masks)
    prior = float(np.mean([(p.mask == 1).mean() for p in base_pairs]))
    ranked, predictions, features = [], [], {}
    for i, p in enumerate(pool):
        if args.select == "cover":
            features.update({(i, *k): v for k, v in tile_features(base, p.image).items()})
        probs = tta_probabilities(base, p.image)
        predictions.append(probs.argmax(0).astype(np.uint8))
        for r in rank_regions(entropy_map(probs), TILE):
            score = r.score
            if args.rank == "entropy+prior":
                # confident mistakes: the tile's predicted membrane share far from the
                # training data's
                score += abs(float(probs[1, r.y : r.y + TILE, r.x : r.x + TILE].mean()) - prior)
            ranked.append((score, i, r.y, r.x))
    ranked.sort(key=lambda t: -t[0])
    if args.select == "round-robin":
        chosen_unc = choose_round_robin(ranked, args.budget)
    elif args.select == "cover":
        chosen_unc = choose_covering(ranked, features, args.budget)
    else:
        chosen_unc = choose_by_uncertainty(ranked, args.budget, args.per_image)

    def describe_tiles(label: str, tiles: list[tuple[int, int, int]]) -> None:
        """What the annotator fixes in ``tiles``: wrong pixels, and which kind of mistake."""
        pred = np.stack([predictions[i][y : y + TILE, x : x + TILE] for i, y, x in tiles])
        truth = np.stack([pool[i].mask[y : y + TILE, x : x + TILE] for i, y, x in tiles])
        print(
            f"  {label:<22} wrong {(pred != truth).mean():5.1%}"
            f"  membrane {(truth == 1).mean():5.1%}"
            f"  missed membrane {((truth == 1) & (pred != 1)).mean():5.1%}"
            f"  false membrane {((truth != 1) & (pred == 1)).mean():5.1%}"
        )

    all_tiles = [(i, y, x) for _, i, y, x in ranked]
    print("the start model's mistakes in the tiles (mean over the tiles):")
    describe_tiles("all tiles", all_tiles)
    describe_tiles("uncertainty-chosen", chosen_unc)

    results: dict[str, list[float]] = {"uncertainty": [], "random": [], "none": []}
    results_old: dict[str, list[float]] = {k: [] for k in results}
    for seed in range(args.seeds):
        rng = np.random.default_rng(100 + seed)
        chosen_rnd = [all_tiles[j] for j in rng.choice(len(all_tiles), args.budget, replace=False)]
        describe_tiles(f"random, seed {seed}", chosen_rnd)
        arms = {
            "uncertainty": corrected_pairs(pool, predictions, chosen_unc, args.untouched),
            "random": corrected_pairs(pool, predictions, chosen_rnd, args.untouched),
            "none": [],
        }
        for arm, corrected in arms.items():
            # Same steps in every arm: samples per epoch fixed, not scaled with the data.
            cfg = config(args.tune_epochs, seed, 4, args.tune_lr)
            data = with_replay(corrected, base_pairs)
            tuned = drive(train_segmentation(data, [], None, start=base, config=cfg)).model
            d, d_old = membrane_dice(tuned, test), membrane_dice(tuned, test_old)
            results[arm].append(d)
            results_old[arm].append(d_old)
            print(
                f"seed {seed} {arm:<12} Dice {d:.4f} (old acquisition {d_old:.4f})  "
                f"({time.monotonic() - t0:.0f}s)",
                flush=True,
            )

    print(
        f"\nnew acquisition: {args.shift}; budget {args.budget} tiles of {TILE}px, untouched "
        f"{args.untouched}, {args.seeds} seeds; start model {base_dice:.4f} (old {base_old:.4f})"
    )
    print(f"{'arm':<14}{'mean Dice':>10}{'std':>8}{'old acq.':>10}   per seed")
    for arm, v in results.items():
        per_seed = ", ".join(f"{x:.4f}" for x in v)
        old = np.mean(results_old[arm])
        print(f"{arm:<14}{np.mean(v):>10.4f}{np.std(v):>8.4f}{old:>10.4f}   {per_seed}")
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
                    "shift": args.shift,
                    "untouched": args.untouched,
                    "budget": args.budget,
                    "seeds": args.seeds,
                    "start_dice": base_dice,
                    "start_dice_old_acquisition": base_old,
                    "results_old_acquisition": results_old,
                    "auroc_tta": float(np.mean(auroc_tta)),
                    "auroc_one_pass": float(np.mean(auroc_one)),
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
