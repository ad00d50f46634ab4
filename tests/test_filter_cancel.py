"""Export + filter stopped part way (Cancel, Ctrl-C, an error): the folder stays consistent.

A stub generator draws pair ``i`` as its mask (bright foreground) when ``i`` is in its
``agree`` set, else as the inverted mask; a 1x1 threshold model then segments the
first kind perfectly (Dice 1, kept) and the second not at all (Dice 0, dropped). So
which pairs are kept is known before the run, in milliseconds on a CPU.
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from napari_segen.models import ModelSpec
from napari_segen.models.model_file import LoadedModel
from napari_segen.synthesis.filter import SCORES_NAME, iter_export_filtered
from napari_segen.synthesis.masks import MaskTransformConfig
from napari_segen.utils.generators import drive

pytestmark = pytest.mark.usefixtures("one_thread")

N = 6
AGREE = frozenset({0, 2, 3})  # pairs the filter keeps once it has scored them
AS_IS = MaskTransformConfig(flips=False, rot90=False, scale_range=(1, 1), elastic_alpha=0)


class _StubGenerator(nn.Module):
    """Pair ``i`` (noise seed ``i``): the mask as the image if ``i`` agrees, else inverted."""

    size_multiple = 1
    num_classes = 2

    def __init__(self, agree: frozenset[int]) -> None:
        super().__init__()
        self.agree = agree

    def set_stochastic(self, on: bool) -> None:
        pass

    def forward(self, labels, noise_rng=None, noise_strength=1.0):
        fg = (labels > 0).float()
        if noise_rng.initial_seed() not in self.agree:
            fg = 1 - fg
        return (fg * 2 - 1)[:, None]


class _Threshold(nn.Module):
    """Foreground where the normalised intensity is above 0.5; can wait or fail on a call."""

    size_multiple = 1

    def __init__(self, fail_at: int = 0, error: BaseException | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 20.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -10.0]))
        self.calls = 0
        self.fail_at, self.error = fail_at, error
        self.wait_at = 0  # a call that waits for ``release`` (a GUI test cancels meanwhile)
        self.waiting = threading.Event()
        self.release = threading.Event()

    def forward(self, x):
        self.calls += 1
        if self.calls == self.wait_at:
            self.waiting.set()
            assert self.release.wait(60), "the test never released the filter"
        if self.calls == self.fail_at:
            raise self.error
        return self.conv(x)


def _generator() -> LoadedModel:
    spec = ModelSpec(
        "pix2pix_generator", {}, 1, ["background", "foreground"], task="synthesis",
        normalization={"min": 20, "max": 220, "output_dtype": "uint8"},
    )  # fmt: skip
    return LoadedModel(_StubGenerator(AGREE).eval(), spec)


def _filter_model(**kwargs) -> LoadedModel:
    spec = ModelSpec("unet", {}, 1, ["background", "foreground"],
                     normalization={"mode": "range", "min": 0, "max": 255})  # fmt: skip
    return LoadedModel(_Threshold(**kwargs).eval(), spec)


def _mask() -> np.ndarray:
    mask = np.zeros((32, 32), np.int64)
    mask[8:24, 8:24] = 1
    return mask


def _name(i: int) -> str:
    return f"synth_{i:04d}.png"


def _files(folder: Path) -> list[str]:
    """Every entry, hidden ones (temporary files) included."""
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _rows(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [(r["name"], r["kept"]) for r in csv.DictReader(f)]


def _start(out: Path, filter_model: LoadedModel | None = None, **kwargs):
    stops: list = []
    task = iter_export_filtered(
        _generator(), [_mask()], out, N, filter_model=filter_model or _filter_model(),
        min_dice=0.7, transform=AS_IS, device="cpu", on_stop=stops.append, **kwargs,
    )  # fmt: skip
    return task, stops


def _advance(task, steps: int) -> None:
    for _ in range(steps):
        next(task)


def test_the_stubs_keep_the_agreeing_pairs(tmp_path):
    """The whole run: the stubs give the verdicts the other tests rely on."""
    task, stops = _start(tmp_path / "all")
    result = drive(task)
    kept = [_name(i) for i in sorted(AGREE)]
    assert [s.name for s in result.filter.kept] == kept and not stops
    assert _files(tmp_path / "all" / "images") == kept == _files(tmp_path / "all" / "masks")


@pytest.mark.parametrize("scored", [1, 4, N])
def test_cancel_while_filtering_leaves_only_kept_scored_pairs(tmp_path, scored):
    out = tmp_path / "out"
    task, stops = _start(out)
    _advance(task, N + scored)  # all exported, ``scored`` of them scored
    assert _files(out / "images") == [_name(i) for i in range(N)]
    task.close()  # the Cancel button's way of stopping a task

    kept = [_name(i) for i in range(scored) if i in AGREE]
    assert _files(out / "images") == kept and _files(out / "masks") == kept
    expected_rows = [(_name(i), "1" if i in AGREE else "0") for i in range(scored)]
    assert _rows(out / SCORES_NAME) == expected_rows
    assert _files(out) == sorted([SCORES_NAME, "images", "masks"])
    (stop,) = stops
    dropped = scored - len(kept)
    assert stop.filter.removed_dropped == dropped and stop.filter.unscored == N - scored
    assert stop.summary() == (
        f"cancelled while filtering: kept {len(kept)} of {scored} scored pairs, removed "
        f"{dropped} below Dice 0.7 and {N - scored} not scored; scores in {out / SCORES_NAME}"
    )


def test_an_error_while_filtering_tidies_up_and_goes_on(tmp_path):
    out = tmp_path / "out"
    task, stops = _start(out, _filter_model(fail_at=3, error=RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        drive(task)  # pairs 0 and 1 scored, the third fails
    assert _files(out / "images") == [_name(0)] == _files(out / "masks")
    assert _rows(out / SCORES_NAME) == [(_name(0), "1"), (_name(1), "0")]
    assert (
        stops[0]
        .summary()
        .startswith(
            "stopped by an error while filtering: kept 1 of 2 scored pairs, removed 1 below Dice "
            "0.7 and 4 not scored"
        )
    )


def test_cancel_while_exporting_keeps_the_pairs_and_claims_no_filtering(tmp_path):
    out = tmp_path / "out"
    task, stops = _start(out)
    _advance(task, 2)
    task.close()
    assert _files(out / "images") == [_name(0), _name(1)] == _files(out / "masks")
    assert not (out / SCORES_NAME).exists()
    assert stops[0].filter is None
    assert stops[0].summary() == (
        f"cancelled while exporting: 2 of {N} pairs written to {out} (images/, masks/), "
        "not filtered"
    )


def test_cancel_while_exporting_over_an_old_run_leaves_its_scores_and_says_so(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / SCORES_NAME).write_text("name,dice,kept,reason\nold.png,0.9,1,\n", encoding="utf-8")
    task, stops = _start(out, overwrite=True)
    _advance(task, 3)
    task.close()
    assert _rows(out / SCORES_NAME) == [("old.png", "1")]  # not this run's file: untouched
    assert (
        stops[0]
        .summary()
        .endswith(
            f"not filtered; {out / SCORES_NAME} is from an earlier run, not about these pairs"
        )
    )


def test_a_stop_between_image_and_mask_leaves_no_lone_image(tmp_path, monkeypatch):
    import napari_segen.synthesis.generate as generate

    real, calls = generate.write_labels, []

    def interrupted_on_the_second(path, labels, overwrite=False):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, labels, overwrite)

    monkeypatch.setattr(generate, "write_labels", interrupted_on_the_second)
    out = tmp_path / "out"
    task, stops = _start(out)
    with pytest.raises(KeyboardInterrupt):
        drive(task)
    assert _files(out / "images") == [_name(0)] == _files(out / "masks")
    assert stops[0].summary().startswith("interrupted while exporting: 1 of 6 pairs")


# --- the command line --------------------------------------------------------------------------
def _cli_args(tmp_path: Path, out: Path) -> list[str]:
    mask_file = tmp_path / "mask.png"
    Image.fromarray(_mask().astype(np.uint8)).save(mask_file)
    return [
        "synth", "export", "--model", "stub", "--masks", str(mask_file), "--n", str(N),
        "--out", str(out), "--device", "cpu", "--quiet", "--filter-model", "stub",
        "--no-flips", "--no-rot90", "--scale", "1", "1", "--elastic-alpha", "0",
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["in a step", "between steps"])
def test_cli_ctrl_c_while_filtering_tidies_up_and_says_what_is_left(
    tmp_path, monkeypatch, capsys, where
):
    """Ctrl-C lands in the filter model (inside the task) or in the progress bar (the task
    is suspended at its yield); either way the same folder and the same line."""
    import napari_segen.cli.synth as cli_synth
    from napari_segen.cli import main
    from napari_segen.cli._common import follow

    scored = 4
    if where == "in a step":
        filter_model = _filter_model(fail_at=scored + 1, error=KeyboardInterrupt())
    else:
        filter_model = _filter_model()

        def follow_then_interrupt(bar):
            move = follow(bar)

            def on_event(event):
                move(event)
                if event.done == N + scored:
                    raise KeyboardInterrupt

            return on_event

        monkeypatch.setattr(cli_synth, "follow", follow_then_interrupt)
    monkeypatch.setattr(cli_synth, "_load_generator", lambda path: _generator())
    monkeypatch.setattr(cli_synth, "_filter_setup", lambda args: filter_model)
    out = tmp_path / "out"
    assert main(_cli_args(tmp_path, out)) == 130
    kept = [_name(i) for i in range(scored) if i in AGREE]
    assert _files(out / "images") == kept == _files(out / "masks")
    assert len(_rows(out / SCORES_NAME)) == scored
    err = capsys.readouterr().err
    assert (
        "napari-segen synth export: interrupted while filtering: kept 3 of 4 scored pairs, "
        f"removed 1 below Dice 0.7 and 2 not scored; scores in {out / SCORES_NAME}"
    ) in err


# --- the Synthesize widget ---------------------------------------------------------------------
@pytest.mark.gui
def test_widget_cancel_while_filtering_says_what_is_left(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """Cancel pressed while the filter scores its 4th pair: that pair is the last scored
    (the worker stops at the next yield), and the status line names what is on disk."""
    import napari_segen.models.model_file as model_file
    import napari_segen.synthesis.generate as generate
    from napari_segen.widgets.synth_widget import SynthesizeWidget

    scored = 4
    filter_model = _filter_model()
    filter_model.module.wait_at = scored
    monkeypatch.setattr(generate, "load_generator", lambda path: _generator())
    monkeypatch.setattr(model_file, "load_model", lambda path: filter_model)
    viewer = make_napari_viewer()
    viewer.add_labels(_mask().astype(np.uint8), name="mask")
    w = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(w, name="Synthesize")
    # on the class: undoing a patch on a magicgui Container instance raises, and the
    # patches undone after it (load_model above) would then stay for the rest of the session
    monkeypatch.setattr(SynthesizeWidget, "filter_model_path", lambda self: tmp_path / "stub")
    out = tmp_path / "out"
    w.export_dir.value = out
    w.n_pairs.value = N
    w.device.value = "cpu"
    w.min_dice.value = 0.7
    w.export()
    try:
        qtbot.waitUntil(filter_model.module.waiting.is_set, timeout=60_000)
        w.cancel_button.changed.emit(True)
    finally:
        filter_model.module.release.set()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60_000)

    assert w.runner.cancelled and w.last_filter is None
    kept = [_name(i) for i in range(scored) if i in AGREE]
    assert _files(out / "images") == kept == _files(out / "masks")
    assert len(_rows(out / SCORES_NAME)) == scored
    assert w.status.value == (
        f"cancelled while filtering: kept 3 of 4 scored pairs, removed 1 below Dice 0.7 and "
        f"2 not scored; scores in {out / SCORES_NAME}"
    )
