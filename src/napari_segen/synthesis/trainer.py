"""The pix2pix trainer: a generator of progress events, usable from a GUI worker or the CLI.

Like :func:`napari_segen.training.train_segmentation`, one loop serves every
front end: the napari Synthesize widget runs it in a ``thread_worker`` (cancel =
stop iterating; the last checkpoint stays on disk), the CLI prints its events.

Losses follow Isola et al. (2017): an adversarial term (least squares by
default, or binary cross-entropy) plus ``l1_weight`` (100) times the L1
distance to the real image; both networks use Adam (2e-4, beta1 0.5), with the
learning rate decayed linearly to zero over the last ``decay_fraction`` of the
steps. Training crops are random, flipped and rotated together with their masks.

Files written:
  * ``out_path`` (+ ``.json``): the generator as a model file (``task="synthesis"``),
    readable with :func:`napari_segen.models.load_model`;
  * ``<name>.resume.safetensors``: generator, discriminator, optimiser and
    random state to resume from (tensors only, JSON metadata, nothing pickled);
  * ``<name>_samples/step_000200.png``: grids of mask | real | generated crops.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .. import __version__
from ..data.datasets import LabeledImage
from ..data.normalize import normalize_image, to_channels_first
from ..models.model_file import LoadedModel, ModelSpec, save_model
from ..models.registry import build_model
from ..utils.atomic import atomic_path, check_writable
from ..utils.devices import resolve_device

_RESUME_KEY = "napari_segen_resume"


@dataclass
class SynthConfig:
    """pix2pix training settings; the defaults are the paper's, sized for a GPU.

    On a CPU use smaller crops and networks (e.g. ``crop_size=128, ngf=32``).

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
        gan_loss: ``"lsgan"`` (least squares) or ``"bce"`` (the original GAN loss).
        l1_weight: weight of the L1 term (lambda, 100 in the paper).
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
    gan_loss: str = "lsgan"
    l1_weight: float = 100.0
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
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay fraction must be in [0, 1], got {self.decay_fraction}")
        if self.out_channels not in (None, 1, 3):
            raise ValueError(f"out_channels must be 1 or 3, got {self.out_channels}")


@dataclass
class SynthEvent:
    """Progress of a pix2pix run.

    ``kind`` is ``"step"`` (after each step, with ``losses``), ``"sample"`` (a
    sample grid was written: ``path``, and the grid as ``image``), ``"saved"``
    (a checkpoint was written to ``path``) or ``"quality"`` (``metrics`` of the
    generated vs real held-out images).
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


def resume_state_path(out_path: str | os.PathLike) -> Path:
    """The training-state file written beside a generator model file."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".resume.safetensors")


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


class _PairSampler:
    """Random crops of (image, mask) pairs, flipped and rotated together."""

    def __init__(
        self, pairs: Sequence[LabeledImage], channels: int, norm: dict[str, Any], cfg: SynthConfig
    ) -> None:
        self.cfg = cfg
        self.images = [image_to_tensor(p.image, channels, norm, rgb=p._is_rgb()) for p in pairs]
        self.masks = [torch.from_numpy(np.asarray(p.mask, np.int64)) for p in pairs]
        area = np.array([m.numel() for m in self.masks], float)
        self.weights = torch.from_numpy(area / area.sum())

    def crop(self, i: int, size: int, center: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.images[i], self.masks[i]
        h, w = y.shape
        ph, pw = max(size - h, 0), max(size - w, 0)
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x[None], (0, pw, 0, ph), mode=mode)[0]
            y = F.pad(y[None, None].float(), (0, pw, 0, ph), mode=mode)[0, 0].long()
            h, w = y.shape
        if center:
            top, left = (h - size) // 2, (w - size) // 2
        else:
            top = int(torch.randint(0, h - size + 1, ()))
            left = int(torch.randint(0, w - size + 1, ()))
        return x[:, top : top + size, left : left + size], y[top : top + size, left : left + size]

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        size = self.cfg.crop_size
        for _ in range(n):
            i = int(torch.multinomial(self.weights, 1)) if len(self.images) > 1 else 0
            x, y = self.crop(i, size)
            if self.cfg.flips:
                if torch.rand(()) < 0.5:
                    x, y = x.flip(-1), y.flip(-1)
                if torch.rand(()) < 0.5:
                    x, y = x.flip(-2), y.flip(-2)
            if self.cfg.rot90:
                k = int(torch.randint(0, 4, ()))
                if k:
                    x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
            xs.append(x)
            ys.append(y)
        return torch.stack(xs).contiguous(), torch.stack(ys).contiguous()


