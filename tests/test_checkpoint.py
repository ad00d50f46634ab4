"""The shared training kernel: checkpoint format 2, bit-exact resume of both trainers,
the crop sampler, old-format messages, the finite-loss guard, tiny one-cycle schedules."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_segen.data.datasets import LabeledImage
from napari_segen.data.sampler import CropSampler, derive_seed, seeded_generator
from napari_segen.models import load_model
from napari_segen.synthesis import SynthConfig, train_pix2pix
from napari_segen.training import TrainConfig, new_unet_spec, train_segmentation
from napari_segen.training.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_sidecar,
    flatten_optimizer_state,
    last_checkpoint_path,
    legacy_resume_path,
    load_checkpoint,
    save_checkpoint,
)
from napari_segen.training.run import one_cycle
from napari_segen.utils.generators import drive

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(depth=2, base_channels=8)


def _seg_cfg(**kw) -> TrainConfig:
    base = dict(
        epochs=4, batch_size=2, crop_size=32, samples_per_epoch=4, patience=None, device="cpu"
    )
    return TrainConfig(**{**base, **kw})


def _gan_cfg(**kw) -> SynthConfig:
    base = dict(
        steps=8, crop_size=32, ngf=4, ndf=4, n_layers=2, device="cpu", sample_every=0,
        checkpoint_every=4, evaluate=False, lr=1e-3,
    )  # fmt: skip
    return SynthConfig(**{**base, **kw})


@pytest.fixture
def blobs_pair(blobs_image):
    image, mask = blobs_image
    return [LabeledImage(image[:64, :64], mask[:64, :64], "blobs")]


def _cancel_after(gen, kind: str, count: int) -> list:
    """Iterate ``gen`` and close it (a GUI cancel) after the ``count``-th ``kind`` event."""
    events = []
    for ev in gen:
        events.append(ev)
        if sum(e.kind == kind for e in events) == count:
            gen.close()
            break
    return events


def _assert_same_checkpoints(a_path, b_path) -> None:
    a, b = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a.modules.keys() == b.modules.keys() and a.optimizers.keys() == b.optimizers.keys()
    for name in a.modules:
        for k, v in a.modules[name].items():
            assert torch.equal(v, b.modules[name][k]), f"{name}.{k} differs"
    for name in a.optimizers:
        sa, sb = a.optimizers[name], b.optimizers[name]
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys()
        for idx, per_param in sa["state"].items():
            for k, v in per_param.items():
                assert torch.equal(v, sb["state"][idx][k]), f"{name} state {idx}/{k} differs"
    assert a.schedulers == b.schedulers


# --- the format ----------------------------------------------------------------------------
def test_any_named_parts_and_all_random_states_round_trip(tmp_path):
    torch.manual_seed(0)
    nets = {"a": torch.nn.Linear(3, 2), "b": torch.nn.Conv2d(1, 2, 3)}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-2) for k, m in nets.items()}
    sched = torch.optim.lr_scheduler.StepLR(opts["a"], 2)
    nets["a"](torch.randn(4, 3)).sum().backward()
    nets["b"](torch.randn(1, 1, 5, 5)).sum().backward()
    for o in opts.values():
        o.step()
    sched.step()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    path = tmp_path / "run.last.safetensors"
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(
        path, spec=None, modules=nets, optimizers=opts, schedulers={"s": sched},
        scalers={"g": scaler}, train_state={"step": 7, "best": None},
    )  # fmt: skip
    expected = random.random(), np.random.rand(), torch.rand(1)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)

    ckpt = load_checkpoint(path)
    assert ckpt.version == FORMAT_VERSION == 2 and ckpt.train_state == {"step": 7, "best": None}
    fresh = {"a": torch.nn.Linear(3, 2), "b": torch.nn.Conv2d(1, 2, 3)}
    fresh_opts = {k: torch.optim.Adam(m.parameters(), lr=1.0) for k, m in fresh.items()}
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opts["a"], 5)
    ckpt.restore(fresh, fresh_opts, {"s": fresh_sched}, {"g": scaler})
    for k in nets:
        for n, p in nets[k].state_dict().items():
            assert torch.equal(p, fresh[k].state_dict()[n]), n
        assert fresh_opts[k].state_dict()["param_groups"] == opts[k].state_dict()["param_groups"]
    assert fresh_sched.state_dict() == sched.state_dict()
    # python, numpy and torch continue exactly where they were when the checkpoint was saved
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
    side = json.loads(checkpoint_sidecar(path).read_text())
    assert side["format_version"] == 2 and side["modules"] == ["a", "b"]
    with pytest.raises(CheckpointError, match="holds no module 'c'"):
        ckpt.restore({"c": torch.nn.Linear(3, 2)})


def test_a_description_that_would_build_a_giant_is_refused(tmp_path, blobs_pair):
    out = tmp_path / "m.safetensors"
    drive(train_segmentation(blobs_pair, [], out, start=new_unet_spec(1, **TINY),
                             config=_seg_cfg(epochs=1)))  # fmt: skip
    last = last_checkpoint_path(out)
    from safetensors import safe_open

    with safe_open(str(last), "pt") as f:
        meta = json.loads(f.metadata()["napari_segen_checkpoint"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["spec"]["arch_kwargs"]["base_channels"] = 1_000_000  # ~10^14 weights
    save_file(tensors, str(last), metadata={"napari_segen_checkpoint": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="describes a unet of .* but holds"):
        load_checkpoint(last)


# --- old files -----------------------------------------------------------------------------
def _write_version_1(path, module, spec, opt, sched, train_state):
    """A checkpoint as napari-segen wrote them before format 2 (segmentation only)."""
    tensors = {f"model/{k}": v.contiguous() for k, v in module.state_dict().items()}
    flat, optim_meta = flatten_optimizer_state(opt.state_dict())
    tensors.update(flat)
    tensors["rng/torch"] = torch.get_rng_state()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, np.int64))
    meta = {
        "format": "napari-segen-checkpoint", "format_version": 1, "spec": spec.to_json(),
        "optimizer": optim_meta, "scheduler": sched.state_dict(), "scaler": {},
        "train": train_state,
        "rng": {"numpy": [name, int(pos), int(has_gauss), float(cached)]},
    }  # fmt: skip
    save_file(tensors, str(path), metadata={"napari_segen_checkpoint": json.dumps(meta)})


def test_version_1_segmentation_checkpoint_still_resumes(tmp_path, blobs_pair):
    from napari_segen.models import build_model

    spec = new_unet_spec(1, **TINY)
    torch.manual_seed(0)
    module = build_model("unet", **spec.arch_kwargs)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    sched = one_cycle(opt, 1e-3, 4)
    for _ in range(2):  # the first epoch: 2 steps
        module(torch.rand(1, 1, 32, 32)).sum().backward()
        opt.step()
        sched.step()
    out = tmp_path / "old.safetensors"
    state = {
        "epoch": 1, "step": 2, "epochs": 2, "steps_per_epoch": 2, "total_steps": 4,
        "best_score": -math.inf, "best_epoch": 1, "history": [{"epoch": 1, "loss": 1.0}],
    }  # fmt: skip
    _write_version_1(last_checkpoint_path(out), module, spec, opt, sched, state)

    ckpt = load_checkpoint(last_checkpoint_path(out))
    assert ckpt.version == 1 and ckpt.epoch == 1 and ckpt.train_state["best_score"] == -math.inf
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in ckpt.model_state.items())
    assert ckpt.optimizer_state["state"]
    result = drive(train_segmentation(blobs_pair, [], out, start=spec,
                                      config=_seg_cfg(epochs=2), resume=True))  # fmt: skip
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert load_checkpoint(last_checkpoint_path(out)).version == 2  # rewritten in today's format


def test_old_pix2pix_state_file_is_explained(tmp_path):
    out = tmp_path / "gen.safetensors"
    legacy_resume_path(out).write_bytes(b"state of an older napari-segen")
    pairs = [LabeledImage(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.int64))]
    with pytest.raises(CheckpointError) as err:
        drive(train_pix2pix(pairs, out, config=_gan_cfg(), resume=True))
    msg = str(err.value)
    assert "gen.resume.safetensors" in msg and "older version of napari-segen" in msg
    assert "start without resume" in msg and "\n" not in msg


def test_newer_or_foreign_files_are_refused(tmp_path):
    path = tmp_path / "x.last.safetensors"
    meta = {"format": "napari-segen-checkpoint", "format_version": 99}
    save_file(
        {"t": torch.zeros(1)}, str(path), metadata={"napari_segen_checkpoint": json.dumps(meta)}
    )
    with pytest.raises(CheckpointError, match="newer napari-segen"):
        load_checkpoint(path)
    save_file({"t": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match="not a napari-segen checkpoint"):
        load_checkpoint(path)


# --- bit-exact resume ----------------------------------------------------------------------
def test_segmentation_resume_is_bit_exact(tmp_path, blobs_pair):
    spec = new_unet_spec(1, **TINY)
    drive(train_segmentation(blobs_pair, blobs_pair, tmp_path / "a.safetensors", start=spec,
                             config=_seg_cfg()))  # fmt: skip
    gen = train_segmentation(
        blobs_pair, blobs_pair, tmp_path / "b.safetensors", start=spec, config=_seg_cfg()
    )
    _cancel_after(gen, "epoch", 2)
    assert load_checkpoint(last_checkpoint_path(tmp_path / "b.safetensors")).epoch == 2
    torch.manual_seed(5)  # the resumed run restores the generator states
    drive(train_segmentation(blobs_pair, blobs_pair, tmp_path / "b.safetensors", start=spec,
                             config=_seg_cfg(), resume=True))  # fmt: skip
    _assert_same_checkpoints(
        last_checkpoint_path(tmp_path / "a.safetensors"),
        last_checkpoint_path(tmp_path / "b.safetensors"),
    )


def test_pix2pix_resume_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    mask = (rng.random((40, 40)) > 0.6).astype(np.int64)
    image = (40 + 150 * mask + rng.normal(0, 10, mask.shape)).clip(0, 255).astype(np.uint8)
    pairs = [
        LabeledImage(image, mask, "a"),
        LabeledImage(image[:, ::-1].copy(), mask[:, ::-1].copy()),
    ]
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    straight = drive(train_pix2pix(pairs, a, config=_gan_cfg()))
    events = _cancel_after(train_pix2pix(pairs, b, config=_gan_cfg()), "saved", 1)
    assert all(e.done == e.step and e.total == e.total_steps == 8 for e in events)
    assert (
        events[-1].step == 4 and load_checkpoint(last_checkpoint_path(b)).train_state["step"] == 4
    )
    torch.manual_seed(5)  # dropout noise: the resumed run restores the generator state
    resumed = drive(train_pix2pix(pairs, b, config=_gan_cfg(), resume=True))
    assert resumed.steps == straight.steps == 8
    _assert_same_checkpoints(last_checkpoint_path(a), last_checkpoint_path(b))
    assert resumed.history == straight.history
    assert [r["until_step"] for r in load_model(b).spec.provenance["runs"]] == [4, 8]


# --- the crop sampler ----------------------------------------------------------------------
def _coded(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose pixel values are its mask's: any misalignment shows."""
    y = torch.arange(h * w, dtype=torch.int64).reshape(h, w)
    return y[None].float().repeat(2, 1, 1), y


