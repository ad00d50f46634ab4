"""Tell the user that the first dock is loading PyTorch (several seconds), before it does."""

from __future__ import annotations

import sys
from typing import Any

#: What the status bar says while the first dock imports torch.
LOADING_MESSAGE = "napari-segen: loading PyTorch (the first dock takes a few seconds)..."


def announce_first_load(viewer: Any = None, torch_loaded: bool | None = None) -> bool:
    """Show :data:`LOADING_MESSAGE` and a busy cursor until control returns to Qt's event loop.

    Opening the first napari-segen dock imports torch and torchvision, which takes
    5-13 s, and the window cannot repaint meanwhile; without this the click on the
    menu seems to do nothing. Does nothing once torch is loaded or without a Qt
    application. ``viewer`` defaults to napari's current viewer. Returns whether it
    announced.
    """
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    if torch_loaded:
        return False
    try:
        from qtpy.QtCore import QEventLoop, Qt, QTimer
        from qtpy.QtWidgets import QApplication
    except ImportError:  # no Qt binding: nothing to show it in
        return False
    app = QApplication.instance()
    if app is None:
        return False
    if viewer is None:
        import napari

        viewer = napari.current_viewer()
    if viewer is not None:
        viewer.status = LOADING_MESSAGE
    QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
    # repaint the status bar now, without handling clicks in the middle of the menu action
    app.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
    # restored as soon as the event loop runs again: after the import and the dock
    # (set after processEvents, which would otherwise run it at once)
    QTimer.singleShot(0, QApplication.restoreOverrideCursor)
    return True
