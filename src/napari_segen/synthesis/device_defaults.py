"""Generator training settings that fit the machine: the paper's on a GPU, CPU-sized on a CPU.

The paper's settings (2000+ steps of 256-px crops, networks 64 wide) take hours
on a CPU; crop 128 and width 32 cut a step to about a sixteenth. The Synthesize
widget and ``napari-segen synth train`` start from the same table; a value the
user sets wins.

No Qt, no napari.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEVICE_DEFAULTS", "device_defaults", "device_kind"]

#: Steps, crop edge and network width (generator and discriminator) per kind of device.
DEVICE_DEFAULTS: dict[str, dict[str, int]] = {
    "gpu": {"steps": 2000, "crop_size": 256, "width": 64},
    "cpu": {"steps": 300, "crop_size": 128, "width": 32},
}


def device_kind(device: str) -> str:
    """``"gpu"`` when ``device`` (``auto`` included) resolves to CUDA or MPS, else ``"cpu"``."""
    from ..utils.devices import resolve_device

    try:
        return "cpu" if resolve_device(device).type == "cpu" else "gpu"
    except (ValueError, RuntimeError):
        return "cpu"


def device_defaults(device: str, **given: Any) -> tuple[dict[str, Any], list[str]]:
    """``steps``, ``crop_size``, ``ngf`` and ``ndf`` for ``device``: each ``given`` value
    that is not None, else the device's default; and the names of those defaulted."""
    table = DEVICE_DEFAULTS[device_kind(device)]
    wanted = {"steps": "steps", "crop_size": "crop_size", "ngf": "width", "ndf": "width"}
    chosen, defaulted = {}, []
    for name, key in wanted.items():
        value = given.get(name)
        if value is None:
            value = table[key]
            defaulted.append(name)
        chosen[name] = value
    return chosen, defaulted
