"""Multi-process (multi-GPU) training with torch DistributedDataParallel.

The same ``napari-segen train`` command runs under ``torchrun``::

    torchrun --nproc_per_node=4 -m napari_segen.cli train --images imgs/ --masks masks/ \\
        --out model.safetensors --distributed

``torchrun`` starts one process per GPU and sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE`` and the rendezvous address; :func:`init_distributed` reads them,
joins the process group (NCCL on CUDA, gloo on the CPU) and picks each
process's device. The trainer wraps the model in DDP, gives each rank its own
share of every epoch's crops (a ``DistributedSampler``), and lets rank 0 alone
validate, write files and decide when to stop (the decision is broadcast, so
all ranks leave the loop together).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..utils.devices import resolve_device


@dataclass
class DistInfo:
    """Where this process stands in a distributed run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether the ``torchrun`` environment variables are set."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Join the process group started by ``torchrun`` and choose this rank's device.

    Args:
        device: ``"auto"`` (CUDA if available, else CPU), ``"cuda"`` or ``"cpu"``.
        backend: ``"nccl"`` or ``"gloo"``; default NCCL on CUDA, gloo on the CPU.

    Raises:
        RuntimeError: not started by ``torchrun`` (with the command to use instead).
    """
    if not launched_by_torchrun():
        raise RuntimeError(
            "--distributed needs the torchrun launcher, e.g. "
            "'torchrun --nproc_per_node=2 -m napari_segen.cli train ... --distributed'; "
            "for one process, leave out --distributed"
        )
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}; "
                "start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(local)
        dev = f"cuda:{local}"
    else:
        dev = "cpu"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev, backend)


def cleanup() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def distributed_session(device: str = "auto", backend: str | None = None) -> Iterator[DistInfo]:
    """``init_distributed`` on entry, a final barrier and ``cleanup`` on exit."""
    info = init_distributed(device, backend)
    try:
        yield info
        barrier()
    finally:
        cleanup()


def barrier() -> None:
    """Wait for every rank (no-op outside a distributed run)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_flag(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Rank 0's ``flag`` on every rank (no-op outside a distributed run)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())
