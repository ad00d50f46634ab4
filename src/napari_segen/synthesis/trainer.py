"""The pix2pix trainer: a generator of progress events, usable from a GUI worker or the CLI.

Like :func:`napari_segen.training.train_segmentation`, one loop serves every
front end: the napari Synthesize widget runs it in a ``thread_worker`` (cancel =
stop iterating; the last checkpoint stays on disk), the CLI prints its events.
Files, seeds, device, mixed precision, the clock and the finite-loss guard are
the shared :class:`~napari_segen.training.run.TrainingRun`'s; crops come from the
shared :class:`~napari_segen.data.sampler.CropSampler`.

Losses follow Isola et al. (2017): an adversarial term (least squares by
default, or binary cross-entropy) plus ``l1_weight`` (100) times the L1
distance to the real image; both networks use Adam (2e-4, beta1 0.5), with the
learning rate decayed linearly to zero over the last ``decay_fraction`` of the
steps. Training crops are random, flipped and rotated together with their masks.

Options beyond the paper (all off by default; :data:`PRESETS` names four recipes,
``"pix2pix"``, the paper's, ``"texture"``, ``"augment"`` and ``"balanced"``): a generator
with resize-then-
convolve up-sampling and per-layer noise (``upsample``, ``noise``; see
:mod:`napari_segen.models.pix2pix`), a multi-scale discriminator
(``d_scales``) and pix2pixHD's feature-matching loss (``fm_weight``: L1
between the discriminators' intermediate features of real and generated pairs,
no pretrained network needed).

Files written:
  * ``out_path`` (+ ``.json``): the generator as a model file (``task="synthesis"``),
    readable with :func:`napari_segen.models.load_model`;
  * ``<name>.last.safetensors`` (+ ``.json``): generator, discriminator, optimiser
    and random states to resume from (the checkpoint format of
    :mod:`napari_segen.training.checkpoint`; tensors and JSON, nothing pickled);
  * ``<name>_samples/step_000200.png``: grids of mask | real | generated crops.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import LabeledImage, image_channels
from ..data.normalize import normalize_image, to_channels_first
from ..data.sampler import CropSampler, seeded_generator
from ..models.model_file import LoadedModel, ModelSpec
from ..models.pix2pix import MAX_SCALES, UPSAMPLE_MODES, NoiseInjection
from ..models.registry import build_model
from ..training.checkpoint import Checkpoint, check_spec_fits
from ..training.run import StepProgress, TrainingRun, base_provenance
from ..utils.atomic import atomic_path
from ..utils.generators import map_events
from ..utils.jsonsafe import json_safe
from .calibrate import NoiseCalibration, has_noise_maps, iter_calibrate_noise_strength

__all__ = [
    "PRESETS",
    "SynthConfig",
    "SynthEvent",
    "SynthResult",
    "default_samples_dir",
    "train_pix2pix",
]


#: Named recipes: every recipe option each sets (the rest keep their defaults, or the
#: caller's). ``"pix2pix"`` is the paper's (and the defaults); ``"texture"`` is the variant
#: meant to draw texture: resize-then-convolve up-sampling (no checkerboard), per-layer
#: noise in the decoder, two discriminator scales with pix2pixHD's feature matching
#: (weight 10, as there), and an L1 term cut from 100 to 10, because a heavy L1 term
#: pulls every pixel to its conditional median, which is smooth and makes the generator
#: ignore its noise. ``"balanced"`` is "texture" with the L1 term (10) and an SSIM term
#: (1000) on the noise-free drawing, feature matching 50 and mode seeking (0.3), so the
#: drawing holds the structure and the noise the texture; its texture strength is then
#: calibrated on the held-out pairs (see :mod:`napari_segen.synthesis.calibrate`). Its
#: noise maps start at 0.1 (not 0), so the coarser layers' noise is used too. On ISBI
#: (``benchmarks/synth_quality.py``) three such generators (seeds 0-2) beat a flat
#: class-mean painting on both SSIM and a feature distance at their calibrated strength;
#: at strength 1 all lose on SSIM. ``"augment"`` is "texture" with
#: L1 100 on the noise-free drawing, feature matching 50 and mode seeking 0.1: the only
#: recipe whose synthetic pairs made a 4-image U-Net better beyond the seeds' spread
#: (``benchmarks/synth_augmentation.py``, 5 seeds, +0.020 Dice). Its pairs were made at
#: texture strength 1, so it does not calibrate the strength after training.
_TEXTURE: dict[str, Any] = {
    "upsample": "resize", "noise": True, "d_scales": 2, "fm_weight": 10.0,
    "l1_weight": 10.0, "l1_sigma": 0.0, "l1_noise_free": False, "ssim_weight": 0.0,
    "ms_weight": 0.0, "noise_init": 0.0, "calibrate_noise": True,
}  # fmt: skip
PRESETS: dict[str, dict[str, Any]] = {
    "pix2pix": {
        "upsample": "transpose", "noise": False, "d_scales": 1, "fm_weight": 0.0,
        "l1_weight": 100.0, "l1_sigma": 0.0, "l1_noise_free": False, "ssim_weight": 0.0,
        "ms_weight": 0.0, "noise_init": 0.0, "calibrate_noise": True,
    },
    "texture": dict(_TEXTURE),
    "augment": {**_TEXTURE, "fm_weight": 50.0, "l1_weight": 100.0, "l1_noise_free": True,
                "ms_weight": 0.1, "calibrate_noise": False},
    "balanced": {**_TEXTURE, "fm_weight": 50.0, "l1_noise_free": True, "ssim_weight": 1000.0,
                 "ms_weight": 0.3, "noise_init": 0.1},
}  # fmt: skip


@dataclass
class SynthConfig:
    """pix2pix training settings; the defaults are the paper's, sized for a GPU.

    On a CPU use smaller crops and networks (e.g. ``crop_size=128, ngf=32``).
    :meth:`from_preset` starts from a named recipe of :data:`PRESETS`.

    Attributes:
        steps: optimisation steps in total (also when resuming).
        batch_size: crops per step (the paper uses 1).
        crop_size: square training crop edge; a multiple of ``2**depth``.
        ngf: generator width (64 in the paper).
        depth: generator down-sampling steps (None: ``log2(crop_size)``, at most 8).
        ndf: discriminator width (64 in the paper).
        n_layers: discriminator layers (3 = 70x70 patches).
        norm: ``"instance"`` or ``"batch"`` normalisation in both networks.
        dropout: generator dropout (the paper's noise source).
        upsample: generator up-sampling: ``"transpose"`` (the paper's transposed
            convolutions), ``"resize"`` (nearest x2 then 3x3 conv: no checkerboard)
            or ``"bilinear"``.
        noise: per-layer learned-scale noise maps in the generator's decoder.
        d_scales: discriminators on the pair at full, half... size (1: the paper's
            single PatchGAN; 2 or 3 as in pix2pixHD). Their adversarial losses are averaged.
        fm_weight: weight of the feature-matching loss (0: off; pix2pixHD uses 10),
            weighted per layer and scale as in pix2pixHD.
        gan_loss: ``"lsgan"`` (least squares) or ``"bce"`` (the original GAN loss).
        l1_weight: weight of the L1 term (lambda, 100 in the paper).
        l1_noise_free: apply the L1 term to the generator's noise-free drawing (noise
            strength 0, the batch run twice in one doubled batch) instead of the noisy one the
            discriminator judges. The noise-free drawing learns the per-pixel median
            (crisp membranes where they are), and the noise is left to draw texture
            on top of it, unpenalised by L1. Needs ``noise``.
        l1_sigma: Gaussian low-pass (sigma in pixels) applied to both images before
            the L1 term. 0 is the paper's per-pixel L1. Above 0 the L1 term holds only
            the coarse picture (where membranes lie, how dark a region is) and leaves
            fine texture to the adversarial and feature-matching losses ("frequency
            separation", Fritsche, Gu & Timofte 2019): a heavy per-pixel L1 pulls
            texture to its smooth conditional median.
        ssim_weight: weight of an SSIM term (``1 - SSIM``, Gaussian window sigma 1.5 as
            in Wang et al. 2004) between the real image and the drawing the L1 term
            sees (the noise-free one with ``l1_noise_free``): L1 plus SSIM is a
            common restoration loss (Zhao et al. 2017) and keeps local contrast
            and structure where L1 alone blurs. 0: off.
        ms_weight: weight of the mode-seeking term (Mao et al. 2019, MSGAN): the
            generator draws each mask twice with different noise and is rewarded for
            images that differ (loss ``1 / (mean |G(m, z1) - G(m, z2)| + 1e-5)``), so
            it cannot learn to cancel its noise. 0: off. Needs ``noise``.
        noise_init: starting scale of every noise map (StyleGAN starts them at 0). In
            a CPU-sized run only the last decoder layer's noise grows from 0, so the
            texture is pixel grain; a start above 0 gives the coarser layers' noise a
            part from the first step. Needs ``noise`` when above 0.
        lr: Adam learning rate of both networks.
        beta1: Adam beta1.
        decay_fraction: final fraction of the steps over which the rate falls linearly to 0.
        out_channels: image channels to generate (None: 3 if any training image is RGB, else 1).
        flips: random flips of crop and mask together.
        rot90: random 90-degree rotations of crop and mask together.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        amp: mixed precision (CUDA only).
        seed: random seed (None: not seeded).
        sample_every: steps between sample grids (0: only at the end).
        checkpoint_every: steps between checkpoints (0: only at the end).
        time_limit_s: stop after this many seconds (a checkpoint is written).
        evaluate: after training, score generated against real held-out images
            (SSIM, PSNR, FID/KID) through ``napari_segen.metrics``.
        calibrate_noise: with ``evaluate``, held-out pairs and a noise generator, choose
            its texture strength on the held-out pairs after training (see
            :func:`~napari_segen.synthesis.calibrate.iter_calibrate_noise_strength`) and
            record it in the model file, where generation takes it as its default.
    """

    steps: int = 2000
    batch_size: int = 1
    crop_size: int = 256
    ngf: int = 64
    depth: int | None = None
    ndf: int = 64
    n_layers: int = 3
    norm: str = "instance"
    dropout: float = 0.5
    upsample: str = "transpose"
    noise: bool = False
    d_scales: int = 1
    fm_weight: float = 0.0
    gan_loss: str = "lsgan"
    l1_weight: float = 100.0
    l1_sigma: float = 0.0
    l1_noise_free: bool = False
    ssim_weight: float = 0.0
    ms_weight: float = 0.0
    noise_init: float = 0.0
    lr: float = 2e-4
    beta1: float = 0.5
    decay_fraction: float = 0.5
    out_channels: int | None = None
    flips: bool = True
    rot90: bool = True
    device: str = "auto"
    amp: bool = True
    seed: int | None = 0
    sample_every: int = 200
    checkpoint_every: int = 500
    time_limit_s: float | None = None
    evaluate: bool = True
    calibrate_noise: bool = True

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SynthConfig:
        """The settings of recipe ``name`` (see :data:`PRESETS`), then ``overrides``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def resolved_depth(self) -> int:
        """The generator depth: given, or ``log2(crop_size)`` capped at 8."""
        if self.depth is not None:
            return self.depth
        return max(2, min(8, int(math.log2(self.crop_size))))

    def check(self) -> None:
        """Raise a ValueError naming the first bad setting."""
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        m = 2 ** self.resolved_depth()
        if self.crop_size < m or self.crop_size % m:
            raise ValueError(
                f"the crop size ({self.crop_size}) must be a multiple of 2**depth = {m}; "
                f"use a crop of {max(m, self.crop_size // m * m)} or a smaller depth"
            )
        if self.gan_loss not in ("lsgan", "bce"):
            raise ValueError(f"gan_loss must be 'lsgan' or 'bce', got {self.gan_loss!r}")
        if self.norm not in ("instance", "batch"):
            raise ValueError(f"norm must be 'instance' or 'batch', got {self.norm!r}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(
                f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {self.upsample!r}"
            )
        if not 1 <= self.d_scales <= MAX_SCALES:
            raise ValueError(
                f"the number of discriminator scales must be 1 to {MAX_SCALES}, got {self.d_scales}"
            )
        coarsest, need = self.crop_size // 2 ** (self.d_scales - 1), 4 * 2**self.n_layers
        if coarsest < need:
            raise ValueError(
                f"the coarsest discriminator sees {coarsest} px crops, fewer than the {need} px "
                f"a {self.n_layers}-layer PatchGAN needs; use fewer scales, fewer layers or a "
                "larger crop"
            )
        if not self.fm_weight >= 0 or not self.l1_weight >= 0:
            raise ValueError(
                f"loss weights must be >= 0, got L1 {self.l1_weight}, "
                f"feature matching {self.fm_weight}"
            )
        if not self.ms_weight >= 0 or not self.ssim_weight >= 0:
            raise ValueError(
                f"the mode-seeking and SSIM weights must be >= 0, got {self.ms_weight} "
                f"and {self.ssim_weight}"
            )
        if not 0 <= self.noise_init <= 1:
            raise ValueError(
                f"the noise maps' starting scale must be 0 to 1, got {self.noise_init}"
            )
        for name in ("l1_noise_free", "ms_weight", "noise_init"):
            if getattr(self, name) and not self.noise:
                raise ValueError(
                    f"{name} needs a generator with noise: keep the noise maps on, or turn "
                    f"{name} off too (the pix2pix recipe has no noise terms)"
                )
        if not 0 <= self.l1_sigma <= self.crop_size / 8:
            raise ValueError(
                f"the L1 low-pass sigma must be 0 to crop size / 8 = {self.crop_size / 8:g} px, "
                f"got {self.l1_sigma}"
            )
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay fraction must be in [0, 1], got {self.decay_fraction}")
        if self.out_channels not in (None, 1, 3):
            raise ValueError(f"out_channels must be 1 or 3, got {self.out_channels}")


@dataclass
class SynthEvent(StepProgress):
    """Progress of a pix2pix run.

    ``kind`` is ``"step"`` (after each step, with ``losses``), ``"sample"`` (a
    sample grid was written: ``path``, and the grid as ``image``), ``"saved"``
    (a checkpoint was written to ``path``), ``"calibrating"`` (one texture
    strength scored, ``message`` says which), ``"calibration"`` (the texture
    strength chosen: ``metrics`` is the calibration, ``message`` its summary) or
    ``"quality"`` (``metrics`` of the generated vs real held-out images).
    ``done``/``total`` (= ``step``/``total_steps``) feed a progress bar like any
    :class:`~napari_segen.utils.generators.Progress`.
    """

    kind: str
    step: int
    total_steps: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    image: np.ndarray | None = None
    message: str = ""


@dataclass
class SynthResult:
    """How a run ended.

    Attributes:
        path: the generator's model file (None when nothing was written).
        model: the trained generator, ready for :mod:`napari_segen.synthesis.generate`.
        steps: steps done in total (including those before a resume).
        history: mean losses every ``log_every`` steps.
        quality: held-out quality metrics (empty when not evaluated).
        samples: the sample grid files written.
        stopped_early: True when the time limit ended the run.
        seconds: wall time of this run.
    """

    path: Path | None
    model: LoadedModel
    steps: int
    history: list[dict[str, float]]
    quality: dict[str, Any]
    samples: list[Path]
    stopped_early: bool
    seconds: float


def default_samples_dir(out_path: str | os.PathLike) -> Path:
    """The folder of sample grids beside a generator model file."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + "_samples")


def synthesis_normalization(pairs: Sequence[LabeledImage]) -> dict[str, Any]:
    """A fixed, invertible intensity range for all training images.

    8-bit images use 0..255; others the pooled 0.1-99.9 percentiles. The
    images' dtype is recorded so generated images can be returned in it.
    """
    dtypes = {np.dtype(p.image.dtype) for p in pairs}
    dtype = np.result_type(*dtypes) if dtypes else np.dtype(np.uint8)
    if dtype == np.uint8:
        lo, hi = 0.0, 255.0
    else:
        sample = np.concatenate(
            [
                np.asarray(p.image, np.float64).ravel()[:: max(1, p.image.size // 200_000)]
                for p in pairs
            ]
        )
        lo, hi = (float(v) for v in np.percentile(sample, [0.1, 99.9]))
        if hi <= lo:
            hi = lo + 1.0
    return {"mode": "range", "min": lo, "max": hi, "output_dtype": str(np.dtype(dtype))}


def image_to_tensor(
    image: np.ndarray, channels: int, norm: dict[str, Any], rgb: bool | None = None
) -> torch.Tensor:
    """A raw image -> ``(C, H, W)`` float tensor in [-1, 1] as the generator sees images."""
    chw = to_channels_first(image, channels, rgb=rgb)
    chw = normalize_image(chw, norm)
    return torch.from_numpy(np.ascontiguousarray(chw * 2 - 1)).clamp_(-1, 1)


def train_pix2pix(
    pairs: Sequence[LabeledImage],
    out_path: str | os.PathLike | None,
    *,
    config: SynthConfig | None = None,
    val_pairs: Sequence[LabeledImage] = (),
    class_names: Sequence[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    samples_dir: str | os.PathLike | None = None,
    provenance: dict[str, Any] | None = None,
    log_every: int = 50,
) -> Generator[SynthEvent, None, SynthResult]:
    """Train a pix2pix generator on image/mask pairs, yielding :class:`SynthEvent`s.

    A loss that becomes NaN or infinite stops the run with a ValueError; the
    files written before stay as they were.

    Args:
        pairs: training images with their class-index masks (any source: folders,
            layers...). Unannotated pixels (negative) are fed as "no class".
        out_path: ``.safetensors`` file for the generator (None: nothing written).
        config: training settings.
        val_pairs: held-out pairs for samples and the final quality readout
            (empty: samples come from the training pairs and no quality is measured).
        class_names: one name per class (default: from the highest class in the masks).
        resume: continue from ``<name>.last.safetensors`` up to ``config.steps``.
        overwrite: allow replacing an existing ``out_path`` and its checkpoint
            (resuming always may).
        samples_dir: where sample grids go (default: ``<name>_samples`` beside ``out_path``).
        provenance: extra facts recorded in the model file.
        log_every: steps per entry of the loss history.
    """
    cfg = config or SynthConfig()
    cfg.check()
    if not pairs:
        raise ValueError("no training pairs: give at least one image with its mask")
    run = TrainingRun(
        out_path, resume=resume, overwrite=overwrite, device=cfg.device, amp=cfg.amp,
        seed=cfg.seed, time_limit_s=cfg.time_limit_s,
    )  # fmt: skip
    ckpt = run.checkpoint()
    spec, disc_kwargs = _describe_networks(pairs, cfg, class_names, ckpt)
    gen, disc, parts = _networks(run, cfg, spec, disc_kwargs)
    ts: dict[str, Any] = {"step": 0, "runs": []}
    if ckpt is not None:
        ckpt.restore(**parts)
        ts.update(ckpt.train_state)
    step, log = int(ts["step"]), _LossLog.from_json(ts, log_every)
    sampler = _crop_sampler(pairs, spec, cfg)
    previews = _Previews.of(
        _crop_sampler(val_pairs, spec, cfg) if val_pairs else sampler, spec.num_classes,
        samples_dir if samples_dir is not None or run.out is None else default_samples_dir(run.out),
    )  # fmt: skip
    names = [p.name for p in pairs], [p.name for p in val_pairs]
    extra = {"method": _method(spec, disc_kwargs, cfg), "discriminator": disc_kwargs}
    prov = {**extra, **(provenance or {})}
    started_from = "resumed" if ckpt is not None else "scratch"

    def save() -> SynthEvent | None:
        runs = list(ts["runs"]) + [{"started_from": started_from, "until_step": step}]
        spec.provenance = base_provenance(asdict(cfg), *names, started_from, prov)
        spec.provenance.update(steps=step, runs=runs, final_losses=log.last)
        if run.save_model(gen, spec, step) is None:
            return None
        state = {"step": step, "runs": runs, "disc_kwargs": disc_kwargs, "config": asdict(cfg)}
        state.update(log.to_json())
        run.save_checkpoint(step, spec=spec, **parts, train_state=state)
        return SynthEvent(
            "saved", step, cfg.steps, path=str(run.out), message=f"checkpoint at step {step}"
        )

    gen.train()
    disc.train()
    stopped_early = False
    if step == 0 and cfg.sample_every:
        yield previews.event(gen, step, cfg.steps, run.device)
    while step < cfg.steps:
        real, mask = run.to_device(*sampler.batch(cfg.batch_size, seeded_generator(cfg.seed, step)))
        losses = _gan_step(run, cfg, gen, disc, parts, real, mask, _lr_at(cfg, step))
        step += 1
        for k, v in losses.items():
            run.check_finite(v, step, f"{k} loss")
        log.add(losses, step, final=step == cfg.steps)
        yield SynthEvent("step", step, cfg.steps, losses)
        out_of_time = run.out_of_time()
        stopped_early = out_of_time and step < cfg.steps
        last = step == cfg.steps or out_of_time
        if last or (cfg.sample_every and step % cfg.sample_every == 0):
            yield previews.event(gen, step, cfg.steps, run.device)
        if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            ev = save()
            if ev is not None:
                yield ev
        if out_of_time:
            break

    gen.eval()
    model = LoadedModel(gen, spec, run.out)
    quality: dict[str, Any] = {}
    if cfg.evaluate and val_pairs:
        if cfg.calibrate_noise and has_noise_maps(model):
            yield from _calibrate_noise(run, model, pairs, val_pairs, step, cfg.steps)
        quality = yield from _held_out_quality(run, model, val_pairs, step, cfg.steps)
    return SynthResult(
        run.out, model, step, log.history, quality, previews.written, stopped_early, run.elapsed
    )


def _networks(
    run: TrainingRun, cfg: SynthConfig, spec: ModelSpec, disc_kwargs: dict[str, Any]
) -> tuple[nn.Module, nn.Module, dict[str, dict[str, Any]]]:
    """Generator and discriminator on the run's device, and the parts a checkpoint holds."""
    gen = build_model(spec.architecture, **spec.arch_kwargs)
    disc = build_model(disc_architecture(disc_kwargs), **disc_kwargs)
    if cfg.crop_size % gen.size_multiple:
        raise ValueError(
            f"the crop size ({cfg.crop_size}) must be a multiple of {gen.size_multiple} "
            "for the generator being resumed"
        )
    _init_weights(gen, noise_init=cfg.noise_init)
    _init_weights(disc)
    gen, disc = run.prepare(gen), run.prepare(disc)
    betas = (cfg.beta1, 0.999)
    parts = {
        "modules": {"gen": gen, "disc": disc},
        "optimizers": {
            "opt_g": torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=betas),
            "opt_d": torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=betas),
        },
        "scalers": {"scaler_g": run.grad_scaler(), "scaler_d": run.grad_scaler()},
    }
    return gen, disc, parts


