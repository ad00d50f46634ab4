"""Screenshot of napari with the Segment widget after segmenting the sample (for the README).

Run under a display, or:
``xvfb-run -s '-screen 0 1600x1000x24' python docs/screenshot.py OUT.png``.
"""

import sys

import napari
from qtpy.QtCore import QTimer

from napari_segen.widgets.segment_widget import SegmentWidget

out = sys.argv[1] if len(sys.argv) > 1 else "docs/images/segment_widget.png"
viewer = napari.Viewer(title="napari-segen")
viewer.window._qt_window.resize(1500, 950)
viewer.open_sample("napari-segen", "isbi_em")
w = SegmentWidget(viewer)
viewer.window.add_dock_widget(w, name="Segment", area="right")
w.image.value = viewer.layers["ISBI EM"]
w.run()


def _wait():
    if w.runner.running:
        QTimer.singleShot(200, _wait)
        return
    viewer.layers.selection.active = viewer.layers["ISBI EM labels"]
    viewer.screenshot(out, canvas_only=False, flash=False)
    print("wrote", out)
    viewer.close()


QTimer.singleShot(500, _wait)
napari.run()
