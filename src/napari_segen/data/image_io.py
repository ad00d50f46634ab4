"""Reading images and masks, writing label images. No napari, no Qt.

Images keep their dtype (8/16-bit, float). Masks become integer class indices:
binary 0/255 masks map to 0/1, palette PNGs (Pascal VOC) give their palette
indices, and any value map can be applied on top.

Every file is checked here, once, before anything else sees it:

* its size is read from the header *before* decoding and refused above
  :func:`max_pixels` (``NAPARI_SEGEN_MAX_PIXELS`` raises it for real big images),
  so a small file claiming to be huge cannot exhaust the memory;
* its layout must be one napari-segen reads: gray ``(H, W)``, colour
  ``(H, W, 3|4)``, or stacks of either; other channel counts (``(H, W, 2)``...)
  are refused with the reason, never read as something else;
* images must hold finite values: NaN or infinite pixels are refused with
  their count (an array handed over in memory is normalised NaN-safely
  instead, see :func:`napari_segen.data.normalize.normalize_image`);
* masks must hold whole numbers that fit class indices.

Damaged files of any kind give :class:`ImageReadError`, a one-line sentence.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..utils.atomic import atomic_path

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")

#: The environment variable that sets :func:`max_pixels`.
MAX_PIXELS_ENV = "NAPARI_SEGEN_MAX_PIXELS"
#: Most pixels (all planes of a stack together) a file may hold unless told otherwise:
#: 2**30, e.g. 32768 x 32768, or 256 slices of 2048 x 2048.
DEFAULT_MAX_PIXELS = 2**30

#: Without declared classes, a mask value above this is not taken as a class index.
MAX_CLASS_VALUE = 255
#: Without declared classes, a mask with more distinct values than this is not a class mask.
MAX_MASK_CLASSES = 64

# Pillow formats read here (by content, whatever the suffix says).
_PIL_FORMATS = ("PNG", "JPEG", "MPO", "BMP")
# Pillow modes: gray ones give 2D arrays; others are converted as said.
_PIL_GRAY = {"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_PIL_IMAGE_CONVERT = {"LA": "L", "La": "L", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB"}
_PIL_MASK_CONVERT = {"LA": "L", "La": "L"}
_PIL_DTYPES = {"1": np.bool_, "I": np.int32, "F": np.float32}
_PIL_LOCK = threading.Lock()


class _Decoding(logging.Filter):
    """Drops tifffile's log lines about a damaged file while this thread reads it: the
    one-line ImageReadError says what matters."""

    active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.active, "on", False)


logging.getLogger("tifffile").addFilter(_Decoding())


class ImageReadError(ValueError):
    """An image or mask file could not be read."""


class ImageTooLargeError(ImageReadError):
    """An image file holds more pixels than :func:`max_pixels` allows."""


class MaskValuesError(ImageReadError):
    """A mask's values are not the class indices they should be."""


