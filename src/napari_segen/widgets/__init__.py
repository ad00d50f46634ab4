"""napari dock widgets: thin layers over the core, one module per widget."""

import sys


def _avoid_triton_llvm_clash() -> None:
    """Keep Triton out of a process where Mesa's software OpenGL has loaded its LLVM.

    Mesa's llvmpipe (the OpenGL of VMs, CI and Xvfb) maps ``libLLVM``; Triton's
    ``libtriton`` carries its own LLVM, and loading it afterwards segfaults the
    whole napari process. torchvision imports ``torch._dynamo``, which imports
    Triton when it is installed. The widgets never use ``torch.compile``, so in
    that case Triton is marked absent and torch simply reports it unavailable.
    Before any OpenGL context exists, torchvision (and with it Triton) is loaded
    at once instead, which is the order that works.
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


_avoid_triton_llvm_clash()
