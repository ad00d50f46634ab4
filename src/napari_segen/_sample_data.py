"""npe2 sample data: an ISBI 2012 EM slice and its membrane labels (membrane = label 1).

The slice (``test/images/20.png``) is one the bundled default model never saw in training.
"""

from __future__ import annotations

from pathlib import Path

ISBI_MASK_MAP = {0: 1, 255: 0}  # ISBI masks: 0 = membrane, 255 = cell interior


def sample_data_dir() -> Path:
    """The ``sample_data`` folder: inside an installed wheel, else the source checkout's."""
    from importlib.resources import files

    packaged = Path(str(files("napari_segen"))) / "sample_data"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sample_data"


def isbi_paths(name: str = "20.png") -> tuple[Path, Path]:
    """(image, mask) paths of an ISBI test slice."""
    root = sample_data_dir() / "isbi2012" / "test"
    return root / "images" / name, root / "masks" / name


def isbi_sample():
    """napari sample: the EM image and its ground-truth membrane labels."""
    from .data.image_io import read_image, read_mask

    image_path, mask_path = isbi_paths()
    return [
        (read_image(image_path), {"name": "ISBI EM"}, "image"),
        (
            read_mask(mask_path, ISBI_MASK_MAP),
            {
                "name": "ISBI EM ground truth",
                "visible": False,
                "metadata": {"class_names": ["cell interior", "membrane"]},
            },
            "labels",
        ),
    ]
