"""Process-group helpers over torch.distributed (launched by torchrun; one process needs nothing)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when this module created the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(group_of_one: bool = False, timeout_s: float = 300.0) -> DistEnv:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on CUDA).

    ``group_of_one``: a single process (no torchrun) still gets a process group of one, for code that needs one
    (FSDP). ``timeout_s`` bounds every collective, so a process that never arrives fails the run with an error
    instead of hanging it.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = False
    backend = "nccl" if cuda else "gloo"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        owns = True
    elif group_of_one and not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            store=dist.HashStore(),
            rank=0,
            world_size=1,
            timeout=timedelta(seconds=timeout_s),
        )
        owns = True
    return DistEnv(rank, world, local_rank, device, owns)


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()
