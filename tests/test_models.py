"""Model registry, both architectures on CPU, and model files (safetensors + JSON sidecar)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from napari_segen.models import (
    ModelFileError,
    ModelSpec,
    build_model,
    list_models,
    load_model,
    read_spec,
    register_model,
    save_model,
)
from napari_segen.utils.atomic import OverwriteError


def test_registry_lists_both_architectures():
    assert {"unet", "fcn_resnet50"} <= set(list_models())


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown architecture 'resnet9000'.*unet"):
        build_model("resnet9000")


def test_bad_builder_arguments_are_reported():
    with pytest.raises(ValueError, match="bad arguments for architecture 'unet'"):
        build_model("unet", colour="blue")


BUILTIN_ARCHITECTURES = ("unet", "fcn_resnet50", "pix2pix_generator", "patchgan")


def _python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, where nothing of the package is imported yet."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_registry_imports_nothing_from_the_package():
    """The registry is a leaf: the architecture modules import it, never the reverse."""
    from napari_segen.models import registry

    tree = ast.parse(Path(registry.__file__).read_text())
    imported = [
        (node.level, getattr(node, "module", None) or ", ".join(a.name for a in node.names))
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    own = [m for level, m in imported if level or m.split(".")[0] == "napari_segen"]
    assert not own, f"models/registry.py imports from the package: {own}"


def test_any_import_of_the_models_registers_the_builtin_architectures():
    res = _python(
        "from napari_segen.models.registry import build_model\n"
        "try:\n"
        "    build_model('resnet9000')\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "unknown architecture 'resnet9000'" in res.stdout
    for name in BUILTIN_ARCHITECTURES:
        assert name in res.stdout


@pytest.mark.parametrize(
    "bug, shown",
    [
        ("import no_such_dependency", "ModuleNotFoundError: No module named 'no_such_dependency'"),
        ("raise RuntimeError('a bug in pix2pix')", "RuntimeError: a bug in pix2pix"),
    ],
)
def test_a_broken_architecture_module_fails_as_itself(bug, shown):
    """An error inside pix2pix.py is raised where the package imports it, not hidden until
    build_model says "unknown architecture"."""
    code = (
        "import importlib.abc, importlib.util, sys\n"
        "class Broken(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'napari_segen.models.pix2pix':\n"
        "            return importlib.util.spec_from_loader(name, self)\n"
        "    def create_module(self, spec):\n"
        "        return None\n"
        "    def exec_module(self, module):\n"
        f"        {bug}\n"
        "sys.meta_path.insert(0, Broken())\n"
        "from napari_segen.models import build_model\n"
        "build_model('pix2pix_generator')\n"
    )
    res = _python(code)
    assert res.returncode != 0
    assert shown in res.stderr
    assert "unknown architecture" not in res.stderr


def test_new_architectures_plug_in():
    @register_model("test_identity_net")
    def _identity(num_classes: int = 2):
        return torch.nn.Conv2d(1, num_classes, 1)

    assert "test_identity_net" in list_models()
    assert build_model("test_identity_net", num_classes=3).out_channels == 3


@pytest.mark.parametrize("depth,base,in_ch,ncls", [(1, 4, 1, 2), (3, 8, 3, 5)])
def test_unet_keeps_spatial_size_and_class_count(depth, base, in_ch, ncls):
    net = build_model("unet", in_channels=in_ch, num_classes=ncls, depth=depth, base_channels=base)
    x = torch.randn(2, in_ch, 32, 48)
    assert net(x).shape == (2, ncls, 32, 48)
    # the encoder exposes depth + 1 feature maps, bottleneck last
    assert len(net.encode(x)) == depth + 1


def test_unet_trains_a_step_on_cpu():
    net = build_model("unet", in_channels=1, num_classes=2, depth=2, base_channels=4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 16, 16))
    before = torch.nn.functional.cross_entropy(net(x), y)
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert torch.nn.functional.cross_entropy(net(x), y) < before


@pytest.mark.parametrize("in_ch", [1, 3])
def test_fcn_resnet50_gray_and_rgb(in_ch):
    net = build_model("fcn_resnet50", in_channels=in_ch, num_classes=3).eval()
    with torch.inference_mode():
        out = net(torch.rand(1, in_ch, 64, 72))
    assert out.shape == (1, 3, 64, 72)


def test_fcn_loads_local_backbone_weights_without_pickle(tmp_path):
    from torchvision.models import resnet50

    src = resnet50(weights=None)
    torch.save(src.state_dict(), tmp_path / "resnet50-local.pth")
    net = build_model("fcn_resnet50", in_channels=3, num_classes=2)
    untouched = net.load_pretrained(tmp_path / "resnet50-local.pth")
    assert torch.equal(net.net.backbone.conv1.weight, src.conv1.weight)
    assert any(k.startswith("classifier") for k in untouched)


def test_fcn_rejects_unrelated_weights(tmp_path):
    torch.save({"foo": torch.zeros(3)}, tmp_path / "other.pth")
    net = build_model("fcn_resnet50", in_channels=3, num_classes=2)
    with pytest.raises(ValueError, match="no weights that fit"):
        net.load_pretrained(tmp_path / "other.pth")


def test_model_file_round_trip(tmp_path, tiny_unet):
    path = save_model(tmp_path / "m.safetensors", tiny_unet.module, tiny_unet.spec)
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["architecture"] == "unet" and sidecar["class_names"] == [
        "background",
        "foreground",
    ]
    loaded = load_model(path)
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), tiny_unet.module(x), atol=1e-6)
    assert loaded.spec.class_colors[0] is None and loaded.spec.class_colors[1].startswith("#")
    assert not loaded.module.training


def test_lone_safetensors_file_still_loads(tmp_path, tiny_unet):
    path = save_model(tmp_path / "m.safetensors", tiny_unet.module, tiny_unet.spec)
    (tmp_path / "m.json").unlink()
    assert read_spec(path).class_names == ["background", "foreground"]
    load_model(path)


def test_save_refuses_to_overwrite(tmp_path, tiny_unet):
    path = save_model(tmp_path / "m.safetensors", tiny_unet.module, tiny_unet.spec)
    before = path.read_bytes()
    with pytest.raises(OverwriteError, match="already exists"):
        save_model(path, tiny_unet.module, tiny_unet.spec)
    assert path.read_bytes() == before
    save_model(path, tiny_unet.module, tiny_unet.spec, overwrite=True)


def test_pickle_file_is_refused_not_executed(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ModelFileError, match="not a valid safetensors file|no description"):
        load_model(bad)
    assert not marker.exists()


def test_corrupt_and_mismatched_files_give_clear_errors(tmp_path, tiny_unet):
    path = save_model(tmp_path / "m.safetensors", tiny_unet.module, tiny_unet.spec)
    # truncated weights
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.json").write_text((tmp_path / "m.json").read_text())
    with pytest.raises(ModelFileError, match="not a valid safetensors file"):
        load_model(tmp_path / "cut.safetensors")
    # sidecar describing another architecture size
    meta = json.loads((tmp_path / "m.json").read_text())
    meta["arch_kwargs"]["base_channels"] = 16
    (tmp_path / "m.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="weights do not match"):
        load_model(path)
    # not JSON, and not ours
    (tmp_path / "m.json").write_text("{oops")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(path)
    (tmp_path / "m.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ModelFileError, match="not a napari-segen model description"):
        load_model(path)
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "missing.safetensors")


def test_spec_from_newer_format_is_refused():
    with pytest.raises(ModelFileError, match="newer napari-segen"):
        ModelSpec.from_json({"format": "napari-segen-model", "format_version": 99})
