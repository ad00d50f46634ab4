"""Opening the first dock says that PyTorch is loading, with a busy cursor, and then stops."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_first_dock_announces_loading_torch(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QApplication

    from napari_segen.widgets._first_load import LOADING_MESSAGE, announce_first_load

    viewer = make_napari_viewer()
    assert announce_first_load(viewer, torch_loaded=False)
    assert viewer.status == LOADING_MESSAGE
    assert QApplication.overrideCursor() is not None  # busy while the import runs
    qtbot.waitUntil(lambda: QApplication.overrideCursor() is None, timeout=2000)
    # torch already loaded (every later dock): nothing shown
    viewer.status = "ready"
    assert not announce_first_load(viewer, torch_loaded=True)
    assert viewer.status == "ready" and QApplication.overrideCursor() is None