def _gan_loss(kind: str, logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if kind == "lsgan":
        return F.mse_loss(logits.float(), target.float())
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def _init_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) initialisation, as in the paper."""
    for m in module.modules():
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


def _optimizer_tensors(
    prefix: str, opt: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(
    prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    head = prefix + ".state."
    for key, v in tensors.items():
        if key.startswith(head):
            pid, name = key[len(head) :].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_state(
    path: Path,
    gen: nn.Module,
    disc: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    info: dict[str, Any],
) -> Path:
    """Write everything needed to resume to one safetensors file, atomically (nothing pickled)."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in (("gen", gen), ("disc", disc)):
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().to("cpu").contiguous()
    tg, mg = _optimizer_tensors("opt_g", opt_g)
    td, md = _optimizer_tensors("opt_d", opt_d)
    tensors.update(tg)
    tensors.update(td)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {**info, "opt_g": mg, "opt_d": md}
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={_RESUME_KEY: json.dumps(meta)})
    return path


def read_training_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a training-state file; a readable error when it is not one."""
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: the training state {path} is missing (it is written beside the "
            "model file at each checkpoint); train without resuming"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get(_RESUME_KEY)
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a valid training-state file ({err})") from err
    if meta is None:
        raise ValueError(f"{path} is not a napari-segen pix2pix training state")
    return tensors, json.loads(meta)


def _sub_state(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    head = prefix + "."
    return {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}


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

    Args:
        pairs: training images with their class-index masks (any source: folders,
            layers...). Unannotated pixels (negative) are fed as "no class".
        out_path: ``.safetensors`` file for the generator (None: nothing written).
        config: training settings.
        val_pairs: held-out pairs for samples and the final quality readout
            (empty: samples come from the training pairs and no quality is measured).
        class_names: one name per class (default: from the highest class in the masks).
        resume: continue from ``out_path``'s training-state file up to ``config.steps``.
        overwrite: allow replacing an existing ``out_path`` (resuming always may).
        samples_dir: where sample grids go (default: ``<name>_samples`` beside ``out_path``).
        provenance: extra facts recorded in the model file.
        log_every: steps per entry of the loss history.
    """
    cfg = config or SynthConfig()
    cfg.check()
    t0 = time.monotonic()
    if not pairs:
        raise ValueError("no training pairs: give at least one image with its mask")
    if out_path is not None:
        out_path = Path(out_path)
        if out_path.suffix != ".safetensors":
            raise ValueError(f"the output model must end in .safetensors, got {out_path.name}")
        if not resume:
            check_writable(out_path, overwrite)
    elif resume:
        raise ValueError("resuming needs the model file (out_path) of the run to continue")

    state_tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, Any] = {}
    if resume:
        state_tensors, state_meta = read_training_state(resume_state_path(out_path))

    # --- what the networks look like ---------------------------------------------------
    top = max(int(p.mask.max()) for p in pairs)
    if state_meta:
        spec = ModelSpec(**state_meta["spec"])
        ncls, channels = spec.num_classes, spec.in_channels
        if top >= ncls:
            raise ValueError(
                f"a training mask holds class {top} but the resumed generator knows {ncls} classes"
            )
        disc_kwargs = state_meta["disc_kwargs"]
        norm = spec.normalization
    else:
        ncls = max(top + 1, 2, len(class_names or ()))
        if class_names is not None and len(class_names) < ncls:
            raise ValueError(
                f"the masks hold class {top} but only {len(class_names)} class names were given"
            )
        names = (
            list(class_names)
            if class_names
            else ["background"] + [f"class {i}" for i in range(1, ncls)]
        )
        channels = cfg.out_channels or (3 if any(p._is_rgb() for p in pairs) else 1)
        norm = synthesis_normalization(pairs)
        spec = ModelSpec(
            architecture="pix2pix_generator",
            arch_kwargs=dict(
                num_classes=ncls,
                out_channels=channels,
                ngf=cfg.ngf,
                depth=cfg.resolved_depth(),
                norm=cfg.norm,
                dropout=cfg.dropout,
            ),
            in_channels=channels,
            class_names=names,
            normalization=norm,
            task="synthesis",
        )
        disc_kwargs = dict(
            num_classes=ncls,
            image_channels=channels,
            ndf=cfg.ndf,
            n_layers=cfg.n_layers,
            norm=cfg.norm,
        )
    gen = build_model(spec.architecture, **spec.arch_kwargs)
    disc = build_model("patchgan", **disc_kwargs)
    if cfg.crop_size % gen.size_multiple:
        raise ValueError(
            f"the crop size ({cfg.crop_size}) must be a multiple of {gen.size_multiple} "
            "for the generator being resumed"
        )
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    _init_weights(gen)
    _init_weights(disc)

    dev = resolve_device(cfg.device)
    use_amp = cfg.amp and dev.type == "cuda"
    gen.to(dev)
    disc.to(dev)
    betas = (cfg.beta1, 0.999)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=betas)
    scaler_g = torch.amp.GradScaler("cuda", enabled=use_amp)
    scaler_d = torch.amp.GradScaler("cuda", enabled=use_amp)
    step = 0
    history: list[dict[str, float]] = []
    if state_meta:
        gen.load_state_dict(_sub_state(state_tensors, "gen"))
        disc.load_state_dict(_sub_state(state_tensors, "disc"))
        _load_optimizer("opt_g", opt_g, state_tensors, state_meta["opt_g"])
        _load_optimizer("opt_d", opt_d, state_tensors, state_meta["opt_d"])
        if "rng.torch" in state_tensors:
            torch.set_rng_state(state_tensors["rng.torch"])
        step = int(state_meta["step"])
        history = list(state_meta.get("history", []))

    sampler = _PairSampler(pairs, channels, norm, cfg)
    show = _PairSampler(val_pairs, channels, norm, cfg) if val_pairs else sampler
    n_show = min(4, len(show.images))
    show_masks, show_reals = [], []
    for i in range(n_show):
        x, y = show.crop(i, cfg.crop_size, center=True)
        show_reals.append(x)
        show_masks.append(y)
    show_x = torch.stack(show_reals)
    show_y = torch.stack(show_masks)

    if samples_dir is None and out_path is not None:
        samples_dir = default_samples_dir(out_path)
    samples_dir = Path(samples_dir) if samples_dir is not None else None
    samples: list[Path] = []

    start_name = "resumed" if state_meta else "scratch"
    base_prov = {
        "napari_segen_version": __version__,
        "method": "pix2pix (Isola et al. 2017)",
        "train_images": [p.name for p in pairs],
        "val_images": [p.name for p in val_pairs],
        "config": asdict(cfg),
        "discriminator": disc_kwargs,
        **(provenance or {}),
    }
    if state_meta.get("provenance", {}).get("runs"):
        runs = list(state_meta["provenance"]["runs"])
    else:
        runs = []

    def checkpoint() -> SynthEvent | None:
        if out_path is None:
            return None
        spec.provenance = {
            **base_prov,
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "steps": step,
            "runs": runs + [{"started_from": start_name, "until_step": step}],
            "final_losses": history[-1] if history else {},
        }
        save_model(out_path, gen, spec, overwrite=True)
        info = {
            "step": step,
            "spec": asdict(spec),
            "disc_kwargs": disc_kwargs,
            "history": history,
            "provenance": {"runs": spec.provenance["runs"]},
        }
        save_training_state(resume_state_path(out_path), gen, disc, opt_g, opt_d, info)
        return SynthEvent(
            "saved", step, cfg.steps, path=str(out_path), message=f"checkpoint at step {step}"
        )

    def make_sample() -> SynthEvent | None:
        gen.eval()
        with torch.no_grad():
            fake = gen(show_y.to(dev)).float().cpu()
        gen.train()
        grid = sample_grid(show_y, show_x, fake, ncls)
        path = None
        if samples_dir is not None:
            path = samples_dir / f"step_{step:06d}.png"
            _write_png(path, grid)
            samples.append(path)
        return SynthEvent("sample", step, cfg.steps, path=str(path) if path else None, image=grid)

    decay_start = cfg.steps * (1 - cfg.decay_fraction)

    def lr_at(s: int) -> float:
        if s < decay_start or cfg.decay_fraction == 0:
            return cfg.lr
        return cfg.lr * max(0.0, 1 - (s - decay_start) / max(cfg.steps - decay_start, 1))

    gen.train()
    disc.train()
    running: dict[str, float] = {}
    n_running = 0
    stopped_early = False
    if step == 0 and cfg.sample_every:
        yield make_sample()
    while step < cfg.steps:
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
        real, mask = sampler.batch(cfg.batch_size)
        real, mask = real.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
        with torch.autocast(dev.type, enabled=use_amp):
            fake = gen(mask)
        # Discriminator: real pairs -> 1, generated pairs -> 0.
        with torch.autocast(dev.type, enabled=use_amp):
            d_real = disc(mask, real)
            d_fake = disc(mask, fake.detach())
            loss_d = 0.5 * (
                _gan_loss(cfg.gan_loss, d_real, True) + _gan_loss(cfg.gan_loss, d_fake, False)
            )
        opt_d.zero_grad(set_to_none=True)
        scaler_d.scale(loss_d).backward()
        scaler_d.step(opt_d)
        scaler_d.update()
        # Generator: fool the discriminator and stay close to the real image.
        for p in disc.parameters():
            p.requires_grad_(False)
        with torch.autocast(dev.type, enabled=use_amp):
            loss_gan = _gan_loss(cfg.gan_loss, disc(mask, fake), True)
            valid = (mask >= 0)[:, None].to(fake.dtype)
            loss_l1 = (torch.abs(fake.float() - real.float()) * valid).sum() / (
                valid.sum() * fake.shape[1]
            ).clamp_min(1)
            loss_g = loss_gan + cfg.l1_weight * loss_l1
        opt_g.zero_grad(set_to_none=True)
        scaler_g.scale(loss_g).backward()
        scaler_g.step(opt_g)
        scaler_g.update()
        for p in disc.parameters():
            p.requires_grad_(True)
        step += 1
        losses = {
            "d": float(loss_d.detach()),
            "g_gan": float(loss_gan.detach()),
            "l1": float(loss_l1.detach()),
        }
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + v
        n_running += 1
        if step % log_every == 0 or step == cfg.steps:
            history.append({"step": step, **{k: v / n_running for k, v in running.items()}})
            running, n_running = {}, 0
        yield SynthEvent("step", step, cfg.steps, losses)
        out_of_time = cfg.time_limit_s is not None and time.monotonic() - t0 > cfg.time_limit_s
        if out_of_time:
            stopped_early = step < cfg.steps
        last = step == cfg.steps or out_of_time
        if last or (cfg.sample_every and step % cfg.sample_every == 0):
            yield make_sample()
        if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            ev = checkpoint()
            if ev is not None:
                yield ev
        if out_of_time:
            break

    gen.eval()
    model = LoadedModel(gen, spec, out_path)
    quality: dict[str, Any] = {}
    if cfg.evaluate and val_pairs:
        from .quality import evaluate_generator

        quality = evaluate_generator(model, val_pairs, device=str(dev))
        yield SynthEvent(
            "quality", step, cfg.steps, metrics=quality, message=quality.get("message", "")
        )
        if out_path is not None:
            spec.provenance["held_out_quality"] = json_safe(quality)
            save_model(out_path, gen, spec, overwrite=True)
    return SynthResult(
        out_path, model, step, history, quality, samples, stopped_early, time.monotonic() - t0
    )


def json_safe(obj: Any) -> Any:
    """Drop what JSON cannot hold (arrays, NaN stays as null)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, int | str | bool) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return str(obj)
