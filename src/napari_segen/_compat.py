"""Work-arounds for other libraries, each called explicitly where it is needed.

Nothing here runs on import: a caller decides when a process needs a work-around.
"""

from __future__ import annotations

import sys


def avoid_triton_llvm_clash() -> None:
    """Keep Triton out of a process where Mesa's software OpenGL has loaded its LLVM.

    Why: Mesa's llvmpipe (the OpenGL of VMs, CI and Xvfb) maps ``libLLVM``; Triton's
    ``libtriton`` carries its own LLVM, and loading it afterwards segfaults the whole
    napari process. torchvision imports ``torch._dynamo``, which imports Triton when it
    is installed. The widgets never use ``torch.compile``, so in that case Triton is
    marked absent (process-wide: ``sys.modules`` is per process) and torch simply
    reports it unavailable. Before any OpenGL context exists, torchvision (and with it
    Triton) is loaded at once instead, which is the order that works.

    It must run before torchvision is first imported in the process, so the widgets
    package calls it before any widget module is imported; the core and the CLI
    never need it. Calling it again is harmless.
    """
    if "triton" in sys.modules:
        return
    try:
        with open("/proc/self/maps") as f:
            mesa_llvm = "libLLVM" in f.read()
    except OSError:  # not Linux
        return
    if mesa_llvm:
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
    else:
        import torchvision.ops  # noqa: F401  (loads torch._dynamo and Triton first)
