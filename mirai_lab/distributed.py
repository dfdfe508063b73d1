"""One run across several processes: torchrun + DistributedDataParallel.

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK and LOCAL_WORLD_SIZE. Without them (or with
WORLD_SIZE=1) every method here is a no-op, so a single process trains exactly as before:
no wrapper, no collective, no reseeding. With them, the trainer keeps three promises:
- the global batch of a step is the single-process batch: every rank computes the same
  `batch_indices` and takes its contiguous slice, and DDP averages the gradients;
- the model starts identical on every rank (same seed before init; DDP also broadcasts
  rank 0's parameters), while dropout draws a stream of its own on each rank, keyed by
  (seed, step, rank) in rng.py, so that a resumed run draws the same masks;
- rank 0 alone evaluates and writes; the others wait only where they read what it wrote.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mirai_lab.errors import UserError

# Rank 0 builds caches (a code folder of 1.28M files) and evaluates while the others wait in a
# collective; the default timeouts (10 min for NCCL) would kill a healthy run.
GROUP_TIMEOUT = timedelta(hours=2)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment {name}={value!r}: expected an integer (set by torchrun)") from None


def world_size() -> int:
    """The number of processes of this run (1 outside torchrun), known before any process group exists."""
    return _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """True outside torchrun and on global rank 0: the process that prints and writes."""
    return _env_int("RANK", 0) == 0


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; `world == 1` means a plain single process."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    local_world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this object initialised the process group and must destroy it

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (the size is checked divisible up front)."""
        if not self.active:
            return batch
        per = len(batch) // self.world
        return batch[self.rank * per : (self.rank + 1) * per]

    def barrier(self) -> None:
        if self.active:
            dist.barrier(device_ids=[self.local_rank] if self.device.type == "cuda" else None)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it builds the caches); the others then read them."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def min(self, value: torch.Tensor) -> torch.Tensor:
        """The minimum of `value` over ranks (the first diverged step any rank saw, so all stop together)."""
        if self.active:
            value = value.clone()
            dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return value

    def mean(self, values: list[float]) -> list[float]:
        """Average per-rank logged values, so the curve describes the global batch."""
        if not self.active or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around the trained module; the module itself when single-process."""
        if not self.active:
            return module
        ids = [self.local_rank] if self.device.type == "cuda" else None
        # buffers (RoPE tables, layout indices) are constants: no need to broadcast them every step
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False, gradient_as_bucket_view=True)

    def no_sync(self, module: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce for all but the last micro-batch of a step."""
        if skip and isinstance(module, DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed() -> Dist:
    """Read torchrun's environment, pick the device and join the process group (NCCL on CUDA, gloo on CPU)."""
    world = _env_int("WORLD_SIZE", 1)
    if world < 1:
        raise UserError(f"environment WORLD_SIZE={world}: expected >= 1")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world:
        raise UserError(f"environment RANK={rank}: expected 0..{world - 1} (WORLD_SIZE={world})")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"environment LOCAL_RANK={local_rank}: this node has {torch.cuda.device_count()} "
                            "GPU(s); use torchrun --nproc_per_node <= the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=GROUP_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
        owns = True
    return Dist(rank=rank, local_rank=local_rank, world=world, local_world=local_world, device=device,
                owns_group=owns)
