"""napari dock widgets: thin layers over the core, one module per widget."""

from .._compat import avoid_triton_llvm_clash
from ._first_load import announce_first_load

# Before anything here imports torch (the clash check below already does).
announce_first_load()

# Every widget the napari manifest names lives in this package, and Python runs this
# file before any of their modules, so this is the one place that runs before a widget
# is built and before its imports can load torchvision (see the function's docstring).
avoid_triton_llvm_clash()