def max_pixels() -> int:
    """Most pixels a file may hold: ``NAPARI_SEGEN_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 1):
        raise ImageReadError(
            f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} is not a pixel count; "
            "set it to a whole number such as 4000000000, or unset it"
        )
    return int(value)


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says, before any pixel is decoded.

    Attributes:
        path: the file.
        shape: the shape :func:`read_image` gives (colour last).
        dtype: the pixel type.
        colour: whether the last axis is colour (3 or 4 channels).
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    colour: bool

    @property
    def pixels(self) -> int:
        """Pixels of all planes (a colour pixel counts once)."""
        return math.prod(self.shape[:-1] if self.colour else self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def is_stack(self) -> bool:
        """Whether it holds more than one plane."""
        dims = self.shape[:-1] if self.colour or self.shape[-1:] == (1,) else self.shape
        return len(dims) > 2


def image_info(path: str | os.PathLike) -> ImageInfo:
    """Read a file's header only (cheap); :class:`ImageReadError` if it is not an image."""
    path = _existing_file(path, "image")
    with _Decoder(path, "image") as dec:
        return dec.info


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as an array of its own dtype.

    TIFF files may hold stacks (``(Z, H, W)`` or ``(Z, H, W, C)``). Palette
    images are converted to RGB; 16-bit PNGs stay 16-bit; an alpha channel
    next to gray is dropped. ``max_pixels``: the size limit (default
    :func:`max_pixels`).

    Raises:
        ImageReadError: missing, damaged, too large (:class:`ImageTooLargeError`),
            an unsupported layout, or NaN/infinite pixel values.
    """
    path = _existing_file(path, "image")
    with _Decoder(path, "image") as dec:
        dec.check_size(max_pixels)
        data = dec.decode()
    data = _checked_layout(data, path, dec.axes)
    if data.dtype.kind == "c":
        raise ImageReadError(f"{path} holds complex numbers; save the magnitude as a real image")
    if data.dtype.kind == "f":
        bad = data.size - int(np.count_nonzero(np.isfinite(data)))
        if bad:
            raise ImageReadError(
                f"{path} holds {bad:,} NaN or infinite pixel value(s) "
                f"({100 * bad / data.size:.2g}% of the image); they have no intensity to segment: "
                "replace them (e.g. with the background level) and save the image again"
            )
    return data


def read_mask(
    path: str | os.PathLike,
    value_map: Mapping[int, int] | None = None,
    *,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Read a mask file as int64 class indices.

    * Palette PNGs (e.g. Pascal VOC ``SegmentationClass``) give their palette indices.
    * Binary masks holding only 0 and 255 give 0 and 1.
    * Otherwise the values are the classes.
    ``value_map`` (e.g. ``{0: 1, 255: 0}`` for ISBI's inverted masks) is applied to
    the raw values instead of the binary rule. Whether the values make sense as
    classes is checked where the classes are decided (:func:`check_mask_classes`).
    """
    path = _existing_file(path, "mask")
    with _Decoder(path, "mask") as dec:
        dec.check_size(max_pixels)
        raw = dec.decode()
    if raw.ndim >= 3 and raw.shape[-1] in (3, 4) and (dec.axes or "S")[-1] in "SC":
        raise ImageReadError(
            f"{path} is a colour image, not a mask: save masks as single-channel "
            "label images (class index per pixel) or palette PNGs"
        )
    raw = _checked_layout(raw, path, dec.axes, colour=False)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if raw.dtype.kind not in "iuf":
        raise ImageReadError(f"{path} holds {raw.dtype} values; masks hold class indices")
    if raw.dtype.kind == "f":
        finite = np.isfinite(raw)
        if not finite.all():
            raise ImageReadError(
                f"{path} holds {raw.size - int(finite.sum()):,} NaN or infinite value(s); "
                "masks hold class indices (whole numbers)"
            )
        if not np.all(np.mod(raw, 1) == 0):
            raise ImageReadError(f"{path} holds non-integer values; masks must hold class indices")
    if raw.size and (raw.max() >= 2**31 or raw.min() < -(2**31)):
        raise ImageReadError(
            f"{path} holds values up to {raw.max()}, too large for class indices or object ids"
        )
    return map_mask_values(raw, value_map)


def map_mask_values(raw: np.ndarray, value_map: Mapping[int, int] | None = None) -> np.ndarray:
    """Apply ``value_map`` to raw mask values, else the binary 0/255 -> 0/1 rule."""
    raw = np.asarray(raw)
    if value_map:
        out = raw.astype(np.int64)
        for src, dst in value_map.items():
            out[raw == src] = dst
        return out
    out = raw.astype(np.int64)
    uniq = np.unique(out)
    if len(uniq) <= 2 and set(uniq.tolist()) <= {0, 255} and 255 in uniq:
        out = (out == 255).astype(np.int64)
    return out


def check_mask_classes(name: str, mask: np.ndarray, num_classes: int | None = None) -> None:
    """Refuse a mask whose values cannot be the classes of a run; the message names them.

    With ``num_classes`` (classes declared by the user, the data or a model): a
    value of ``num_classes`` or more. Without: values no class mask holds: above
    :data:`MAX_CLASS_VALUE` (one stray pixel of 60000 would otherwise make a
    60001-class model), or more than :data:`MAX_MASK_CLASSES` distinct values, or
    values that change from pixel to pixel as an image's do (an image folder
    given as masks). Negative values (not annotated) are ignored. Instance label
    images are told apart before this (:func:`napari_segen.data.instances.detect_mask_kind`).

    Raises:
        MaskValuesError: naming ``name`` and the odd values.
    """
    m = np.asarray(mask)
    valid = m[m >= 0] if m.dtype.kind == "i" else m.ravel()
    if not valid.size:
        return
    top = int(valid.max())
    if top <= 1 << 20:  # a histogram is much faster than sorting a large mask
        counts = np.bincount(valid.astype(np.int64, copy=False))
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(valid, return_counts=True)
    if num_classes is not None:
        odd = values >= num_classes
        if odd.any():
            raise MaskValuesError(
                f"{name} holds the class value(s) {_listed(values[odd], counts[odd])} but there "
                f"are {num_classes} classes (0-{num_classes - 1}); fix the mask, map its values "
                "(--mask-map) or name every class"
            )
        return
    hint = (
        "check that the masks are the label images (not the images), map raw values to classes "
        "(--mask-map, e.g. 0:0,65535:1), or read object ids as instances (--masks-are instances)"
    )
    if values[-1] > MAX_CLASS_VALUE:
        odd = values > MAX_CLASS_VALUE
        raise MaskValuesError(
            f"{name} holds {_listed(values[odd], counts[odd])}: as class indices that makes a "
            f"{int(values[-1]) + 1}-class model; {hint}"
        )
    if len(values) > MAX_MASK_CLASSES:
        raise MaskValuesError(
            f"{name} holds {len(values)} distinct values ({int(values[0])}-{int(values[-1])}), "
            f"more than the {MAX_MASK_CLASSES} a class mask is taken to hold; {hint}"
        )
    if len(values) > 16 and m.ndim >= 2 and m.shape[-1] > 1:
        changes = float(np.mean(m[..., 1:] != m[..., :-1]))
        if changes > 0.5:
            raise MaskValuesError(
                f"{name} holds {len(values)} distinct values that change from pixel to pixel "
                f"({changes:.0%} of neighbours differ), as an image's do, not a mask's; {hint}"
            )


