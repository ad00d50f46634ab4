"""``napari-segen demo``: the main job on the bundled sample, in napari or headless."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="open napari with the plugin and the ISBI sample (headless demo without a display)",
        description=(
            "With a display: open napari with the ISBI EM sample, dock the Segment and Train "
            "widgets and segment the sample with the bundled model. Without one (or with "
            "--headless): segment the sample, write the labels and an overlay into --out, and "
            "print the scores against the ground truth."
        ),
    )
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("--out", default="segen-demo", help="output folder of the headless demo")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier headless demo"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.set_defaults(func=run)


def has_display() -> bool:
    """Whether a window can be opened here."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args: argparse.Namespace) -> int:
    if args.headless or not has_display():
        return run_headless(Path(args.out), args.device, overwrite=args.overwrite)
    return run_gui(args.device)


def run_headless(out: Path, device: str = "auto", overwrite: bool = False) -> int:
    import numpy as np

    from .._sample_data import ISBI_MASK_MAP, isbi_paths
    from ..data.image_io import read_image, read_mask, write_labels
    from ..inference import predict
    from ..metrics.segmentation import segmentation_scores
    from ..models import default_model_path, load_model
    from ..utils.atomic import atomic_path, ensure_writable_dir, plan_outputs

    image_path, mask_path = isbi_paths()
    # refuse before any work: an earlier demo's files stay unless --overwrite
    labels_path, overlay_path = plan_outputs(
        [out / "isbi_20_labels.png", out / "isbi_20_overlay.png"], overwrite=overwrite
    )
    ensure_writable_dir(out)
    model = load_model(str(default_model_path()))
    image = read_image(image_path)
    print(f"no display: headless demo. Segmenting {image_path.name} with {model.name} ...")
    labels = predict(model, image, device=device).labels
    truth = read_mask(mask_path, ISBI_MASK_MAP)
    scores = segmentation_scores(labels, truth, model.spec.num_classes)
    write_labels(labels_path, labels, overwrite=overwrite)
    rgb = np.stack([image] * 3, -1).astype(np.float32)
    rgb[labels == 1] = 0.5 * rgb[labels == 1] + 0.5 * np.array([255, 59, 48])
    from PIL import Image

    with atomic_path(overlay_path, overwrite=overwrite) as tmp:
        Image.fromarray(rgb.astype(np.uint8)).save(tmp, format="PNG")
    names = model.spec.class_names
    print(
        f"membrane Dice {scores.dice[1]:.3f}, IoU {scores.iou[1]:.3f}, "
        f"pixel accuracy {scores.accuracy:.3f} against the ground truth ({names[1]} = label 1)"
    )
    print(f"wrote {labels_path} and {overlay_path}")
    return 0


def run_gui(device: str = "auto") -> int:  # pragma: no cover - opens a window
    import napari

    from ..widgets.segment_widget import SegmentWidget

    viewer = napari.Viewer(title="napari-segen demo")
    viewer.open_sample("napari-segen", "isbi_em")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment", area="right")
    try:
        viewer.window.add_plugin_dock_widget("napari-segen", "Train")
    except Exception as err:  # the Train widget is optional for the demo
        print(f"napari-segen: Train widget unavailable ({err})", file=sys.stderr)
    seg.image.value = viewer.layers["ISBI EM"]
    seg.device.value = device if device in seg.device.choices else "auto"
    seg.run()
    napari.run()
    return 0
