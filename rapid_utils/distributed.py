"""Multi-process training under `torchrun`: who am I, and the few collective steps we need.

`torchrun --nproc_per_node=N ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them every
function here describes a single process, so the same training code runs on a laptop CPU
and on a multi-GPU node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1


def setup() -> Context:
    """Join the process group torchrun describes (NCCL on CUDA, Gloo on CPU), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    context = Context(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return context


def device(context: Context) -> torch.device:
    """This process's device: its own GPU under torchrun, else CUDA when present, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", context.local_rank)
    return torch.device("cpu")


def barrier(context: Context) -> None:
    """Wait for every process (a no-op in a single process)."""
    if context.active:
        dist.barrier()


def sum_over_processes(values: list[float], context: Context) -> list[float]:
    """Each of `values` summed over all processes (the values themselves in one process)."""
    if not context.active:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        total = total.cuda()
    dist.all_reduce(total)
    return total.tolist()


def gather_objects(value: object, context: Context) -> list[object]:
    """Every process's `value` (picklable), in rank order; [value] in one process."""
    if not context.active:
        return [value]
    gathered: list[object] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered
