"""Annotation conventions shared by data, training and metrics."""

from __future__ import annotations

#: Mask value of pixels nobody annotated: losses and scores skip them (torch's default).
IGNORE_INDEX = -100