def test_sampler_crops_stay_aligned_under_flips_and_rotations():
    (x1, y1), (x2, y2) = _coded(20, 30), _coded(40, 24)
    sampler = CropSampler([x1, x2], [y1, y2], crop_size=16)
    g = seeded_generator(0, 1)
    seen = set()
    for _ in range(60):
        x, y = sampler.sample(g)
        assert x.shape == (2, 16, 16) and y.shape == (16, 16)
        assert torch.equal(x[0], y.float()) and torch.equal(x[1], y.float())
        seen.add((int(y[0, 0]), int(y[0, 1]) - int(y[0, 0])))  # where the corner came from, how
    assert len({step for _, step in seen}) >= 3  # flipped and rotated ways, not just one
    xs, ys = sampler.batch(3, g)
    assert xs.shape == (3, 2, 16, 16) and ys.shape == (3, 16, 16)


def test_sampler_pads_small_images():
    x, y = _coded(10, 12)
    ignore = CropSampler([x], [y], 16, flips=False, rot90=False, mask_fill=-100)
    xp, yp = ignore.padded(0)
    assert xp.shape == (2, 16, 16) and yp.shape == (16, 16)
    assert torch.equal(yp[:10, :12], y) and (yp[10:] == -100).all() and (yp[:, 12:] == -100).all()
    assert torch.equal(xp[0, :10, :12], x[0])
    mirror = CropSampler([x], [y], 16, flips=False, rot90=False)
    xm, ym = mirror.padded(0)
    assert torch.equal(xm[0], ym.float())  # image and mask mirrored alike
    assert torch.equal(ym[10, :12], y[8])  # reflection about the last row
    x3, y3 = _coded(3, 3)
    tiny = CropSampler([x3], [y3], crop_size=8)  # too small to mirror: edges repeated
    xt, yt = tiny.sample(seeded_generator(0))
    assert xt.shape == (2, 8, 8) and torch.equal(xt[0], yt.float())