@dataclass
class _LossLog:
    """Mean losses every ``every`` steps (the run's history), carried over a resume."""

    every: int
    history: list[dict[str, float]] = field(default_factory=list)
    running: dict[str, float] = field(default_factory=dict)
    count: int = 0

    @classmethod
    def from_json(cls, state: dict[str, Any], every: int) -> _LossLog:
        return cls(
            every,
            list(state.get("history", [])),
            dict(state.get("running", {})),
            int(state.get("n_running", 0)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"history": self.history, "running": self.running, "n_running": self.count}

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}

    def add(self, losses: dict[str, float], step: int, final: bool = False) -> None:
        for k, v in losses.items():
            self.running[k] = self.running.get(k, 0.0) + v
        self.count += 1
        if step % self.every == 0 or final:
            n = self.count
            self.history.append({"step": step, **{k: v / n for k, v in self.running.items()}})
            self.running, self.count = {}, 0


def _describe_networks(
    pairs: Sequence[LabeledImage],
    cfg: SynthConfig,
    class_names: Sequence[str] | None,
    ckpt: Checkpoint | None,
) -> tuple[ModelSpec, dict[str, Any]]:
    """The generator's description and the discriminator's arguments: saved, or new ones."""
    top = max(int(p.mask.max()) for p in pairs)
    if ckpt is not None:
        spec, disc_kwargs = ckpt.spec, dict(ckpt.train_state.get("disc_kwargs", {}))
        if spec is None or "disc" not in ckpt.modules:
            raise ValueError(f"{ckpt.path} is not a pix2pix checkpoint; start without resume")
        stored = sum(t.numel() for t in ckpt.modules["disc"].values())
        check_spec_fits(disc_architecture(disc_kwargs), disc_kwargs, stored, ckpt.path)
        spec.provenance = {}
        if top >= spec.num_classes:
            raise ValueError(
                f"a training mask holds class {top} but the resumed generator knows "
                f"{spec.num_classes} classes"
            )
        return spec, disc_kwargs
    ncls = max(top + 1, 2, len(class_names or ()))
    if class_names is not None and len(class_names) < ncls:
        raise ValueError(
            f"the masks hold class {top} but only {len(class_names)} class names were given"
        )
    names = list(class_names or ["background"] + [f"class {i}" for i in range(1, ncls)])
    channels = cfg.out_channels or image_channels(pairs)
    arch_kwargs: dict[str, Any] = dict(
        num_classes=ncls,
        out_channels=channels,
        ngf=cfg.ngf,
        depth=cfg.resolved_depth(),
        norm=cfg.norm,
        dropout=cfg.dropout,
    )
    # The new options are written only when used: a paper generator's file stays
    # the same, and older versions of napari-segen still read it.
    if cfg.upsample != "transpose":
        arch_kwargs["upsample"] = cfg.upsample
    if cfg.noise:
        arch_kwargs["noise"] = True
    spec = ModelSpec(
        architecture="pix2pix_generator",
        arch_kwargs=arch_kwargs,
        in_channels=channels,
        class_names=names,
        normalization=synthesis_normalization(pairs),
        task="synthesis",
    )
    disc_kwargs = dict(
        num_classes=ncls, image_channels=channels, ndf=cfg.ndf, n_layers=cfg.n_layers,
        norm=cfg.norm,
    )  # fmt: skip
    if cfg.d_scales > 1:
        disc_kwargs["num_scales"] = cfg.d_scales
    return spec, disc_kwargs


