"""Distributed training: 2 CPU processes under torchrun (gloo) write the same kind of model file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from napari_segen.models import load_model
from napari_segen.training.checkpoint import last_checkpoint_path, load_checkpoint


@pytest.fixture
def small_folders(tmp_path, isbi_dir):
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for i in (0, 1, 2):
            im = Image.open(isbi_dir / "train" / sub / f"{i:02d}.png")
            im.crop((0, 0, 96, 96)).save(root / sub / f"{i:02d}.png")
    return root


def test_torchrun_two_cpu_processes(tmp_path, small_folders):
    out = tmp_path / "ddp.safetensors"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "napari_segen.cli", "train",
        "--images", str(small_folders / "images"), "--masks", str(small_folders / "masks"),
        "--mask-map", "0:1,255:0", "--depth", "2", "--base-channels", "8", "--crop-size", "64",
        "--batch-size", "2", "--samples-per-epoch", "8", "--epochs", "2", "--device", "cpu",
        "-q", "--out", str(out), "--distributed",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "distributed: 2 processes (gloo)" in log
    assert log.count("training on") == 1  # only rank 0 talks
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["epochs"] == 2
    model = load_model(out)  # an ordinary model file
    assert model.spec.provenance["world_size"] == 2
    ckpt = load_checkpoint(last_checkpoint_path(out))
    # 8 crops per epoch split over 2 ranks: 2 steps of 2 crops each per rank.
    assert ckpt.train_state["world_size"] == 2 and ckpt.train_state["steps_per_epoch"] == 2
    assert ckpt.epoch == 2
