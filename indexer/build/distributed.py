"""Distributed builds on torch.distributed, launched by ``torchrun`` (docs/scale.md).

Each rank indexes a contiguous slice of the examples into its own shard file (a complete
index of those rows); the curvature passes sum their D×(r+p) accumulators across ranks;
rank 0 then writes the manifest whose factor and example datasets are HDF5 virtual
datasets over the shards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    device: torch.device  # where collectives run: CPU (gloo) or the rank's GPU (NCCL)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum in place across ranks (every rank gets the identical result)."""
        staged = tensor.to(self.device)
        dist.all_reduce(staged)
        tensor.copy_(staged)

    def minimum(self, value: int) -> int:
        staged = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(staged, op=dist.ReduceOp.MIN)
        return int(staged.item())

    def barrier(self) -> None:
        dist.barrier()


def from_environment(device: str, timeout_minutes: float = 30) -> Dist | None:
    """A process group when launched by torchrun with WORLD_SIZE > 1, else None.

    The timeout bounds every collective: if a rank dies, the others fail instead of
    hanging (torchrun also tears the job down).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    rank = dist.get_rank()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return Dist(rank, dist.get_world_size(), torch.device("cuda", local))
    return Dist(rank, dist.get_world_size(), torch.device("cpu"))


def shard_rows(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank's contiguous row range, cut at batch boundaries.

    Cutting where a single-process build starts a batch keeps every batch (and so every
    padded forward/backward) identical, which makes the shards' factors equal the
    single-process build bit for bit.
    """
    batches = -(-n // batch_size)
    first = rank * batches // world
    last = (rank + 1) * batches // world
    return min(first * batch_size, n), min(last * batch_size, n)


def shard_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.stem}.shard-{rank:05d}-of-{world:05d}{out.suffix}")
