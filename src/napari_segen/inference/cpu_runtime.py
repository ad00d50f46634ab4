"""Two CPU settings that make sliding-window inference cheaper, with the same model.

1. **Keep freed memory in the process while a run lasts**
   (:func:`fewer_page_faults`). Every batch of tiles allocates the network's
   activations (tens to hundreds of MB) and frees them. By default glibc's
   ``malloc`` serves such blocks with ``mmap`` and hands them back to the kernel
   when freed (or trims the heap top), so the next batch faults the same pages
   in again: on the bundled U-Net (one thread, batches of 4 tiles of 256 px),
   63 000 minor page faults per batch and a quarter of its time in the kernel;
   batches of 512-px tiles spent a third of their time there. During a run this
   module serves every allocation from the heap and keeps up to 1 GiB of free
   heap (glibc's ``mallopt``: no mmap, trim threshold 1 GiB), so the faults drop
   below a thousand per batch and the kernel time to about 1%; when the last
   run ends it restores glibc's default thresholds and gives the free pages
   back (``malloc_trim``), so an idle process (napari) does not keep them.
   ``mallopt`` is process-wide (glibc has no per-call setting): allocations of
   other threads during a run are served the same way. Only on Linux with
   glibc, and not with ``NAPARI_SEGEN_KEEP_FREED_MEMORY=0`` or when the user
   set glibc's own settings (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
   ``MALLOC_MMAP_MAX_``, ``MALLOC_TOP_PAD_``, ``GLIBC_TUNABLES``). Raising
   glibc's mmap threshold instead is not enough: glibc caps it at 32 MiB, and
   batches of 512-px tiles allocate larger blocks.
2. **Channels-last convolutions** (:func:`prefer_channels_last`): oneDNN's CPU
   convolutions are faster on NHWC tensors; the module's weights are converted
   in place (same values, another memory layout; saving is unaffected).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from collections.abc import Iterator

import torch

#: glibc ``mallopt`` parameters (``malloc.h``) and glibc's defaults for them. Setting
#: them ends glibc's dynamic thresholds; the mmap threshold keeps the value it had.
_M_TRIM_THRESHOLD, _DEFAULT_TRIM = -1, 128 * 1024
_M_MMAP_MAX, _DEFAULT_MMAP_MAX = -4, 65536
#: Free heap kept at its top during a run before glibc gives it back.
TRIM_THRESHOLD = 1 << 30
_ENV_OPT_OUT = "NAPARI_SEGEN_KEEP_FREED_MEMORY"
_USER_SETTINGS = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)
_lock = threading.Lock()
_active = 0


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  glibc only (musl has mallopt but no trim)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


def _enabled() -> bool:
    if os.environ.get(_ENV_OPT_OUT, "1") == "0":
        return False
    return not any(v in os.environ for v in _USER_SETTINGS)  # the user's settings win


@contextlib.contextmanager
def fewer_page_faults() -> Iterator[None]:
    """Serve allocations from a heap that keeps its freed pages while the ``with`` block runs.

    Re-entrant and thread-safe: the first of nested or concurrent runs sets the
    thresholds, the last one restores glibc's defaults and trims the heap.
    """
    global _active
    libc = _glibc() if _enabled() else None
    if libc is None:
        yield
        return
    with _lock:
        _active += 1
        if _active == 1:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
                libc.malloc_trim(0)


def prefer_channels_last(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Convert ``module``'s weights to channels-last in place when it runs on the CPU."""
    if device.type == "cpu":
        module.to(memory_format=torch.channels_last)
    return module