def _listed(values: np.ndarray, counts: np.ndarray, most: int = 5) -> str:
    pairs = zip(values, counts, strict=True)
    parts = [f"{int(v)} ({int(c):,} pixel{'s' if c != 1 else ''})" for v, c in pairs]
    more = f" and {len(parts) - most} more" if len(parts) > most else ""
    return ", ".join(parts[:most]) + more


def parse_value_map(text: str | None) -> dict[int, int] | None:
    """Parse ``"0:1,255:0"`` into ``{0: 1, 255: 0}``; None or "" gives None."""
    if not text:
        return None
    out: dict[int, int] = {}
    for part in text.split(","):
        try:
            src, dst = part.split(":")
            out[int(src)] = int(dst)
        except ValueError as err:
            raise ValueError(
                f"bad value map entry {part!r}: write pairs like '0:1,255:0' (raw value:class)"
            ) from err
    return out


def write_labels(path: str | os.PathLike, labels: np.ndarray, overwrite: bool = False) -> Path:
    """Write a label image atomically as PNG (2D, < 65536 labels) or TIFF (any).

    Refuses to replace an existing file unless ``overwrite`` is True (also when
    another writer makes it in the meantime).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABEL_SUFFIXES:
        raise ValueError(f"labels are written as {', '.join(LABEL_SUFFIXES)}, not {path.suffix!r}")
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0):
        raise ValueError("labels must be non-negative to be saved as an image")
    top = int(labels.max()) if labels.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32
    data = labels.astype(dtype)
    if suffix == ".png" and (data.ndim != 2 or dtype == np.uint32):
        raise ValueError("PNG holds 2D labels below 65536; save stacks or larger ids as .tif")
    with atomic_path(path, overwrite) as tmp:
        if suffix == ".png":
            Image.fromarray(data).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, data, compression="zlib", photometric="minisblack")
    return path


# --- decoding --------------------------------------------------------------------------------
def _existing_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(
            f"{what} file not found: {path}" if not path.exists() else f"{path} is not a file"
        )
    return path


class _Decoder:
    """One open image file: its header first (:attr:`info`), its pixels on :meth:`decode`.

    Third-party decoders raise all kinds of exceptions on damaged files (OSError,
    ValueError, SyntaxError, struct.error, zlib.error, IndexError, MemoryError...);
    each becomes an :class:`ImageReadError` naming the file.
    """

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self.axes: str | None = None
        self._tif: tifffile.TiffFile | None = None
        self._im: Image.Image | None = None

    def __enter__(self) -> _Decoder:
        _Decoding.active.on = True
        try:
            if self.path.suffix.lower() in TIFF_SUFFIXES:
                self._tif = tifffile.TiffFile(self.path)
                self.info = self._tiff_info()
            else:
                self._im = _pil_open(self.path)
                self.info = self._pil_info()
        except ImageReadError:
            self.__exit__(None, None, None)
            raise
        except Exception as err:  # any decoder failure: a damaged file
            self.__exit__(None, None, None)
            raise self._error(err) from err
        return self

    def __exit__(self, *exc) -> None:
        _Decoding.active.on = False
        for f in (self._tif, self._im):
            if f is not None:
                with contextlib.suppress(Exception):  # closing a damaged file may fail too
                    f.close()

    def _error(self, err: BaseException) -> ImageReadError:
        what = "an image" if self.kind == "image" else "a mask"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return ImageReadError(f"cannot read {self.path} as {what} ({reason[:200]})")

    def _tiff_info(self) -> ImageInfo:
        assert self._tif is not None
        series = self._tif.series
        if not series:
            raise ImageReadError(f"{self.path} holds no image data")
        s = series[0]
        shape = tuple(int(n) for n in s.shape)
        # Only OME and ImageJ files say which axis is which; tifffile's guess for plain
        # files ("QYX" for (40, 50, 2)) is no better than the shape rules below.
        if self._tif.is_ome or self._tif.is_imagej or str(s.axes)[-1:] in ("S", "C"):
            self.axes = str(s.axes)
        colour = len(shape) >= 3 and shape[-1] in (3, 4) and (self.axes or "S")[-1] in "SC"
        return ImageInfo(self.path, shape, np.dtype(s.dtype), colour)

    def _pil_info(self) -> ImageInfo:
        assert self._im is not None
        w, h = self._im.size
        mode = self._mode()
        channels = {"RGB": 3, "RGBA": 4}.get(mode, 0)
        if mode not in _PIL_GRAY and mode not in ("P", "RGB", "RGBA"):
            channels = 3  # converted to RGB
        dtype = np.dtype(np.uint16 if mode.startswith("I;16") else _PIL_DTYPES.get(mode, np.uint8))
        shape = (h, w, channels) if channels else (h, w)
        if mode == "P" and self.kind == "image":
            shape = (h, w, 4 if "transparency" in self._im.info else 3)
        return ImageInfo(self.path, shape, dtype, len(shape) == 3)

    def _mode(self) -> str:
        assert self._im is not None
        convert = _PIL_IMAGE_CONVERT if self.kind == "image" else _PIL_MASK_CONVERT
        return convert.get(self._im.mode, self._im.mode)

    def check_size(self, limit: int | None) -> None:
        """Refuse a file larger than ``limit`` pixels (default :func:`max_pixels`) unread."""
        limit = max_pixels() if limit is None else limit
        info = self.info
        if info.pixels > limit:
            dims = " x ".join(str(n) for n in info.shape)
            raise ImageTooLargeError(
                f"{self.path} is {dims} ({info.pixels:,} pixels, {info.nbytes / 2**30:.1f} GiB), "
                f"more than the {limit:,} pixels napari-segen opens; if the image is real, raise "
                f"the limit with {MAX_PIXELS_ENV}={info.pixels} (it needs that much memory)"
            )

    def decode(self) -> np.ndarray:
        try:
            if self._tif is not None:
                return np.asarray(self._tif.series[0].asarray())
            assert self._im is not None
            im = self._im
            mode = im.mode
            if self.kind == "image" and mode == "P":
                target = "RGBA" if "transparency" in im.info else "RGB"
            else:
                target = self._mode()
                if target not in _PIL_GRAY and target not in ("P", "RGB", "RGBA"):
                    target = "RGB"
            if target != mode:
                im = im.convert(target)
            return np.asarray(im)
        except ImageReadError:
            raise
        except MemoryError as err:
            raise ImageReadError(
                f"{self.path} needs {self.info.nbytes / 2**30:.1f} GiB of memory to read, more "
                "than is free; close other programs or read it on a larger machine"
            ) from err
        except Exception as err:  # any decoder failure: a damaged file
            raise self._error(err) from err


def _pil_open(path: Path) -> Image.Image:
    """Open with Pillow, header only; our own size limit replaces Pillow's bomb check.

    Pillow refuses anything above ~179 million pixels outright (a real
    15000 x 15000 scan included); :meth:`_Decoder.check_size` applies
    :func:`max_pixels` before decoding instead.
    """
    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path, formats=_PIL_FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _checked_layout(
    data: np.ndarray, path: Path, axes: str | None, colour: bool = True
) -> np.ndarray:
    """``data`` if its layout is one napari-segen reads (see the module docstring)."""
    if data.size == 0:
        raise ImageReadError(f"{path} is empty (shape {data.shape})")
    if data.ndim >= 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim < 2:
        raise ImageReadError(f"{path} is not an image: shape {data.shape}, need at least 2D")
    if data.ndim >= 3:
        last = data.shape[-1]
        axis = axes[-1] if axes and len(axes) == data.ndim else "?"
        # unlabelled axes: a short last axis next to a long one is channels, (40, 50, 2)
        # is a 2-channel 40 x 50 image, not 40 images of 50 x 2 pixels
        channels = axis in "SC" or (axis != "X" and last <= 16 and data.shape[-2] >= 4 * last)
        if channels and not (colour and last in (3, 4)):
            kind = "gray + alpha, or two stains" if last == 2 else "several stains or bands"
            want = "gray, RGB or RGBA images" if colour else "single-channel masks"
            raise ImageReadError(
                f"{path} has {last} channels per pixel (shape {data.shape}: {kind}); "
                f"napari-segen reads {want}: save one channel per file, or convert to "
                + ("RGB" if colour else "a label image")
            )
    return data
