"""Screenshots of napari with a napari-segen widget at work, for the README and docs/images.

``segment`` (the default): the Segment widget after segmenting the sample.
``synth``: the Synthesize widget after training a generator with its default
recipe and CPU settings (``--steps`` of them) on the sample, with the image it
generated from the sample's labels beside the real one, and the export fold open.

Run under a display, or:
``OMP_NUM_THREADS=1 xvfb-run -a python docs/screenshot.py synth OUT.png``
(one torch thread: Mesa's software renderer needs the other core).
"""

from __future__ import annotations

import argparse

import napari
from qtpy.QtCore import QTimer

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("which", nargs="?", choices=["segment", "synth"], default="segment")
ap.add_argument(
    "out", nargs="?", default=None, help="PNG (default: docs/images/<which>_widget.png)"
)
ap.add_argument("--steps", type=int, default=200, help="synth: generator training steps")
args = ap.parse_args()
out = args.out or f"docs/images/{args.which}_widget.png"

viewer = napari.Viewer(title="napari-segen")
viewer.window._qt_window.resize(1500, 950)
viewer.open_sample("napari-segen", "isbi_em")
image, labels = viewer.layers["ISBI EM"], viewer.layers["ISBI EM ground truth"]


def when_idle(widget, then) -> None:
    """Call ``then`` once ``widget``'s task has finished."""

    def poll() -> None:
        if widget.runner.running:
            QTimer.singleShot(300, poll)
        else:
            then()

    QTimer.singleShot(300, poll)


def shoot(active) -> None:
    viewer.layers.selection.active = active
    viewer.screenshot(out, canvas_only=False, flash=False)
    print("wrote", out)
    viewer.close()


if args.which == "segment":
    from napari_segen.widgets.segment_widget import SegmentWidget

    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment", area="right")
    w.image.value = image
    w.run()
    when_idle(w, lambda: shoot(viewer.layers["ISBI EM labels"]))
else:
    from napari_segen.widgets.synth_widget import SynthesizeWidget

    w = SynthesizeWidget(viewer)
    viewer.window.add_dock_widget(w, name="Synthesize", area="right")
    w.image_layer.value, w.labels_layer.value = image, labels
    w.steps.value = args.steps
    w.overwrite.value = True
    w.train()

    def generated() -> None:
        drawn = viewer.layers[-1]
        for layer in viewer.layers:
            layer.visible = layer in (image, drawn)
        viewer.grid.enabled = True  # the real slice and the drawn one side by side
        viewer.reset_view()
        w.filter_section.expand()
        QTimer.singleShot(1000, lambda: shoot(drawn))  # let the fold lay out first

    def trained() -> None:
        print(w.status.value)
        w.generate()
        when_idle(w, generated)

    when_idle(w, trained)

napari.run()
