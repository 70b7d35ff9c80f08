"""Multi-process training under `torchrun`: who am I, and the few collective steps we need.

`torchrun --nproc_per_node=N ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them every
function here describes a single process, so the same training code runs on a laptop CPU
and on a multi-GPU node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


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
    """Join the process group torchrun describes (NCCL on CUDA, Gloo on CPU), if any (left at
    the end of a `process_group` block: `cli.main` is one)."""
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


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Leave the process group that `setup` joins inside this block when the block ends, by
    error or not; a group joined before the block is left to whoever joined it.

    A process that exits still in its group makes torch warn, and can leave NCCL's
    communicators and their GPU memory behind until the driver reclaims them.
    """
    joined_before = dist.is_available() and dist.is_initialized()
    try:
        yield
    finally:
        if not joined_before and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


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


def broadcast_buffers(model: torch.nn.Module, context: Context) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics): after training each
    process updated them on its own batches, and evaluation must use one model."""
    if context.active:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather_objects(value: object, context: Context) -> list[object]:
    """Every process's `value` (picklable), in rank order; [value] in one process."""
    if not context.active:
        return [value]
    gathered: list[object] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def free_cores(samples: int = 5, interval_s: float = 0.05) -> int:
    """Cores this process may use that no other task is running on now (at least 1).

    The CPUs of this process's affinity mask less the runnable tasks of the machine (Linux's
    /proc/loadavg, an instantaneous count, unlike the load averages, which lag a minute behind
    a job that just ended), the median of a few samples, the reading task itself aside.
    Elsewhere: every core.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        running = []
        for _ in range(samples):
            with open("/proc/loadavg") as file:
                running.append(int(file.read().split()[3].split("/")[0]) - 1)
            time.sleep(interval_s)
    except (OSError, IndexError, ValueError):
        return max(1, cores or 1)
    return max(1, (cores or 1) - int(statistics.median(running)))


def set_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads for this process and return how many.

    `threads` > 0 is taken as given; 0 picks the free cores (`free_cores`) shared among the
    node's training processes (torchrun's LOCAL_WORLD_SIZE). torch's default, one thread per
    core, spins against any other busy process: on two cores, two such processes slowed each
    other about six-fold where one thread each halves them (see `make bench`).
    """
    if threads < 0:
        raise ValueError(f"threads must be 0 (the free cores) or a positive number, got {threads}")
    chosen = threads or max(1, free_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(chosen)
    log.info("torch uses %d thread(s)%s", chosen, "" if threads else " (the free cores)")
    return chosen