def disc_architecture(disc_kwargs: dict[str, Any]) -> str:
    """The registered discriminator a checkpoint's arguments describe (older ones: one scale)."""
    return "multiscale_patchgan" if "num_scales" in disc_kwargs else "patchgan"


def _method(spec: ModelSpec, disc_kwargs: dict[str, Any], cfg: SynthConfig) -> str:
    """What was trained, in words, for the model file's provenance."""
    kw = spec.arch_kwargs
    extras = []
    if kw.get("upsample", "transpose") != "transpose":
        extras.append(f"{kw['upsample']}-then-convolve up-sampling")
    if kw.get("noise"):
        extras.append("per-layer noise")
    if "num_scales" in disc_kwargs:
        extras.append(f"{disc_kwargs['num_scales']}-scale discriminator")
    if cfg.fm_weight:
        extras.append(f"feature matching x{cfg.fm_weight:g}")
    if cfg.l1_noise_free:
        extras.append("L1 on the noise-free drawing")
    if cfg.l1_sigma:
        extras.append(f"L1 on a sigma-{cfg.l1_sigma:g} low-pass")
    if cfg.ssim_weight:
        extras.append(f"SSIM x{cfg.ssim_weight:g}")
    if cfg.ms_weight:
        extras.append(f"mode seeking x{cfg.ms_weight:g}")
    method = "pix2pix (Isola et al. 2017)"
    return method + (" with " + ", ".join(extras) if extras else "")


