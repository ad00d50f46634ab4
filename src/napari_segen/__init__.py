"""napari-segen: segment, correct, retrain and synthesize training data.

The core subpackages (``models``, ``data``, ``inference``, ``training``,
``synthesis``, ``metrics``) never import Qt or napari; ``widgets`` and ``cli``
are thin layers over them.
"""

__version__ = "0.1.0"
