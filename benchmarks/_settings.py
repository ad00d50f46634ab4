"""``KEY=VALUE`` command-line settings shared by the synthesis benchmarks."""

from __future__ import annotations

import json


def parse_settings(items: list[str], flag: str = "--set") -> dict:
    """``["fm_weight=0", "upsample=resize"]`` -> ``{"fm_weight": 0, "upsample": "resize"}``.

    Values are read as JSON when they parse (numbers, booleans), else kept as strings.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