def _crop_sampler(pairs: Sequence[LabeledImage], spec: ModelSpec, cfg: SynthConfig) -> CropSampler:
    """Crops in the generator's [-1, 1] range; padding mirrors image and mask alike."""
    norm, channels = spec.normalization, spec.in_channels
    images = [image_to_tensor(p.image, channels, norm, rgb=p.is_rgb) for p in pairs]
    masks = [torch.from_numpy(np.asarray(p.mask, np.int64)) for p in pairs]
    return CropSampler(images, masks, cfg.crop_size, flips=cfg.flips, rot90=cfg.rot90)


@dataclass
class _Previews:
    """Fixed centre crops whose generated images are shown (and written) as the run goes."""

    reals: torch.Tensor
    masks: torch.Tensor
    num_classes: int
    folder: Path | None
    written: list[Path] = field(default_factory=list)

    @classmethod
    def of(
        cls, sampler: CropSampler, num_classes: int, folder: str | os.PathLike | None
    ) -> _Previews:
        reals, masks = sampler.preview(4)
        return cls(reals, masks, num_classes, Path(folder) if folder is not None else None)

    def event(self, gen: nn.Module, step: int, total: int, device: torch.device) -> SynthEvent:
        gen.eval()
        with torch.no_grad():
            # the same noise at every step (and none drawn from the training's generator)
            fake = gen(self.masks.to(device), noise_rng=torch.Generator().manual_seed(0))
            fake = fake.float().cpu()
        gen.train()
        grid = sample_grid(self.masks, self.reals, fake, self.num_classes)
        path = None
        if self.folder is not None:
            path = self.folder / f"step_{step:06d}.png"
            _write_png(path, grid)
            self.written.append(path)
        return SynthEvent("sample", step, total, path=str(path) if path else None, image=grid)


