"""torchrun detection and the few collectives the training loop needs.

Under ``torchrun --nproc_per_node=N`` (environment ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) the process group is initialised with ``gloo`` on the CPU and ``nccl`` on CUDA. Without those
variables (or with ``WORLD_SIZE=1``) everything here is a no-op on a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process sits in the (possibly trivial) process group.

    Attributes:
        rank: global rank (0 on a single process).
        world_size: number of processes.
        local_rank: rank on this node (picks the CUDA device).
        device: the device this process trains on.
        owns_group: whether :func:`setup` initialised the process group (and must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over all processes (``value`` itself on one process)."""
        if not self.distributed:
            return value
        out = value.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out / self.world_size

    def any(self, flag: bool) -> bool:
        """True if ``flag`` is true on any process (so that every rank stops at the same step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :func:`setup` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device: str | torch.device | None = None) -> DistContext:
    """Detect torchrun and initialise the process group (gloo on CPU, nccl on CUDA).

    Args:
        device: the training device; ``None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Returns:
        The :class:`DistContext` of this process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device is None:
        dev = torch.device(f"cuda:{local_rank}" if world > 1 else "cuda") if torch.cuda.is_available() \
            else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None and world > 1:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistContext(device=dev)
    owns = False
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
        owns = True
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)