def test_sampler_is_reproducible_and_weighted_by_area():
    pairs = [_coded(16, 16), _coded(48, 48)]
    sampler = CropSampler([p[0] for p in pairs], [p[1] for p in pairs], 8)
    a = sampler.batch(4, seeded_generator(3, 7))
    b = sampler.batch(4, seeded_generator(3, 7))
    c = sampler.batch(4, seeded_generator(3, 8))
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert derive_seed(3, 7) == derive_seed(3, 7) != derive_seed(3, 8)
    g = seeded_generator(0)
    small = sum(int(sampler.sample(g)[1].max()) < 256 for _ in range(400)) / 400
    assert 0.04 < small < 0.18  # area 256 of 256 + 2304: a tenth of the draws


def test_sampler_prefers_annotated_crops_and_previews_the_middle():
    x, y = _coded(64, 64)
    sparse = torch.full_like(y, -100)
    sparse[50:54, 5:9] = 1
    plain = CropSampler([x], [sparse], 16, prefer_annotated=False)
    keen = CropSampler([x], [sparse], 16, prefer_annotated=True)
    g1, g2 = seeded_generator(0), seeded_generator(0)
    hit_plain = sum(bool((plain.sample(g1)[1] >= 0).any()) for _ in range(100))
    hit_keen = sum(bool((keen.sample(g2)[1] >= 0).any()) for _ in range(100))
    assert hit_keen > 2 * hit_plain
    reals, masks = CropSampler([x, x], [y, y], 16).preview(4)
    assert reals.shape == (2, 2, 16, 16) and int(masks[0, 0, 0]) == 24 * 64 + 24


