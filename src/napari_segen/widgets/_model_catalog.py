"""Models known to this napari session, shared by the Segment and Train widgets.

A model trained in the Train widget is added here and shows up at once in
every Segment widget's model list.
"""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal

DEFAULT_CHOICE = "default (ISBI membrane U-Net)"


class ModelCatalog:
    """An ordered set of model file paths with a ``changed`` signal."""

    changed = Signal()

    def __init__(self) -> None:
        self._paths: list[Path] = []

    def add(self, path: str | Path) -> str:
        """Add a model file; returns its display name."""
        path = Path(path).resolve()
        if path not in self._paths:
            self._paths.append(path)
            self.changed.emit()
        return self.label(path)

    @staticmethod
    def label(path: Path) -> str:
        return f"{path.stem}  ({path.parent})"

    def choices(self) -> list[str]:
        return [DEFAULT_CHOICE] + [self.label(p) for p in self._paths]

    def path_for(self, choice: str) -> str:
        """'default' or a file path for a choice shown in a combo box."""
        for p in self._paths:
            if self.label(p) == choice:
                return str(p)
        return "default"


catalog = ModelCatalog()
