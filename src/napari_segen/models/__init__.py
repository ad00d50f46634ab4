"""Architectures (U-Net, FCN, pix2pix), the model registry and model files."""

# The architecture modules register themselves on import: importing them here means
# that any import of napari_segen.models... sees every built-in architecture, and that
# a broken architecture module fails loudly here instead of being "unknown" later.
from . import fcn, pix2pix, unet  # noqa: F401
from .model_file import (
    LoadedModel,
    ModelFileError,
    ModelSpec,
    load_model,
    read_spec,
    save_model,
)
from .registry import build_model, list_models, register_model

DEFAULT_MODEL_NAME = "isbi-membrane-unet"
DEFAULT_GENERATOR_NAME = "isbi-membrane-generator"


def _bundled(name: str):
    from importlib.resources import files

    return files("napari_segen.models").joinpath("default", f"{name}.safetensors")


def default_model_path():
    """Path of the bundled default model (a U-Net trained on ISBI 2012 membranes)."""
    return _bundled(DEFAULT_MODEL_NAME)


def default_generator_path():
    """Path of the bundled default generator (the texture pix2pix trained on the ISBI sample:
    label map with 0 = cell interior, 1 = membrane in, EM image out)."""
    return _bundled(DEFAULT_GENERATOR_NAME)


__all__ = [
    "DEFAULT_GENERATOR_NAME",
    "DEFAULT_MODEL_NAME",
    "LoadedModel",
    "ModelFileError",
    "ModelSpec",
    "build_model",
    "default_generator_path",
    "default_model_path",
    "list_models",
    "load_model",
    "read_spec",
    "register_model",
    "save_model",
]
