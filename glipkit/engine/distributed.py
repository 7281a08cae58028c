"""One code path for 1 or N processes: torchrun's environment -> a process group (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    """This process's place in the job; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op without a process group)."""
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.initialized_here and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ValueError(f"{name}={os.environ.get(name)!r} is not an integer") from None


def init_distributed(backend: str | None = None, timeout_minutes: int = 60) -> DistributedContext:
    """Join torchrun's process group when WORLD_SIZE > 1 (nccl when CUDA is available, else gloo)."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size)
    initialized = False
    if world_size > 1 and dist.is_available() and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        initialized = True
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(rank, world_size, local_rank, local_world_size, initialized)
