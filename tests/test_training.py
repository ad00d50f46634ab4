"""The trainer: checkpoints, resume after cancel, atomic saves, multi-class/RGB, early stopping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_segen.data.datasets import LabeledImage
from napari_segen.models import load_model
from napari_segen.training import TrainConfig, new_unet_spec, train_segmentation
from napari_segen.training.checkpoint import (
    checkpoint_sidecar,
    flatten_optimizer_state,
    last_checkpoint_path,
    load_checkpoint,
    read_checkpoint_meta,
    unflatten_optimizer_state,
)
from napari_segen.utils.atomic import OverwriteError
from napari_segen.utils.generators import drive

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(depth=2, base_channels=8)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        epochs=3, batch_size=2, crop_size=64, samples_per_epoch=4, patience=None, device="cpu"
    )
    base.update(kw)
    return TrainConfig(**base)


class _Cancel(Exception):
    pass


def _drain(gen, stop_after_epochs: int | None = None):
    """Run a training generator; with ``stop_after_epochs``, close it like a GUI cancel."""
    events = []

    def on_event(ev) -> None:
        events.append(ev)
        if stop_after_epochs and sum(e.kind == "epoch" for e in events) == stop_after_epochs:
            raise _Cancel

    try:
        return drive(gen, on_event), events
    except _Cancel:
        gen.close()
        return None, events


@pytest.fixture
def blobs_pair(blobs_image):
    image, mask = blobs_image
    return [LabeledImage(image, mask, "blobs")]


def test_events_best_model_and_last_checkpoint(tmp_path, blobs_pair):
    out = tmp_path / "m.safetensors"
    result, events = _drain(
        train_segmentation(
            blobs_pair, blobs_pair, out, start=new_unet_spec(1, depth=2, base_channels=8),
            config=_cfg(),
        )
    )  # fmt: skip
    kinds = [e.kind for e in events]
    assert kinds.count("epoch") == 3 and kinds.count("step") == 6 and "saved" in kinds
    assert kinds.index("saved") > kinds.index("epoch")  # "epoch" first, then "saved"
    assert events[0].total_steps == 6
    assert "foreground_dice" in events[kinds.index("epoch")].metrics
    model = load_model(out)
    assert model.spec.provenance["epochs_run"] >= 1 and len(result.history) == 3
    # the file says what the run used, not only what was asked (AMP is CUDA-only)
    prov = model.spec.provenance
    assert prov["config"]["amp"] is True and prov["config"]["channels_last"] is True
    assert prov["ran_with"] == {"device": "cpu", "amp": False, "channels_last": False,
                                "processes": 1}  # fmt: skip
    last = last_checkpoint_path(out)
    assert last.name == "m.last.safetensors" and checkpoint_sidecar(last).is_file()
    ckpt = load_checkpoint(last)
    assert ckpt.epoch == 3 and ckpt.train_state["step"] == 6
    assert ckpt.optimizer_state["state"]  # AdamW moments stored as tensors
    # The sidecar is plain JSON anyone can read.
    side = json.loads(checkpoint_sidecar(last).read_text())
    assert side["train"]["epoch"] == 3 and side["format"] == "napari-segen-checkpoint"


def test_resume_after_cancel_matches_uninterrupted_run(tmp_path, blobs_pair):
    spec = new_unet_spec(1, depth=2, base_channels=8)
    full, _ = _drain(
        train_segmentation(blobs_pair, blobs_pair, tmp_path / "a.safetensors", start=spec,
                           config=_cfg(epochs=4))
    )  # fmt: skip
    # Cancel after epoch 2 (the GUI closes the generator), then resume.
    _, events = _drain(
        train_segmentation(blobs_pair, blobs_pair, tmp_path / "b.safetensors", start=spec,
                           config=_cfg(epochs=4)),
        stop_after_epochs=2,
    )  # fmt: skip
    assert load_checkpoint(last_checkpoint_path(tmp_path / "b.safetensors")).epoch == 2
    resumed, events = _drain(
        train_segmentation(blobs_pair, blobs_pair, tmp_path / "b.safetensors", start=spec,
                           config=_cfg(epochs=4), resume=True)
    )  # fmt: skip
    assert [e.epoch for e in events if e.kind == "epoch"] == [3, 4]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [h["loss"] for h in resumed.history], [h["loss"] for h in full.history], rtol=1e-6
    )
    a = load_checkpoint(last_checkpoint_path(tmp_path / "a.safetensors")).model_state
    b = load_checkpoint(last_checkpoint_path(tmp_path / "b.safetensors")).model_state
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_resume_needs_a_checkpoint_and_the_same_model(tmp_path, blobs_pair):
    out = tmp_path / "m.safetensors"
    spec = new_unet_spec(1, depth=2, base_channels=8)
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        _drain(train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(), resume=True))
    _drain(train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(epochs=1)))
    other = new_unet_spec(1, depth=2, base_channels=4)
    with pytest.raises(ValueError, match="same model settings"):
        _drain(train_segmentation(blobs_pair, [], out, start=other, config=_cfg(), resume=True))
    with pytest.raises(ValueError, match="same epochs"):
        _drain(train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(), resume=True))


def test_never_overwrites_without_permission(tmp_path, blobs_pair):
    out = tmp_path / "m.safetensors"
    spec = new_unet_spec(1, depth=2, base_channels=8)
    _drain(train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(epochs=1)))
    with pytest.raises(OverwriteError, match="already exists"):
        _drain(train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(epochs=1)))
    out.unlink()  # the last checkpoint of that run is still there
    with pytest.raises(OverwriteError, match="last.safetensors already exists"):
        _drain(train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(epochs=1)))
    _drain(
        train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(epochs=1), overwrite=True)
    )


def test_failing_save_leaves_previous_files_intact(tmp_path, blobs_pair, monkeypatch):
    import napari_segen.models.model_file as model_file
    import napari_segen.training.checkpoint as checkpoint

    out = tmp_path / "m.safetensors"
    spec = new_unet_spec(1, depth=2, base_channels=8)
    _drain(train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(epochs=2)))
    last = last_checkpoint_path(out)
    last_bytes = last.read_bytes()

    def half_write_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        _drain(
            train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(epochs=2),
                               overwrite=True)
        )  # fmt: skip
    assert last.read_bytes() == last_bytes
    assert load_checkpoint(last).epoch == 2
    model_bytes = out.read_bytes()  # that run replaced the best model (overwrite=True) first
    monkeypatch.undo()
    monkeypatch.setattr(model_file, "save_file", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        _drain(
            train_segmentation(blobs_pair, [], out, start=spec, config=_cfg(epochs=2),
                               overwrite=True)
        )  # fmt: skip
    assert out.read_bytes() == model_bytes
    load_model(out)  # still a complete, loadable model
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left behind


def test_optimizer_state_round_trip_without_pickle():
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    assert all(k.startswith("optim/") for k in tensors)
    json.dumps(meta)  # everything else is JSON
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    opt2.load_state_dict(unflatten_optimizer_state(tensors, meta))
    sd1, sd2 = opt.state_dict(), opt2.state_dict()
    assert sd1["param_groups"][0]["lr"] == sd2["param_groups"][0]["lr"]
    for i in sd1["state"]:
        for k in sd1["state"][i]:
            torch.testing.assert_close(sd1["state"][i][k], sd2["state"][i][k])


def test_multiclass_rgb_training(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.int64)
    mask[8:28, 8:28] = 1
    mask[36:60, 30:58] = 2
    mask[0:4] = -100  # unannotated rows
    colours = np.array([[30, 30, 30], [200, 40, 40], [40, 40, 200]])
    image = (colours[mask.clip(0)] + rng.normal(0, 10, (64, 64, 3))).clip(0, 255).astype(np.uint8)
    pairs = [LabeledImage(image, mask, "rgb")]
    spec = new_unet_spec(3, ["background", "red", "blue"], **TINY)
    out = tmp_path / "rgb.safetensors"
    result, _ = _drain(
        train_segmentation(pairs, pairs, out, start=spec, config=_cfg(epochs=2, lr=3e-3))
    )
    model = load_model(out)
    assert model.spec.class_names == ["background", "red", "blue"] and model.spec.in_channels == 3
    assert set(result.best_metrics["per_class"]) == {"background", "red", "blue"}


def test_class_count_mismatch_is_explained(blobs_pair):
    bad = [LabeledImage(blobs_pair[0].image, blobs_pair[0].mask * 3)]
    with pytest.raises(ValueError, match="holds class 3 but the model has 2 classes"):
        _drain(train_segmentation(bad, [], None, start=new_unet_spec(1, **TINY), config=_cfg()))


def test_early_stopping_and_fine_tune_leaves_start_untouched(blobs_pair, tiny_unet, monkeypatch):
    import napari_segen.training.trainer as trainer
    from napari_segen.metrics.segmentation import segmentation_scores

    # A validation score that never improves after epoch 1: patience 2 stops after epoch 3.
    flat = segmentation_scores(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    monkeypatch.setattr(trainer, "evaluate_model", lambda *a, **k: flat)
    before = {k: v.clone() for k, v in tiny_unet.module.state_dict().items()}
    cfg = _cfg(epochs=30, patience=2)
    result, _ = _drain(
        train_segmentation(blobs_pair, blobs_pair, None, start=tiny_unet, config=cfg)
    )
    assert result.stopped_early and len(result.history) == 3
    for k, v in tiny_unet.module.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_checkpoint_errors_are_sentences(tmp_path):
    bad = tmp_path / "x.last.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid checkpoint"):
        read_checkpoint_meta(bad)


def test_result_returns_the_trained_model_without_touching_the_start(blobs_image, tiny_unet):
    import torch

    from napari_segen.data.datasets import LabeledImage
    from napari_segen.training import TrainConfig, train_segmentation

    img, mask = blobs_image
    before = {k: v.clone() for k, v in tiny_unet.module.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=2, crop_size=32, samples_per_epoch=4, device="cpu")
    result = drive(
        train_segmentation([LabeledImage(img, mask)], [], None, start=tiny_unet, config=cfg)
    )
    assert result.model is not None and not result.model.module.training
    trained = result.model.module.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in before)
    assert all(torch.equal(tiny_unet.module.state_dict()[k], before[k]) for k in before)
