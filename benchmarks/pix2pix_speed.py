"""Speed of a pix2pix training step: channels-last one-hot input (old) vs contiguous NCHW (new).

``models.pix2pix.one_hot_labels`` used to return ``F.one_hot(...).permute(0, 3, 1, 2)``:
a channels-last *view*. PyTorch then ran every convolution of the generator
(and the discriminator's first) in the NHWC layout, which on the CPU is much
slower. It now returns contiguous NCHW. Both are timed here in the same run,
in interleaved rounds (shared machines are noisy), as forward+backward of the
generator and the discriminator on one batch:

* **old**: the permuted one-hot tensor, passed in already encoded (float
  ``(B, K, H, W)`` inputs go through unchanged), exactly what the old code made;
* **new**: integer label maps, encoded by the current ``one_hot_labels``.

    python benchmarks/pix2pix_speed.py [--crop 128] [--ngf 32] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from napari_segen.models.pix2pix import PatchDiscriminator, Pix2PixGenerator, one_hot_labels


def old_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """What ``one_hot_labels`` returned before: a channels-last view."""
    onehot = F.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2).float()
    return onehot * (labels >= 0)[:, None].float()


def step(gen, disc, labels, real) -> None:
    """One forward+backward of G and D, as in a pix2pix step (LSGAN + L1)."""
    fake = gen(labels)
    d_fake = disc(labels, fake.detach())
    d_real = disc(labels, real)
    d_loss = 0.5 * ((d_fake**2).mean() + ((d_real - 1) ** 2).mean())
    d_loss.backward()
    g_loss = ((disc(labels, fake) - 1) ** 2).mean() + 100 * (fake - real).abs().mean()
    g_loss.backward()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--ngf", type=int, default=32)
    ap.add_argument("--ndf", type=int, default=32)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed round")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    depth = min(8, int(math.log2(args.crop)))
    gen = Pix2PixGenerator(args.classes, 1, ngf=args.ngf, depth=depth)
    disc = PatchDiscriminator(args.classes, 1, ndf=args.ndf)
    labels = torch.randint(0, args.classes, (args.batch, args.crop, args.crop))
    real = torch.rand(args.batch, 1, args.crop, args.crop) * 2 - 1
    old = old_one_hot(labels, args.classes)
    new = one_hot_labels(labels, args.classes)
    assert torch.equal(old, new) and not old.is_contiguous() and new.is_contiguous()
    inputs = {"old (channels-last view)": old, "new (contiguous NCHW)": labels}
    for x in inputs.values():  # warm-up
        step(gen, disc, x, real)
    times: dict[str, list[float]] = {k: [] for k in inputs}
    for _ in range(args.rounds):
        for name, x in inputs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                gen.zero_grad(set_to_none=True)
                disc.zero_grad(set_to_none=True)
                step(gen, disc, x, real)
            times[name].append((time.perf_counter() - t0) / args.steps)
    print(
        f"pix2pix G (ngf {args.ngf}, depth {depth}) + D (ndf {args.ndf}), crop {args.crop}, "
        f"batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds x {args.steps} steps"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        rounds = ", ".join(f"{v:.3f}" for v in times[name])
        print(f"  {name:26s} median {t:.3f} s/step  (rounds: {rounds})")
    old_t, new_t = med.values()
    print(f"old / new = {old_t / new_t:.2f}x")


if __name__ == "__main__":
    main()
