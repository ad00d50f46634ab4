"""Fuzzing the boundary: damaged image and model bytes, random model descriptions.

Property: the readers (``read_image``, ``read_mask``, the napari reader hook) and
the model loader (``load_model``, ``read_spec``) either succeed or raise the
project's own error (:class:`ImageReadError`, :class:`ModelFileError`), whatever
the bytes; the reader hook never raises at all. Hypothesis (the standard
property-based fuzzer, a test-only dependency) mutates valid files: flipped,
overwritten, inserted and cut bytes. Deterministic (``derandomize``) and
bounded, a few seconds per test.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from napari_segen import _reader  # noqa: E402
from napari_segen.data.image_io import ImageReadError, read_image, read_mask  # noqa: E402
from napari_segen.models import ModelSpec, build_model, save_model  # noqa: E402
from napari_segen.models.model_file import ModelFileError, load_model, read_spec  # noqa: E402

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Edits to a valid file: (what, where, bytes).
EDITS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "cut"]),
        st.integers(min_value=0, max_value=1 << 16),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=6,
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def damaged(seed: bytes, edits) -> bytes:
    """``seed`` with ``edits`` applied (positions wrap around the file)."""
    b = bytearray(seed)
    for what, where, value in edits:
        at = where % (len(b) + 1)
        if what == "flip" and b:
            b[at % len(b)] ^= value[0] or 0xFF
        elif what == "set":
            b[at : at + len(value)] = value
        elif what == "insert":
            b[at:at] = value
        elif what == "cut":
            del b[at : at + value[0] + 1]
    return bytes(b)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict:
    """Valid files to damage, and a folder to damage them in (small limits keep it cheap)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_SEGEN_MAX_PIXELS", str(1 << 20))
    d = tmp_path_factory.mktemp("fuzz")
    gray = (np.arange(24 * 20).reshape(24, 20) % 251).astype(np.uint8)

    def png(array, **kw) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG", **kw)
        return buf.getvalue()

    palette = Image.fromarray((gray % 4).astype(np.uint8)).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    tif = io.BytesIO()
    tifffile.imwrite(tif, np.stack([gray, gray]).astype(np.uint16), photometric="minisblack")
    tif_zlib = io.BytesIO()
    tifffile.imwrite(tif_zlib, gray.astype(np.float32), compression="zlib")
    spec = ModelSpec(
        "unet",
        {"in_channels": 1, "num_classes": 2, "depth": 1, "base_channels": 2},
        1,
        ["background", "foreground"],
    )
    model = save_model(d / "seed.safetensors", build_model("unet", **spec.arch_kwargs), spec)
    yield {
        "dir": d,
        "png": png(gray),
        "png16": png(gray.astype(np.uint16) * 200),
        "palette": buf.getvalue(),
        "rgb": png(np.stack([gray] * 3, -1)),
        "tif": tif.getvalue(),
        "tif_zlib": tif_zlib.getvalue(),
        "model": model.read_bytes(),
        "sidecar": json.loads(model.with_suffix(".json").read_text()),
    }
    mp.undo()


def _read_all(path) -> None:
    """Every reader on ``path``: only ImageReadError may come out; the hook never raises."""
    for read in (read_image, read_mask):
        with contextlib.suppress(ImageReadError):
            read(path)
    reader = _reader.napari_get_reader(str(path))
    if reader is not None:
        with contextlib.suppress(ImageReadError):
            reader(str(path))


@pytest.mark.parametrize("kind", ["png", "png16", "palette", "rgb"])
def test_damaged_pngs(seeds, kind):
    @FUZZ
    @given(edits=EDITS)
    def check(edits):
        path = seeds["dir"] / "x_labels.png"
        path.write_bytes(damaged(seeds[kind], edits))
        _read_all(path)

    check()


@pytest.mark.parametrize("kind", ["tif", "tif_zlib"])
def test_damaged_tiffs(seeds, kind):
    @FUZZ
    @given(edits=EDITS)
    def check(edits):
        path = seeds["dir"] / "x_labels.tif"
        path.write_bytes(damaged(seeds[kind], edits))
        _read_all(path)

    check()


def _load_both(path) -> None:
    for load in (load_model, read_spec):
        with contextlib.suppress(ModelFileError):
            load(path)


@FUZZ
@given(edits=EDITS, with_sidecar=st.booleans())
def test_damaged_safetensors(seeds, edits, with_sidecar):
    path = seeds["dir"] / "m.safetensors"
    path.write_bytes(damaged(seeds["model"], edits))
    side = path.with_suffix(".json")
    if with_sidecar:
        side.write_text(json.dumps(seeds["sidecar"]))
    elif side.exists():
        side.unlink()
    _load_both(path)


@FUZZ
@given(value=JSON)
def test_random_sidecars(seeds, value):
    path = seeds["dir"] / "r.safetensors"
    path.write_bytes(seeds["model"])
    path.with_suffix(".json").write_text(json.dumps(value))
    _load_both(path)
    with contextlib.suppress(ModelFileError):
        ModelSpec.from_json(value)


_FIELDS = [
    ("architecture",),
    ("arch_kwargs",),
    ("arch_kwargs", "depth"),
    ("arch_kwargs", "base_channels"),
    ("arch_kwargs", "num_classes"),
    ("arch_kwargs", "norm"),
    ("in_channels",),
    ("class_names",),
    ("class_colors",),
    ("normalization",),
    ("normalization", "mode"),
    ("normalization", "low"),
    ("normalization", "max"),
    ("normalization", "output_dtype"),
    ("task",),
    ("provenance",),
    ("format_version",),
]


@FUZZ
@given(field=st.sampled_from(_FIELDS), value=JSON | st.integers(-5, 5000))
def test_sidecars_with_one_field_changed(seeds, field, value):
    """Near-valid descriptions: one field (or one nested value) replaced by anything."""
    side = json.loads(json.dumps(seeds["sidecar"]))
    target = side
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    path = seeds["dir"] / "n.safetensors"
    path.write_bytes(seeds["model"])
    path.with_suffix(".json").write_text(json.dumps(side))
    _load_both(path)


@FUZZ
@given(path=st.text(max_size=40) | st.binary(max_size=20) | JSON)
def test_reader_hook_takes_anything(path):
    _reader.napari_get_reader(path)