def _calibrate_noise(
    run: TrainingRun,
    model: LoadedModel,
    fit_pairs: Sequence[LabeledImage],
    val_pairs: Sequence[LabeledImage],
    step: int,
    total: int,
) -> Generator[SynthEvent, None, NoiseCalibration]:
    """Choose the texture strength on the held-out pairs; record it in the model file."""
    calibration = yield from map_events(
        iter_calibrate_noise_strength(model, fit_pairs, val_pairs, device=str(run.device)),
        lambda p: SynthEvent("calibrating", step, total, message=p.message),
    )
    record = calibration.to_json()
    yield SynthEvent("calibration", step, total, metrics=record, message=calibration.summary())
    model.spec.provenance["noise_calibration"] = record
    if run.writes:
        run.save_model(model.module, model.spec, step)
    return calibration


def _held_out_quality(
    run: TrainingRun, model: LoadedModel, val_pairs: Sequence[LabeledImage], step: int, total: int
) -> Generator[SynthEvent, None, dict[str, Any]]:
    """Score generated against real held-out images (at the recommended texture strength);
    record it in the model file."""
    from .quality import evaluate_generator

    quality = evaluate_generator(model, val_pairs, device=str(run.device))
    yield SynthEvent("quality", step, total, metrics=quality, message=quality.get("message", ""))
    if run.writes:
        model.spec.provenance["held_out_quality"] = json_safe(quality)
        run.save_model(model.module, model.spec, step)
    return quality


