"""Synthetic pairs made safe: NCHW one-hot, a capped share, pre-training, a quality filter,
mask mixing (issue 9, the cheap parts)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from napari_segen.cli import main
from napari_segen.data.corrections import with_replay
from napari_segen.data.datasets import LabeledImage, SegmentationDataset
from napari_segen.data.mixing import (
    SYNTHETIC_MAX_REPEAT,
    mix_copies,
    mix_sources,
    mixed_share,
)
from napari_segen.data.sources import FolderSource, PairsSource
from napari_segen.models import ModelSpec, load_model, save_model
from napari_segen.models.model_file import LoadedModel
from napari_segen.models.pix2pix import PatchDiscriminator, Pix2PixGenerator, one_hot_labels
from napari_segen.synthesis.filter import (
    filter_pairs,
    foreground_dice,
    iter_filter_files,
    read_scores,
)
from napari_segen.synthesis.masks import (
    MaskTransformConfig,
    cut_paste,
    iter_random_masks,
    multiscale_crop,
)
from napari_segen.training.assembly import NewModel, assemble_segmentation
from napari_segen.training.synthetic_data import SyntheticData
from napari_segen.utils.atomic import OverwriteError
from napari_segen.utils.generators import drive

pytestmark = pytest.mark.usefixtures("one_thread")


def _old_one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    """What ``one_hot_labels`` returned before the fix: a channels-last view."""
    onehot = F.one_hot(labels.clamp_min(0), k).permute(0, 3, 1, 2).float()
    return onehot * (labels >= 0)[:, None].float()


# --- 1. one-hot layout ------------------------------------------------------------------------
def test_one_hot_is_contiguous_nchw_with_the_same_values():
    labels = torch.randint(-1, 3, (2, 16, 12))
    new = one_hot_labels(labels, 3)
    old = _old_one_hot(labels, 3)
    assert new.is_contiguous() and new.shape == (2, 3, 16, 12) and new.dtype == torch.float32
    assert not old.is_contiguous()  # the layout the fix removes
    assert torch.equal(new, old)
    assert (new[(labels < 0)[:, None].expand_as(new)] == 0).all()
    cl = one_hot_labels(labels, 3, channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, new)


def test_generator_and_discriminator_outputs_are_unchanged():
    torch.manual_seed(0)
    gen = Pix2PixGenerator(3, 1, ngf=4, depth=3).eval()
    disc = PatchDiscriminator(3, 1, ndf=4, n_layers=2).eval()
    labels = torch.randint(0, 3, (1, 32, 24))
    with torch.no_grad():
        before = gen(_old_one_hot(labels, 3))  # a float one-hot goes in as it is
        after = gen(labels)
        torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(disc(labels, after), disc(_old_one_hot(labels, 3), before))


def test_generator_file_saved_before_the_change_loads_and_draws_the_same(tmp_path):
    """The file format never held the encoding: a file written with the old code path
    loads, and the new encoding draws what the old one drew."""
    torch.manual_seed(1)
    gen = Pix2PixGenerator(2, 1, ngf=4, depth=3).eval()
    spec = ModelSpec("pix2pix_generator", {"num_classes": 2, "out_channels": 1, "ngf": 4,
                     "depth": 3}, 1, ["bg", "fg"], task="synthesis")  # fmt: skip
    labels = torch.randint(0, 2, (1, 32, 32))
    with torch.no_grad():
        drawn_before = gen.model(_old_one_hot(labels, 2))  # the old forward, step by step
    path = save_model(tmp_path / "gen.safetensors", gen, spec)
    loaded = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module.eval()(labels), drawn_before)


# --- 2. mixing with a capped share ------------------------------------------------------------
def _pair(value: int, size: int = 32, name: str = "") -> LabeledImage:
    rng = np.random.default_rng(value)
    image = rng.integers(0, 255, (size, size)).astype(np.uint8)
    mask = (rng.random((size, size)) > 0.5).astype(np.int64)
    return LabeledImage(image, mask, name or f"p{value}")


def _crop_sources(pairs: list[LabeledImage], synth: set[int], n: int = 600) -> float:
    """Share of ``n`` seeded crops of one epoch drawn from the pairs whose id is in ``synth``."""
    ds = SegmentationDataset(pairs, 1, {"mode": "percentile"}, 16, n, None, seed=0)
    drawn: list[int] = []
    padded = ds.sampler._padded

    def record(i):
        drawn.append(i)
        return padded(i)

    ds.sampler._padded = record
    for k in range(n):
        ds[k]
    return sum(id(pairs[i]) in synth for i in drawn) / n


@pytest.mark.parametrize("share", [0.1, 0.2, 0.3])
def test_synthetic_share_holds_in_the_sampled_crops(share):
    real = [_pair(i) for i in range(4)]
    synth = [_pair(100 + i) for i in range(16)]
    mixed = mix_sources(real, synth, share, SYNTHETIC_MAX_REPEAT, at_most=True)
    got = _crop_sources(mixed, {id(p) for p in synth})
    expected = mixed_share(real, synth, share, SYNTHETIC_MAX_REPEAT, at_most=True)
    assert expected <= share + 1e-9  # the cap: rounding never gives more
    assert abs(expected - share) < 0.03
    assert abs(got - expected) < 0.05  # 600 seeded crops


def test_share_zero_draws_no_synthetic_crop():
    real = [_pair(i) for i in range(3)]
    synth = [_pair(100 + i) for i in range(5)]
    mixed = mix_sources(real, synth, 0.0)
    assert mixed == real
    assert _crop_sources(mixed, {id(p) for p in synth}, 100) == 0


def test_replay_goes_through_the_same_rule():
    a = [_pair(1)]
    old = [_pair(2), _pair(3)]
    assert with_replay(a, old, 0.5) == mix_sources(a, old, 0.5)
    assert mix_copies(100, 600, 0.5) == (6, 1, 0.5)
    with pytest.raises(ValueError):
        mix_sources(a, old, 1.0)


def test_synthetic_share_above_half_is_refused():
    with pytest.raises(ValueError, match="between 0 and 0.5"):
        SyntheticData(PairsSource([_pair(1)]), share=0.6)


def test_assembly_mixes_synthetic_pairs_into_training_only():
    real = [_pair(i, name=f"real{i}") for i in range(5)]
    synth = [_pair(100 + i, name=f"synth{i}") for i in range(8)]
    run = drive(
        assemble_segmentation(
            [PairsSource(real)],
            start=NewModel("unet", 2, 4, 1),
            val_fraction=0.2,
            synthetic=SyntheticData(PairsSource(synth, name="synth"), 0.25, "mix"),
        )
    )
    assert not any(p.name.startswith("synth") for p in run.val)  # never validated on
    n_synth = sum(p.name.startswith("synth") for p in run.train)
    assert n_synth >= len(synth) and not run.pretrain
    prov = run.provenance["synthetic"]
    assert prov["mode"] == "mix" and prov["share"] == 0.25 and 0 < prov["crop_share"] <= 0.25


# --- 2b. the CLI: share 0 message, pretrain in two stages ---------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """real/ and synth/ image and mask folders of 40x40 blob images."""
    root = tmp_path_factory.mktemp("mixing")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    for kind, n in (("real", 4), ("synth", 3)):
        for sub in ("images", "masks"):
            (root / kind / sub).mkdir(parents=True)
        for k in range(n):
            mask = np.zeros((40, 40), np.uint8)
            cy, cx = rng.integers(10, 30, 2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1
            img = (40 + 150 * mask + rng.normal(0, 8, mask.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / kind / "images" / f"{kind}{k}.png")
            Image.fromarray(mask).save(root / kind / "masks" / f"{kind}{k}.png")
    return root


def _train_args(folders, out, *extra):
    return [
        "train", "--images", str(folders / "real" / "images"),
        "--masks", str(folders / "real" / "masks"),
        "--synthetic-images", str(folders / "synth" / "images"),
        "--synthetic-masks", str(folders / "synth" / "masks"),
        "--epochs", "1", "--crop-size", "32", "--depth", "2", "--base-channels", "4",
        "--batch-size", "2", "--samples-per-epoch", "4", "--device", "cpu", "--quiet",
        "--out", str(out), *extra,
    ]  # fmt: skip


def test_cli_share_zero_says_synthetic_pairs_are_off(folders, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(_train_args(folders, out)) == 0
    err = capsys.readouterr().err
    assert "synthetic pairs are not mixed into training unless you ask" in err
    assert "synthetic" not in json.loads(out.with_suffix(".json").read_text())["provenance"]


def test_cli_refuses_a_share_above_half(folders, tmp_path, capsys):
    code = main(_train_args(folders, tmp_path / "m.safetensors", "--synthetic-share", "0.6"))
    assert code != 0
    assert "refused" in capsys.readouterr().err


def test_cli_mix_records_the_synthetic_source(folders, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(_train_args(folders, out, "--synthetic-share", "0.3")) == 0
    prov = json.loads(out.with_suffix(".json").read_text())["provenance"]
    syn = prov["synthetic"]
    assert syn["mode"] == "mix" and syn["share"] == 0.3 and syn["images"].endswith("images")
    assert "mixing 3 synthetic pair(s)" in capsys.readouterr().err


def test_cli_pretrain_runs_two_stages_and_records_them(folders, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert main(_train_args(folders, out, "--synthetic-pretrain")) == 0
    err = capsys.readouterr().err
    assert "stage 1 of 2" in err and "stage 2 of 2" in err
    first = tmp_path / "m.pretrain.safetensors"
    assert first.is_file() and out.is_file()
    p1 = json.loads(first.with_suffix(".json").read_text())["provenance"]
    p2 = json.loads(out.with_suffix(".json").read_text())["provenance"]
    assert p1["stage"].startswith("synthetic pretrain") and p1["synthetic"]["mode"] == "pretrain"
    assert p2["stage"].startswith("fine-tune") and p2["synthetic"]["pretrained_model"] == str(first)
    # nothing is replaced without --overwrite: both stages' files are checked first
    assert main(_train_args(folders, out, "--synthetic-pretrain")) != 0


# --- 3. the quality filter --------------------------------------------------------------------
class _Threshold(nn.Module):
    """A fixed 1x1 conv: foreground where the normalised intensity is above 0.5."""

    size_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 20.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -10.0]))

    def forward(self, x):
        return self.conv(x)


def _threshold_model() -> LoadedModel:
    spec = ModelSpec("unet", {}, 1, ["background", "foreground"],
                     normalization={"mode": "range", "min": 0, "max": 255})  # fmt: skip
    return LoadedModel(_Threshold().eval(), spec)


def _filter_case():
    mask = np.zeros((32, 32), np.int64)
    mask[8:24, 8:24] = 1
    bright = (mask * 200 + 20).astype(np.uint8)  # the model sees exactly the mask
    inverted = ((1 - mask) * 200 + 20).astype(np.uint8)  # it sees the opposite
    flat = np.full((32, 32), 20, np.uint8)  # dark: no foreground at all
    return [("agree.png", bright, mask), ("inverted.png", inverted, mask), ("flat.png", flat, mask)]


def test_filter_keeps_pairs_the_model_agrees_with():
    result = filter_pairs(_threshold_model(), _filter_case(), 0.7, tile_size=None)
    by = {s.name: s for s in result.scores}
    assert by["agree.png"].kept and by["agree.png"].dice == pytest.approx(1.0)
    assert not by["inverted.png"].kept and by["inverted.png"].dice == pytest.approx(0.0)
    assert not by["flat.png"].kept and "no foreground" in by["flat.png"].reason
    assert "kept 1 of 3" in result.summary()
    assert foreground_dice(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0


def _rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_filter_files_removes_dropped_pairs_and_writes_scores(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    images, masks = [], []
    for name, image, mask in _filter_case():
        images.append(tmp_path / "images" / name)
        masks.append(tmp_path / "masks" / name)
        Image.fromarray(image).save(images[-1])
        Image.fromarray(mask.astype(np.uint8)).save(masks[-1])
    scores = tmp_path / "scores.csv"
    model = _threshold_model()
    result = drive(iter_filter_files(model, images, masks, 0.7, scores_path=scores, tile_size=None))
    assert [s.name for s in result.kept] == ["agree.png"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["agree.png"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["agree.png"]
    rows = _rows(scores)
    assert [(r["name"], r["kept"]) for r in rows] == [
        ("agree.png", "1"), ("inverted.png", "0"), ("flat.png", "0")]  # fmt: skip
    assert [s.name for s in read_scores(scores)] == ["agree.png", "inverted.png", "flat.png"]
    with pytest.raises(OverwriteError):  # scores.csv is never replaced without overwrite
        drive(iter_filter_files(model, images[:1], masks[:1], 0.7, scores_path=scores))


def test_cli_export_with_filter_reports_and_writes_scores(folders, tmp_path, capsys):
    torch.manual_seed(0)
    gen = Pix2PixGenerator(2, 1, ngf=4, depth=3).eval()
    spec = ModelSpec("pix2pix_generator", {"num_classes": 2, "out_channels": 1, "ngf": 4,
                     "depth": 3}, 1, ["bg", "fg"], task="synthesis")  # fmt: skip
    gpath = save_model(tmp_path / "gen.safetensors", gen, spec)
    out = tmp_path / "pairs"
    args = [
        "synth", "export", "--masks", str(folders / "real" / "masks"), "--model", str(gpath),
        "--n", "3", "--out", str(out), "--device", "cpu", "--quiet", "--cutpaste-p", "0.5",
        "--filter-model", "default", "--min-dice", "0",
    ]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out.strip().splitlines()[-1])
    assert res["pairs"] == 3 and res["dropped"] == 0 and "kept 3 of 3" in captured.err
    assert len(_rows(out / "scores.csv")) == 3
    assert main(args) != 0  # pairs and scores.csv exist: refused without --overwrite
    capsys.readouterr()
    assert main([*args[:-1], "1.01"]) != 0  # --min-dice outside [0, 1]
    capsys.readouterr()
    assert main([*args[:-1], "1", "--overwrite"]) == 0
    captured = capsys.readouterr()
    res = json.loads(captured.out.strip().splitlines()[-1])
    rows = _rows(out / "scores.csv")
    kept = [r["name"] for r in rows if r["kept"] == "1"]
    assert res["pairs"] == len(kept) and res["dropped"] == 3 - len(kept)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(kept)
    if res["dropped"]:
        assert "dropped" in captured.err


# --- 4. mask mixing ---------------------------------------------------------------------------
def _masks():
    a = np.zeros((24, 32), np.int64)
    a[4:12, 4:20] = 1
    b = np.full((24, 32), 2, np.int64)
    b[10:20, 10:30] = 0
    return [a, b]


def test_mask_mixing_is_seeded_and_keeps_classes():
    cfg = MaskTransformConfig(cutpaste_p=1.0, crop_p=1.0, elastic_alpha=0)
    one = [m for _, m in iter_random_masks(_masks(), 6, cfg, seed=3)]
    again = [m for _, m in iter_random_masks(_masks(), 6, cfg, seed=3)]
    other = [m for _, m in iter_random_masks(_masks(), 6, cfg, seed=4)]
    assert all(np.array_equal(x, y) for x, y in zip(one, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(one, other, strict=True))
    for m in one:
        assert m.shape == (24, 32) and m.dtype == np.int64 and set(np.unique(m)) <= {0, 1, 2}
    # mask a (classes 0, 1) gets class 2 from b somewhere: layouts no real mask has
    assert any(2 in m and 1 in m for m in one[::2])


def test_mixing_is_off_by_default_so_old_seeds_give_old_masks():
    plain = MaskTransformConfig()
    assert plain.cutpaste_p == 0 and plain.crop_p == 0
    a = [m for _, m in iter_random_masks(_masks(), 4, plain, seed=0)]
    b = [m for _, m in iter_random_masks(_masks(), 4, MaskTransformConfig(), seed=0)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError):
        MaskTransformConfig(crop_scales=(0.0,))
    with pytest.raises(ValueError):
        MaskTransformConfig(cutpaste_p=2)


def test_cut_paste_and_multiscale_crop():
    a, b = _masks()
    rng = np.random.default_rng(0)
    pasted = cut_paste(a, b, rng, (0.5, 0.5))
    changed = pasted != a
    assert changed.any() and set(np.unique(pasted[changed])) <= {0, 2}
    crop = multiscale_crop(a, np.random.default_rng(0), (0.5,))
    assert crop.shape == a.shape and set(np.unique(crop)) <= {0, 1}


def test_folder_source_for_synthetic_pairs_describes_itself(folders):
    src = FolderSource(folders / "synth" / "images", folders / "synth" / "masks")
    assert SyntheticData(src, 0.2).used and not SyntheticData(src, 0.0).used
    assert SyntheticData(src, 0.0, "pretrain").used