# --- guards and schedules ------------------------------------------------------------------
def test_diverging_segmentation_stops_with_a_sentence_and_keeps_good_files(
    tmp_path, blobs_pair, monkeypatch
):
    import napari_segen.training.trainer as trainer

    out = tmp_path / "m.safetensors"
    spec = new_unet_spec(1, **TINY)
    with pytest.raises(ValueError, match=r"at step \d+.*lower the learning rate") as err:
        drive(train_segmentation(blobs_pair, [], out, start=spec, config=_seg_cfg(lr=1e6)))
    assert "\n" not in str(err.value)
    if out.exists():  # an epoch that ended before the loss blew up: finite weights only
        assert all(torch.isfinite(v).all() for v in load_model(out).module.state_dict().values())

    # A loss that turns NaN in epoch 2: the model and checkpoint of epoch 1 stay as they were.
    real_loss = trainer.SegmentationLoss

    class NaNAtStep3(real_loss):
        calls = 0

        def forward(self, logits, target):
            NaNAtStep3.calls += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if NaNAtStep3.calls == 3 else loss

    monkeypatch.setattr(trainer, "SegmentationLoss", NaNAtStep3)
    out2 = tmp_path / "n.safetensors"
    with pytest.raises(ValueError, match="became nan at step 3"):
        drive(train_segmentation(blobs_pair, [], out2, start=spec, config=_seg_cfg()))
    assert load_checkpoint(last_checkpoint_path(out2)).epoch == 1
    weights = load_model(out2).module.state_dict().values()
    assert all(torch.isfinite(v).all() for v in weights)


def test_diverging_pix2pix_stops_before_saving(tmp_path, monkeypatch):
    import napari_segen.synthesis.trainer as synth

    calls = []
    real = synth._gan_loss

    def nan_later(kind, logits, is_real):
        calls.append(1)
        loss = real(kind, logits, is_real)
        return loss * float("nan") if len(calls) > 3 * 5 else loss  # 3 calls per step

    monkeypatch.setattr(synth, "_gan_loss", nan_later)
    out = tmp_path / "g.safetensors"
    pairs = [LabeledImage(np.full((32, 32), 9, np.uint8), np.eye(32, dtype=np.int64))]
    with pytest.raises(ValueError, match="d loss became nan at step 6.*lower the learning rate"):
        drive(train_pix2pix(pairs, out, config=_gan_cfg()))
    assert load_checkpoint(last_checkpoint_path(out)).train_state["step"] == 4
    assert all(torch.isfinite(v).all() for v in load_model(out).module.state_dict().values())


@pytest.mark.parametrize("total", [1, 2, 3, 4, 9, 10, 11, 19, 20, 37])
def test_one_cycle_works_for_tiny_step_counts(total):
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = one_cycle(opt, 0.1, total)
    lrs = []
    for _ in range(total):  # as the trainer does: one scheduler step per optimiser step
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(math.isfinite(v) and 0 < v <= 0.1 + 1e-12 for v in lrs)
    if total >= 4:
        assert max(lrs) == pytest.approx(0.1, rel=1e-3) and lrs[-1] < 0.01


def test_ten_step_segmentation_run(tmp_path, blobs_pair):
    # 5 epochs of 2 steps: the schedule torch divides by zero for.
    cfg = _seg_cfg(epochs=5)
    events = []
    result = drive(train_segmentation(blobs_pair, [], None, start=new_unet_spec(1, **TINY),
                                      config=cfg), events.append)  # fmt: skip
    steps = [e for e in events if e.kind == "step"]
    assert steps[-1].total == steps[-1].total_steps == 10 and steps[-1].done == 10
    assert len(result.history) == 5 and all(math.isfinite(h["loss"]) for h in result.history)