def _lr_at(cfg: SynthConfig, step: int) -> float:
    """The rate at ``step``: constant, then falling linearly to 0 over ``decay_fraction``."""
    decay_start = cfg.steps * (1 - cfg.decay_fraction)
    if step < decay_start or cfg.decay_fraction == 0:
        return cfg.lr
    return cfg.lr * max(0.0, 1 - (step - decay_start) / max(cfg.steps - decay_start, 1))


def _gan_step(
    run: TrainingRun,
    cfg: SynthConfig,
    gen: nn.Module,
    disc: nn.Module,
    parts: dict[str, dict[str, Any]],
    real: torch.Tensor,
    mask: torch.Tensor,
    lr: float,
) -> dict[str, float]:
    """One discriminator and one generator update at rate ``lr``; the losses as numbers."""
    opts, scalers = parts["optimizers"], parts["scalers"]
    for opt in opts.values():
        for group in opt.param_groups:
            group["lr"] = lr
    with run.autocast():
        # one pass over [noisy; second noisy draw; noise-free], as the losses need them
        # (no second forward under DDP)
        b = mask.shape[0]
        strengths = [torch.ones(b)]
        if cfg.ms_weight:
            strengths.append(torch.ones(b))
        if cfg.l1_noise_free:
            strengths.append(torch.zeros(b))
        if len(strengths) > 1:
            drawn = gen(mask.repeat(len(strengths), 1, 1), noise_strength=torch.cat(strengths))
            fake = drawn[:b]
            fake_l1 = drawn[-b:] if cfg.l1_noise_free else fake
            fake_2 = drawn[b : 2 * b] if cfg.ms_weight else None
        else:
            fake = fake_l1 = gen(mask)
            fake_2 = None
        # Discriminator: real pairs -> 1, generated pairs -> 0.
        d_real = _per_scale(disc(mask, real))
        d_fake = _per_scale(disc(mask, fake.detach()))
        loss_d = 0.5 * (
            _gan_loss(cfg.gan_loss, d_real, True) + _gan_loss(cfg.gan_loss, d_fake, False)
        )
    run.optimise(loss_d, opts["opt_d"], scalers["scaler_d"])
    # Generator: fool the discriminator and stay close to the real image.
    for p in disc.parameters():
        p.requires_grad_(False)
    with run.autocast():
        if cfg.fm_weight:
            feats_fake = disc.features(mask, fake)
            with torch.no_grad():  # targets from the updated discriminator
                feats_real = disc.features(mask, real)
            loss_fm = _feature_matching(feats_fake, feats_real)
            loss_gan = _gan_loss(cfg.gan_loss, [f[-1] for f in feats_fake], True)
        else:
            loss_gan = _gan_loss(cfg.gan_loss, _per_scale(disc(mask, fake)), True)
        valid = (mask >= 0)[:, None].to(fake.dtype)
        diff = _low_pass(fake_l1.float() - real.float(), cfg.l1_sigma)
        loss_l1 = (torch.abs(diff) * valid).sum() / (valid.sum() * fake.shape[1]).clamp_min(1)
        loss_g = loss_gan + cfg.l1_weight * loss_l1
        if cfg.fm_weight:
            loss_g = loss_g + cfg.fm_weight * loss_fm
        if cfg.ssim_weight:
            loss_ssim = 1 - _ssim(fake_l1.float() * valid + real.float() * (1 - valid), real)
            loss_g = loss_g + cfg.ssim_weight * loss_ssim
        if fake_2 is not None:
            spread = torch.abs(fake.float() - fake_2.float()).mean()
            loss_g = loss_g + cfg.ms_weight / (spread + 1e-5)
    run.optimise(loss_g, opts["opt_g"], scalers["scaler_g"])
    for p in disc.parameters():
        p.requires_grad_(True)
    losses = {
        "d": float(loss_d.detach()),
        "g_gan": float(loss_gan.detach()),
        "l1": float(loss_l1.detach()),
    }
    if cfg.fm_weight:
        losses["fm"] = float(loss_fm.detach())
    if cfg.ssim_weight:
        losses["ssim"] = float(1 - loss_ssim.detach())
    if fake_2 is not None:
        losses["spread"] = float(spread.detach())
    return losses


