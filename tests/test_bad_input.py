"""Hostile and clumsy input: no traceback, no lost or mixed-up data, no silent wrong result.

The matrix below runs ``napari-segen`` on small generated fixtures, one case per
kind of bad input, fault or race (docs/reliability.md keeps the totals). For
every case it checks the exit code, that stderr holds one-line messages and no
traceback, and the files of the case's folder byte for byte before and after:
nothing that was there may change or go, only the expected outputs may appear,
and no temporary file may be left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_segen import _reader
from napari_segen.cli import main
from napari_segen.data.image_io import (
    ImageReadError,
    MaskValuesError,
    check_mask_classes,
    image_info,
    read_image,
    read_mask,
)
from napari_segen.data.normalize import normalize_image
from napari_segen.models import ModelSpec, build_model, save_model
from napari_segen.models.model_file import ModelFileError, load_model, write_safetensors
from napari_segen.utils import atomic
from napari_segen.utils.atomic import (
    OutputCollisionError,
    OverwriteError,
    UnsafeNameError,
    atomic_path,
    clean_stale_temps,
    confined_path,
    plan_outputs,
)


# --- fixtures and helpers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory, one_thread) -> SimpleNamespace:
    """A tiny U-Net and a tiny pix2pix generator as model files (outside the cases' folders)."""
    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("models")
    unet = ModelSpec(
        "unet",
        {"in_channels": 1, "num_classes": 2, "depth": 1, "base_channels": 2},
        1,
        ["background", "foreground"],
    )
    save_model(d / "unet.safetensors", build_model("unet", **unet.arch_kwargs), unet)
    gen = ModelSpec(
        "pix2pix_generator",
        {"num_classes": 2, "out_channels": 1, "ngf": 2, "depth": 2, "dropout": 0.0},
        1,
        ["background", "object"],
        normalization={"mode": "range", "min": 0.0, "max": 255.0, "output_dtype": "uint8"},
        task="synthesis",
    )
    save_model(d / "gen.safetensors", build_model(gen.architecture, **gen.arch_kwargs), gen)
    return SimpleNamespace(unet=d / "unet.safetensors", gen=d / "gen.safetensors")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def gray(seed: int = 0, shape=(32, 32)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = ((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2) < (shape[0] / 4) ** 2
    noise = np.random.default_rng(seed).normal(0, 8, shape)
    return (60 + 120 * disc + noise).clip(0, 255).astype(np.uint8)


def disc_mask(shape=(32, 32)) -> np.ndarray:
    return (gray(0, shape) > 120).astype(np.uint8)


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def tif(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array, **kwargs)
    return path


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG that claims to be ``width`` x ``height`` (8-bit gray)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiff_header(width: int = 100_000, height: int = 100_000, bits: int = 16) -> bytes:
    """A ~120-byte TIFF whose one strip claims ``width`` x ``height`` pixels (18.6 GiB)."""
    nbytes = min(width * height * bits // 8, 2**32 - 1)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, height),
               (279, 4, 1, nbytes)]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def deny_writes(monkeypatch, under: Path, code: int, message: str) -> None:
    """Make creating files under ``under`` fail like a protected folder / read-only disk.

    (The suite may run as root, where chmod does not stop writes.)
    """
    real_mkstemp, real_tempfile = tempfile.mkstemp, tempfile.TemporaryFile

    def refuse(folder) -> None:
        if folder is not None and Path(folder).resolve().is_relative_to(under.resolve()):
            raise OSError(code, message, str(folder))

    def mkstemp(*args, dir=None, **kwargs):
        refuse(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    def temporary_file(*args, dir=None, **kwargs):
        refuse(dir)
        return real_tempfile(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)


# --- the matrix --------------------------------------------------------------------------------
@dataclass
class Case:
    """One hostile or clumsy use.

    ``build(t)`` makes the files in ``t.dir`` (and may patch through ``t.mp``)
    and returns the command line; ``code`` and ``message`` (a regex, found in
    stderr) are what must come back; ``new`` the files that may appear (all of
    them must); ``check(t)`` anything else to assert.
    """

    build: Callable[[SimpleNamespace], list[str]]
    code: int
    message: str = ""
    new: tuple[str, ...] = ()
    check: Callable[[SimpleNamespace], None] | None = None
    lines: int = 1


CASES: dict[str, Case] = {}


def case(name: str, code: int, message: str = "", new=(), check=None, lines: int = 1):
    def register(build):
        CASES[name] = Case(build, code, message, tuple(new), check, lines)
        return build

    return register


def predict(t, *inputs: str, extra=()) -> list[str]:
    out = t.dir / "out"
    return ["predict", *[str(t.dir / i) for i in inputs], "-o", str(out), "-m", str(t.m.unet),
            "-q", "--device", "cpu", "--tile-size", "32", *extra]  # fmt: skip


def train(t, images="images", masks="masks", extra=()) -> list[str]:
    return ["train", "--images", str(t.dir / images), "--masks", str(t.dir / masks),
            "--epochs", "1", "--samples-per-epoch", "2", "--batch-size", "1", "--crop-size",
            "16", "--depth", "1", "--base-channels", "2", "--device", "cpu", "-q", "--no-augment",
            "-o", str(t.dir / "out" / "m.safetensors"), *extra]  # fmt: skip


def image_folders(t, n: int = 2) -> None:
    for i in range(n):
        png(t.dir / "images" / f"{i}.png", gray(i))
        png(t.dir / "masks" / f"{i}.png", disc_mask())


# images ----------------------------------------------------------------------------------------
def _nan_image(t):
    img = gray().astype(np.float32)
    img.flat[::120] = np.nan  # 0.8% of the pixels
    tif(t.dir / "nan.tif", img)
    return predict(t, "nan.tif")


case("image: float with 0.8% NaN", 1, r"skipped .*nan.tif: .*holds 9 NaN")(_nan_image)


@case("image: infinite values", 1, r"inf.tif: .*NaN or infinite")
def _inf_image(t):
    img = gray().astype(np.float64)
    img[3, 4] = np.inf
    tif(t.dir / "inf.tif", img)
    return predict(t, "inf.tif")


@case("image: 2-channel (H, W, 2)", 1, r"2 channels per pixel")
def _two_channels(t):
    tif(t.dir / "two.tif", np.stack([gray(), gray(1)], -1))
    return predict(t, "two.tif")


@case("image: 6-band (H, W, 6)", 1, r"6 channels per pixel")
def _six_channels(t):
    tif(t.dir / "six.tif", np.stack([gray(i) for i in range(6)], -1))
    return predict(t, "six.tif")


@case("image: gray + alpha PNG opens as gray", 0, new=["out/la_labels.png"])
def _gray_alpha(t):
    Image.fromarray(np.stack([gray(), np.full((32, 32), 255, np.uint8)], -1)).save(t.dir / "la.png")
    return predict(t, "la.png")


@case("image: 1D TIFF", 1, r"not an image: shape \(7,\)")
def _one_d(t):
    tif(t.dir / "line.tif", np.arange(7, dtype=np.uint8))
    return predict(t, "line.tif")


@case("image: complex values", 1, r"complex")
def _complex(t):
    tif(t.dir / "c.tif", gray().astype(np.complex64))
    return predict(t, "c.tif")


@case("image: 74-byte PNG claiming 100000 x 100000", 1, r"NAPARI_SEGEN_MAX_PIXELS=10000000000")
def _png_bomb(t):
    (t.dir / "bomb.png").write_bytes(png_header(100_000, 100_000))
    return predict(t, "bomb.png")


@case("image: 122-byte TIFF claiming 18.6 GiB", 1, r"18\.6 GiB.*NAPARI_SEGEN_MAX_PIXELS")
def _tiff_bomb(t):
    (t.dir / "bomb.tif").write_bytes(tiff_header())
    return predict(t, "bomb.tif")


@case("image: above a lowered limit", 1, r"a.png is 32 x 32 \(1,024 pixels.*more than the 1,000")
def _over_limit(t):
    t.mp.setenv("NAPARI_SEGEN_MAX_PIXELS", "1000")
    png(t.dir / "a.png", gray())
    return predict(t, "a.png")


@case("image: limit raised opens what Pillow alone refuses", 0, new=["out/big_labels.png"])
def _pillow_refuses(t):
    t.mp.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone: >200 px is a "bomb"
    png(t.dir / "big.png", gray())
    return predict(t, "big.png")


@case("image: bad NAPARI_SEGEN_MAX_PIXELS", 1, r"NAPARI_SEGEN_MAX_PIXELS='lots'")
def _bad_env(t):
    t.mp.setenv("NAPARI_SEGEN_MAX_PIXELS", "lots")
    png(t.dir / "a.png", gray())
    return predict(t, "a.png")


@case("image: truncated PNG", 1, r"cannot read .*cut.png as an image")
def _truncated_png(t):
    png(t.dir / "whole.png", gray())
    (t.dir / "cut.png").write_bytes((t.dir / "whole.png").read_bytes()[:60])
    (t.dir / "whole.png").unlink()
    return predict(t, "cut.png")


@case("image: text file named .png", 1, r"cannot read .*notes.png")
def _text_png(t):
    (t.dir / "notes.png").write_text("not an image")
    return predict(t, "notes.png")


@case("image: empty file", 1, r"cannot read .*empty.tif")
def _empty_file(t):
    (t.dir / "empty.tif").write_bytes(b"")
    return predict(t, "empty.tif")


@case(
    "image: bad ones in a batch are skipped, the good ones done",
    1,
    r"2 of 3 input\(s\) failed and were skipped: .*bad.png.*nan.tif",
    new=["out/good_labels.png"],
    lines=3,
)
def _mixed_batch(t):
    png(t.dir / "in" / "good.png", gray())
    (t.dir / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    img = gray().astype(np.float32)
    img[0, 0] = np.nan
    tif(t.dir / "in" / "nan.tif", img)
    return predict(t, "in")


@case("image: empty folder", 2, r"no image files .* in folder")
def _empty_folder(t):
    (t.dir / "none").mkdir()
    return predict(t, "none")


# masks -----------------------------------------------------------------------------------------
@case("mask: the image folder given as --masks", 2, r"\d.png holds \d+ distinct values")
def _images_as_masks(t):
    for i in range(2):
        png(t.dir / "images" / f"{i}.png", (np.random.default_rng(i).random((32, 32)) * 255)
            .astype(np.uint8))  # fmt: skip
    return train(t, masks="images")


@case("mask: one stray pixel of 60000", 2, r"1.png holds 60000 \(1 pixel\)")
def _stray_value(t):
    image_folders(t)
    mask = disc_mask().astype(np.uint16)
    mask[0, 0] = 60000
    png(t.dir / "masks" / "1.png", mask)
    return train(t)


@case(
    "mask: class above the declared classes",
    2,
    r"1.png holds the class value\(s\) 5 \(\d+ pixels\) but there are 2 classes",
)
def _above_declared(t):
    image_folders(t)
    png(t.dir / "masks" / "1.png", disc_mask() * 5)
    return train(t, extra=["--classes", "bg,fg"])


@case("mask: NaN in a float mask", 2, r"m.tif holds 1 NaN or infinite value")
def _nan_mask(t):
    png(t.dir / "images" / "m.png", gray())
    mask = disc_mask().astype(np.float32)
    mask[1, 1] = np.nan
    tif(t.dir / "masks" / "m.tif", mask)
    return train(t)


@case("mask: fractional values", 2, r"non-integer values")
def _fraction_mask(t):
    png(t.dir / "images" / "m.png", gray())
    tif(t.dir / "masks" / "m.tif", disc_mask() * 0.5)
    return train(t)


@case("mask: colour image as mask", 2, r"colour image, not a mask")
def _rgb_mask(t):
    png(t.dir / "images" / "m.png", gray())
    png(t.dir / "masks" / "m.png", np.stack([disc_mask() * 255] * 3, -1))
    return train(t)


@case("mask: 2-channel mask", 2, r"2 channels per pixel")
def _two_channel_mask(t):
    png(t.dir / "images" / "m.png", gray())
    tif(t.dir / "masks" / "m.tif", np.stack([disc_mask()] * 2, -1))
    return train(t)


@case("mask: classes the generator does not know", 1, r"skipped .*m3.png: .*class value\(s\) 3")
def _generate_unknown_class(t):
    png(t.dir / "m3.png", disc_mask() * 3)
    return ["synth", "generate", str(t.dir / "m3.png"), "-m", str(t.m.gen), "-o",
            str(t.dir / "out"), "-q", "--device", "cpu"]  # fmt: skip


@case("mask: a (Z, H, W) stack generates a stack", 0, new=["out/stack.tif"])
def _generate_stack(t):
    tif(t.dir / "stack.tif", np.stack([disc_mask()] * 3), photometric="minisblack")
    return ["synth", "generate", str(t.dir / "stack.tif"), "-m", str(t.m.gen), "-o",
            str(t.dir / "out"), "-q", "--device", "cpu"]  # fmt: skip


def _stack_is_stack(t):
    out = tifffile.imread(t.dir / "out" / "stack.tif")
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8


CASES["mask: a (Z, H, W) stack generates a stack"].check = _stack_is_stack


# model files -----------------------------------------------------------------------------------
def model_copy(t, edit=None, stored_edit=None, name="m") -> Path:
    """A copy of the tiny U-Net in the case's folder, its sidecar edited by ``edit(dict)``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = t.dir / "model" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    with safe_open(str(t.m.unet), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = dict(f.metadata())
    side = json.loads(t.m.unet.with_suffix(".json").read_text())
    if stored_edit is not None:
        stored = json.loads(meta["napari_segen"])
        stored_edit(stored)
        meta["napari_segen"] = json.dumps(stored)
    save_file(tensors, str(path), metadata=meta)
    if edit is not None:
        edit(side)
    path.with_suffix(".json").write_text(json.dumps(side) if edit is not False else "")
    return path


def predict_with(t, model: Path) -> list[str]:
    png(t.dir / "a.png", gray())
    return ["predict", str(t.dir / "a.png"), "-o", str(t.dir / "out"), "-m", str(model), "-q"]


def _sidecar(**changes):
    def edit(d):
        for key, value in changes.items():
            if "." in key:
                outer, inner = key.split(".")
                d[outer][inner] = value
            else:
                d[key] = value

    return edit


for _name, _changes, _message in [
    ("class_names is a number", {"class_names": 5}, r"class_names must be a list of names"),
    ("arch_kwargs is a list", {"arch_kwargs": [1]}, r"arch_kwargs must be an object"),
    ("in_channels is text", {"in_channels": "x"}, r"in_channels must be a whole number"),
    ("normalization is text", {"normalization": "no"}, r"normalization must be an object"),
    ("percentiles upside down", {"normalization.low": 99.0, "normalization.high": 1.0},
     r"0 <= low < high <= 100"),
    ("unknown architecture", {"architecture": "resnet9000"}, r"unknown architecture 'resnet9000'"),
    ("depth 20", {"arch_kwargs.depth": 20}, r"depth must be a whole number from 1 to 12"),
    ("base_channels 4096 (a 5 GB network)", {"arch_kwargs.base_channels": 4096},
     r"weights do not match the described unet .*of another shape"),
    ("num_classes disagrees with class_names", {"arch_kwargs.num_classes": 3},
     r"arch_kwargs.num_classes is 3 but the description says 2"),
    ("edited class names", {"class_names": ["sky", "sea"]},
     r"m.json and the description stored in m.safetensors differ \(class_names\)"),
    ("task is not a task", {"task": "painting"}, r"task must be segmentation or synthesis"),
    ("NaN in normalization", {"normalization.mode": "range", "normalization.min": float("nan"),
                              "normalization.max": 1.0}, r"normalization.min must be a finite"),
]:  # fmt: skip

    def _build(t, _changes=_changes):
        return predict_with(t, model_copy(t, _sidecar(**_changes)))

    case(f"model: sidecar {_name}", 2, _message)(_build)


@case("model: sidecar is not JSON", 2, r"m.json is not valid JSON")
def _sidecar_not_json(t):
    path = model_copy(t)
    path.with_suffix(".json").write_text("{oops")
    return predict_with(t, path)


@case("model: sidecar nested 100000 deep", 2, r"m.json is not valid JSON")
def _sidecar_deep(t):
    path = model_copy(t)
    path.with_suffix(".json").write_text("[" * 100_000 + "]" * 100_000)
    return predict_with(t, path)


@case("model: weights file is garbage", 2, r"not a valid safetensors file")
def _garbage_weights(t):
    path = model_copy(t)
    path.write_bytes(b"\x00" * 64)
    return predict_with(t, path)


@case("model: weights file cut in half", 2, r"not a valid safetensors file")
def _cut_weights(t):
    path = model_copy(t)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return predict_with(t, path)


@case("model: no description anywhere", 2, r"has no description")
def _no_description(t):
    from safetensors.torch import load_file, save_file

    path = t.dir / "model" / "bare.safetensors"
    path.parent.mkdir()
    save_file(load_file(str(t.m.unet)), str(path))
    return predict_with(t, path)


@case("model: a segmentation model as generator", 2, r"is a segmentation model, not a pix2pix")
def _wrong_task(t):
    png(t.dir / "m.png", disc_mask())
    return ["synth", "generate", str(t.dir / "m.png"), "-m", str(t.m.unet), "-o",
            str(t.dir / "out"), "-q"]  # fmt: skip


# writes ----------------------------------------------------------------------------------------
@case("write: predict --out is the input folder, --overwrite", 2, r"would replace the input")
def _out_is_input(t):
    png(t.dir / "in" / "a.png", gray())
    png(t.dir / "in" / "a_labels.png", disc_mask())  # an earlier run's labels, now an input
    args = predict(t, "in", extra=["--overwrite"])
    args[args.index("-o") + 1] = str(t.dir / "in")
    return args


@case(
    "write: x and x_probs do not collide (labels are x_labels)",
    0,
    new=["out/x_labels.tif", "out/x_probs.tif", "out/x_probs_labels.tif", "out/x_probs_probs.tif"],
)
def _probs_collide(t):
    png(t.dir / "in" / "x.png", gray())
    png(t.dir / "in" / "x_probs.png", gray(1))
    return predict(t, "in", extra=["--probabilities", "--format", "tif"])


@case(
    "write: a.png and a.tif give one label file",
    2,
    r"two outputs would be written to .*a_labels.png",
)
def _same_stem(t):
    png(t.dir / "in" / "a.png", gray())
    tif(t.dir / "in" / "a.tif", gray(1))
    return predict(t, "in")


@case("write: A.png and a.png on any file system", 2, r"two outputs would be written")
def _case_collide(t):
    png(t.dir / "in1" / "A.png", gray())
    png(t.dir / "in2" / "a.png", gray(1))
    return predict(t, "in1", "in2")


@case("write: existing output kept", 2, r"a_labels.png already exists")
def _existing_output(t):
    png(t.dir / "a.png", gray())
    (t.dir / "out").mkdir()
    (t.dir / "out" / "a_labels.png").write_bytes(b"someone's labels")
    return predict(t, "a.png")


@case(
    "write: a second run writes in between (race)",
    1,
    r"a_labels.png already exists",
    new=["out/a_labels.png"],
)
def _race(t):
    import napari_segen.inference as inference

    real = inference.iter_predict

    def other_run_first(*args, **kwargs):
        (t.dir / "out" / "a_labels.png").write_bytes(b"the other run's labels")
        return real(*args, **kwargs)

    t.mp.setattr(inference, "iter_predict", other_run_first)
    png(t.dir / "a.png", gray())
    return predict(t, "a.png")


def _race_kept(t):
    assert (t.dir / "out" / "a_labels.png").read_bytes() == b"the other run's labels"


CASES["write: a second run writes in between (race)"].check = _race_kept


def export(t, *extra: str) -> list[str]:
    png(t.dir / "m.png", disc_mask())
    return ["synth", "export", "--masks", str(t.dir / "m.png"), "-m", str(t.m.gen), "--n", "2",
            "-o", str(t.dir / "out"), "-q", "--device", "cpu", *extra]  # fmt: skip


for _prefix in ("../../x", "a/b", "/abs", ".hidden", "c:x"):
    case(f"write: synth export --prefix {_prefix}", 2, r"the prefix .* must be a plain name")(
        lambda t, _p=_prefix: export(t, "--prefix", _p)
    )


@case("write: synth export --size 100000 100000", 2, r"10,000,000,000 pixels")
def _export_giant(t):
    return export(t, "--size", "100000", "100000")


@case("write: synth export --n 0", 2, r"number of pairs must be")
def _export_none(t):
    return export(t, "--n", "0")


@case("write: synth export writes its pairs", 0,
      new=["out/images/s_0000.png", "out/images/s_0001.png", "out/masks/s_0000.png",
           "out/masks/s_0001.png"])  # fmt: skip
def _export_ok(t):
    return export(t, "--prefix", "s")


@case("write: demo --out with an earlier demo", 2, r"isbi_20_labels.png already exists")
def _demo_again(t):
    (t.dir / "demo").mkdir()
    (t.dir / "demo" / "isbi_20_labels.png").write_bytes(b"earlier demo")
    return ["demo", "--headless", "--out", str(t.dir / "demo"), "--device", "cpu"]


@case("write: synth generate output would replace its mask", 2, r"would replace the input")
def _generate_over_input(t):
    png(t.dir / "masks" / "m.png", disc_mask())
    return ["synth", "generate", str(t.dir / "masks"), "-m", str(t.m.gen), "-o",
            str(t.dir / "masks"), "-q", "--overwrite"]  # fmt: skip


# options ---------------------------------------------------------------------------------------
@case("option: train --crop-size 0", 2, r"the crop size must be at least 1, got 0")
def _crop_zero(t):
    image_folders(t)
    args = train(t)
    args[args.index("--crop-size") + 1] = "0"
    return args


@case("option: train --depth 40", 2, r"--depth 40 .*depth must be a whole number from 1 to 12")
def _depth_40(t):
    image_folders(t)
    args = train(t)
    args[args.index("--depth") + 1] = "40"
    return args


@case("option: train --depth 8 --base-channels 1024", 2, r"would hold [\d,]+ weights .* GiB")
def _giant_width(t):
    image_folders(t)
    args = train(t)
    args[args.index("--base-channels") + 1] = "1024"
    args[args.index("--depth") + 1] = "8"
    return args


@case("option: train --mask-map 0:1,x", 2, r"bad value map entry 'x'")
def _bad_mask_map(t):
    image_folders(t)
    return train(t, extra=["--mask-map", "0:1,x"])


@case("option: train --device tpu", 2, r"unknown device 'tpu'; choose one of auto")
def _device_tpu(t):
    image_folders(t)
    return train(t, extra=["--device", "tpu"])


@case("option: train --time-limit -5", 2, r"the time limit must be a positive number")
def _time_limit_negative(t):
    image_folders(t)
    return train(t, extra=["--time-limit", "-5"])


@case("option: predict --batch-size 0", 2, r"--batch-size must be 1 or more")
def _batch_zero(t):
    png(t.dir / "a.png", gray())
    return predict(t, "a.png", extra=["--batch-size", "0"])


@case("option: predict --format png for a stack", 1, r"s.tif is a stack; .*--format tif")
def _png_stack(t):
    tif(t.dir / "s.tif", np.stack([gray(), gray(1)]), photometric="minisblack")
    return predict(t, "s.tif", extra=["--format", "png"])


# faults ----------------------------------------------------------------------------------------
@case("fault: --out folder not writable", 2, r"out: Permission denied; check its permissions")
def _not_writable(t):
    png(t.dir / "a.png", gray())
    deny_writes(t.mp, t.dir / "out", errno.EACCES, "Permission denied")
    return predict(t, "a.png")


@case("fault: read-only file system", 2, r"Read-only file system; the disk is read-only")
def _read_only(t):
    png(t.dir / "a.png", gray())
    deny_writes(t.mp, t.dir / "out", errno.EROFS, "Read-only file system")
    return predict(t, "a.png")


@case("fault: disk full while writing labels", 2,
      r"out/a_labels.png: No space left on device; the disk is full")  # fmt: skip
def _disk_full(t):
    png(t.dir / "a.png", gray())

    def half_then_full(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    t.mp.setattr(Image.Image, "save", half_then_full)
    return predict(t, "a.png")


@case("fault: train --out not writable is found before any work", 2, r"Permission denied")
def _train_unwritable(t):
    image_folders(t)
    deny_writes(t.mp, t.dir / "out", errno.EACCES, "Permission denied")
    import napari_segen.training.assembly as assembly

    def never(*args, **kwargs):
        raise AssertionError("data were read before the output folder was checked")

    t.mp.setattr(assembly, "read_sources", never)
    return train(t)


@case("fault: disk full saving the model (SafetensorError)", 2,
      r"m.safetensors: No space left on device")  # fmt: skip
def _safetensors_full(t):
    from safetensors import SafetensorError

    import napari_segen.models.model_file as model_file

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No '
            'space left on device" })'
        )

    t.mp.setattr(model_file, "save_file", full)
    image_folders(t)
    return train(t, extra=["--val-split", "0"])


@case("fault: stale temp files of a dead run are cleaned", 0, new=["out/a_labels.png"])
def _stale_temps(t):
    png(t.dir / "a.png", gray())
    out = t.dir / "out"
    out.mkdir()
    t.stale = out / f".a.png.{atomic._HOST}-{dead_pid()}-abcdefgh.tmp.png"
    t.stale.write_bytes(b"half a file")
    atomic._cleaned.discard(atomic._key(out))
    return predict(t, "a.png")


def _stale_gone(t):
    assert not t.stale.exists()


CASES["fault: stale temp files of a dead run are cleaned"].check = _stale_gone


@pytest.mark.parametrize("name", list(CASES))
def test_matrix(name, models, tmp_path, capsys, monkeypatch):
    c = CASES[name]
    t = SimpleNamespace(dir=tmp_path / "case", m=models, mp=monkeypatch)
    t.dir.mkdir()
    argv = c.build(t)
    before = snapshot(t.dir)
    if name.startswith("fault: stale"):  # the one file that is meant to go
        before = {k: v for k, v in before.items() if ".tmp" not in k}
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    monkeypatch.undo()  # the checks below read files for real
    assert code == c.code, f"exit {code}, stderr: {err}"
    assert "Traceback" not in err + out
    assert not re.search(r'^\s*File ".*", line \d+', err, re.M), err
    if c.code:  # one line per message (other stderr lines are progress notes)
        messages = [line for line in err.splitlines() if line.startswith("napari-segen ")]
        assert len(messages) == c.lines, err
        assert re.search(c.message, err), err
    after = snapshot(t.dir)
    assert {k: after.get(k) for k in before} == before, "a file was changed or lost"
    assert sorted(set(after) - set(before)) == sorted(c.new), "unexpected files"
    assert not [k for k in after if ".tmp" in k], "a temporary file was left"
    if c.check is not None:
        c.check(t)


def test_the_matrix_covers_every_kind():
    kinds = {name.split(":")[0] for name in CASES}
    assert kinds == {"image", "mask", "model", "write", "option", "fault"}
    assert len(CASES) >= 60


# --- units behind the matrix -------------------------------------------------------------------
def test_two_writers_of_one_name_cannot_both_succeed(tmp_path):
    path = tmp_path / "labels.png"
    ready = threading.Barrier(4)
    results: dict[int, str] = {}

    def writer(k: int) -> None:
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(f"writer {k}".encode())
                ready.wait()
            results[k] = "wrote"
        except OverwriteError:
            results[k] = "refused"

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    winners = [k for k, r in results.items() if r == "wrote"]
    assert len(winners) == 1 and sorted(results.values()).count("refused") == 3
    assert path.read_bytes() == f"writer {winners[0]}".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["labels.png"]


def test_create_exclusive_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", src)

    monkeypatch.setattr(os, "link", no_links)
    with atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("first")
    with pytest.raises(OverwriteError), atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("second")
    assert (tmp_path / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_two_files_appear_together_or_not_at_all(tmp_path):
    paths = [tmp_path / "m.safetensors", tmp_path / "m.json"]
    with pytest.raises(OverwriteError), atomic.atomic_paths(paths) as (ta, tb):
        ta.write_bytes(b"weights")
        tb.write_text("description")
        paths[1].write_text("another writer's")  # made while we wrote
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    assert paths[1].read_text() == "another writer's"


def test_stale_temp_rules(tmp_path):
    dead = tmp_path / f".x.png.{atomic._HOST}-{dead_pid()}-abcdefgh.tmp.png"
    alive = tmp_path / f".y.png.{atomic._HOST}-{os.getpid()}-abcdefgh.tmp.png"
    foreign = tmp_path / ".z.png.0f0f0f-1-abcdefgh.tmp.png"
    old_foreign = tmp_path / ".w.png.0f0f0f-1-abcdefgh.tmp.png"
    legacy_old = tmp_path / ".v.png.abcdefgh.tmp.png"
    users = tmp_path / ".config"
    for p in (dead, alive, foreign, old_foreign, legacy_old, users):
        p.write_text("x")
    two_days_ago = time.time() - 2 * 86400
    for p in (old_foreign, legacy_old):
        os.utime(p, (two_days_ago, two_days_ago))
    removed = clean_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead.name, old_foreign.name, legacy_old.name])
    assert alive.exists() and foreign.exists() and users.exists()


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", "/abs", "c:x", "x\0y"])
def test_unsafe_names_are_refused(tmp_path, name):
    with pytest.raises(UnsafeNameError, match="plain name"):
        confined_path(tmp_path, name)


def test_plan_refuses_collisions_before_any_write(tmp_path):
    (tmp_path / "in.png").write_bytes(b"input")
    with pytest.raises(OutputCollisionError, match="the labels of a.png and the labels of A.png"):
        plan_outputs([(tmp_path / "a.png", "the labels of a.png"),
                      (tmp_path / "A.png", "the labels of A.png")])  # fmt: skip
    os.link(tmp_path / "in.png", tmp_path / "hard.png")
    with pytest.raises(OutputCollisionError, match="would replace the input"):
        plan_outputs([tmp_path / "hard.png"], inputs=[tmp_path / "in.png"], overwrite=True)
    assert plan_outputs([tmp_path / "new.png"], inputs=[tmp_path / "in.png"]) == [
        tmp_path / "new.png"
    ]


def test_safetensors_write_errors_name_the_file(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import napari_segen.models.model_file as model_file

    def full(*args, **kwargs):
        raise SafetensorError('IoError(Os { code: 28, kind: StorageFull, message: "No space" })')

    monkeypatch.setattr(model_file, "save_file", full)
    with pytest.raises(OSError, match="No space") as err:
        write_safetensors({}, tmp_path / "t", {}, tmp_path / "m.safetensors")
    assert err.value.errno == 28 and err.value.filename == str(tmp_path / "m.safetensors")


def test_a_giant_description_is_refused_without_building_it(tmp_path, models):
    """base_channels 4096 would be a 5 GB U-Net: the meta-device check refuses it at once."""
    import resource

    path = tmp_path / "m.safetensors"
    path.write_bytes(models.unet.read_bytes())
    side = json.loads(models.unet.with_suffix(".json").read_text())
    side["arch_kwargs"]["base_channels"] = 4096
    path.with_suffix(".json").write_text(json.dumps(side))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 500 * 1024


def test_real_images_up_to_the_limit_open(tmp_path, monkeypatch):
    big = png(tmp_path / "big.png", np.zeros((300, 400), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone would refuse
    monkeypatch.setenv("NAPARI_SEGEN_MAX_PIXELS", str(300 * 400))
    assert read_image(big).shape == (300, 400)
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's own setting is left as it was
    monkeypatch.setenv("NAPARI_SEGEN_MAX_PIXELS", str(300 * 400 - 1))
    with pytest.raises(ImageReadError, match="raise the limit"):
        read_image(big)
    assert read_image(big, max_pixels=10**6).shape == (300, 400)
    stack = tif(tmp_path / "s.tif", np.zeros((3, 8, 9), np.uint16), photometric="minisblack")
    assert image_info(stack).is_stack


def test_arrays_in_memory_are_normalised_nan_safely(caplog):
    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    with caplog.at_level("WARNING"):
        y = normalize_image(x, {"mode": "percentile", "low": 1, "high": 99})
    assert np.isfinite(y).all() and "3 NaN or infinite" in caplog.text
    assert np.isfinite(normalize_image(np.full((1, 4, 4), np.nan, np.float32), {})).all()


def test_mask_class_checks():
    check_mask_classes("ok.png", np.array([[0, 1], [2, -1]]), num_classes=3)
    with pytest.raises(MaskValuesError, match=r"m.png holds the class value\(s\) 3 \(2 pixels\)"):
        check_mask_classes("m.png", np.array([[0, 3], [3, 1]]), num_classes=3)
    check_mask_classes("voc.png", np.array([[0, 15], [20, -1]]))  # sparse class values are fine
    noise = np.random.default_rng(0).integers(0, 40, (32, 32))
    with pytest.raises(MaskValuesError, match="change from pixel to pixel"):
        check_mask_classes("img.png", noise)


def test_instance_masks_keep_their_path(tmp_path):
    """Instance label images (ids > 255) read fine; training.assembly converts them."""
    from napari_segen.data.instances import detect_mask_kind

    ids = np.zeros((64, 64), np.uint16)
    for k in range(12):
        ids[(k // 4) * 20 : (k // 4) * 20 + 8, (k % 4) * 16 : (k % 4) * 16 + 8] = 1000 + k
    mask = read_mask(tif(tmp_path / "cells.tif", ids))
    assert mask.max() == 1011 and detect_mask_kind(mask).kind == "instances"


# --- the napari reader hook ----------------------------------------------------------------------
def _reader_paths(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "dir_labels.png").mkdir()
    (tmp_path / "empty_labels.png").write_bytes(b"")
    (tmp_path / "junk_labels.tif").write_bytes(b"II*\x00junk")
    (tmp_path / "cut_labels.png").write_bytes(png_header(8, 8)[:20])
    (tmp_path / "bomb_labels.png").write_bytes(png_header(100_000, 100_000))
    (tmp_path / "bomb_labels.tif").write_bytes(tiff_header())
    good = png(tmp_path / "good_labels.png", disc_mask())
    return {
        "missing": str(tmp_path / "missing_labels.png"),
        "a folder": str(tmp_path / "dir_labels.png"),
        "empty file": str(tmp_path / "empty_labels.png"),
        "junk TIFF": str(tmp_path / "junk_labels.tif"),
        "cut header": str(tmp_path / "cut_labels.png"),
        "PNG bomb": str(tmp_path / "bomb_labels.png"),
        "TIFF bomb": str(tmp_path / "bomb_labels.tif"),
        "None": None,
        "a number": 7,
        "bytes": bytes(tmp_path / "good_labels.png"),
        "NUL in the name": str(tmp_path / "x\0_labels.png"),
        "empty list": [],
        "a list with one bad": [str(good), str(tmp_path / "missing_labels.png")],
        "a dict": {"path": str(good)},
        "not a label name": str(png(tmp_path / "image.png", gray())),
    }


def test_reader_hook_never_raises_and_claims_only_what_it_reads(tmp_path):
    for what, path in _reader_paths(tmp_path).items():
        assert _reader.napari_get_reader(path) is None, what
    good = str(tmp_path / "good_labels.png")
    reader = _reader.napari_get_reader(good)
    ((data, meta, kind),) = reader(good)
    assert kind == "labels" and data.max() == 1 and meta["name"] == "good_labels"
    assert _reader.napari_get_reader([good, Path(good)]) is not None


def test_small_crops_with_elastic_augmentation_train(tmp_path, capsys):
    """Found by the matrix: torchvision's ElasticTransform blurs with an (8 sigma + 1) px
    kernel that a 16-pixel crop could not pad; the sigma now shrinks with the crop."""
    t = SimpleNamespace(dir=tmp_path, m=None)
    image_folders(t)
    argv = [a for a in train(t, extra=["--val-split", "0"]) if a != "--no-augment"]
    assert main(argv) == 0, capsys.readouterr().err
