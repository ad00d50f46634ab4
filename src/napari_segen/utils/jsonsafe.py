"""The one rule for turning results into JSON: plain types, no NaN, nothing that cannot load."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np


def json_safe(obj: Any) -> Any:
    """``obj`` with only JSON types: NaN and infinities become None (``null``).

    Dicts get string keys, tuples become lists, numpy scalars and small arrays
    become Python values, tensors their values, paths strings; anything else
    its ``str``. ``json.dumps(json_safe(x), allow_nan=False)`` never fails.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # a torch tensor, without importing torch
        return json_safe(obj.detach().cpu().tolist())
    return str(obj)