def _low_pass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` blurred by a Gaussian of ``sigma`` pixels (reflected edges); 0 returns ``x``."""
    if sigma <= 0:
        return x
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(x, [k, k], [sigma, sigma])


def _ssim(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two batches in [-1, 1] (differentiable; the metric's window)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(fake, real.float(), data_range=2.0)


def _per_scale(logits: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """A discriminator's logits as a list: one entry per scale."""
    return logits if isinstance(logits, list) else [logits]


def _feature_matching(
    fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]
) -> torch.Tensor:
    """pix2pixHD's feature-matching loss: L1 between the discriminators' intermediate
    features of generated and real pairs (the logits excluded), each layer weighted
    ``4 / layers`` and each scale ``1 / scales``."""
    total = torch.zeros((), device=fake[0][0].device)
    for f_scale, r_scale in zip(fake, real, strict=True):
        f_feats, r_feats = f_scale[:-1], r_scale[:-1]
        w = 4.0 / len(f_feats) / len(fake)
        for f, r in zip(f_feats, r_feats, strict=True):
            total = total + w * F.l1_loss(f.float(), r.detach().float())
    return total


def _gan_loss(kind: str, logits: list[torch.Tensor], real: bool) -> torch.Tensor:
    """The adversarial loss, averaged over the discriminator's scales."""
    losses = [_gan_loss_one(kind, x, real) for x in logits]
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


def _gan_loss_one(kind: str, logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "lsgan":
        return F.mse_loss(logits.float(), target.float())
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def _init_weights(module: nn.Module, noise_init: float = 0.0) -> None:
    """Normal(0, 0.02) initialisation, as in the paper; noise-map scales at ``noise_init``."""
    for m in module.modules():
        if isinstance(m, NoiseInjection):
            nn.init.constant_(m.weight, noise_init)
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _to_unit(x: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [-1, 1] -> ``(H, W, 3)`` uint8 for pictures."""
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    a = np.moveaxis(a, 0, -1)
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a


def _mask_picture(mask: np.ndarray, num_classes: int) -> np.ndarray:
    m = np.asarray(mask)
    grey = np.where(m >= 0, m * (255 // max(num_classes - 1, 1)), 0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def sample_grid(
    masks: torch.Tensor, reals: torch.Tensor, fakes: torch.Tensor, num_classes: int
) -> np.ndarray:
    """An RGB uint8 picture: one row per sample, columns mask | real | generated."""
    rows = []
    gap = 4
    for m, r, f in zip(masks, reals, fakes, strict=True):
        cells = [_mask_picture(m.cpu().numpy(), num_classes), _to_unit(r), _to_unit(f)]
        sep = np.full((cells[0].shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([cells[0], sep, cells[1], sep, cells[2]], axis=1))
        rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, overwrite=True) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
