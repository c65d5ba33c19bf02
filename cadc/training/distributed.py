"""Process-group set-up for ``torchrun`` (or a single plain process).

The same command runs everywhere: without ``torchrun`` (no ``WORLD_SIZE`` in the environment)
it is one process; under ``torchrun --nproc-per-node N [--nnodes ...]`` each process joins a
process group with backend ``nccl`` on CUDA and ``gloo`` on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes, and its torch device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(device_name: str = "auto", timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by torchrun's environment variables (if any).

    ``timeout_s`` bounds every collective (all-reduce, barrier, gather): a rank that stops
    answering makes the others fail with a time-out error after this long instead of hanging.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s)
        )
    return DistInfo(rank, world, local_rank, device)


def teardown(info: DistInfo) -> None:
    """Leave the process group (after a final barrier)."""
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def average_gradients(parameters: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce (mean) the gradients of parameters that are not under DDP (e.g. the
    discriminator heads). Parameters without a gradient contribute zeros."""
    if not info.distributed:
        return
    for p in parameters:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(info.world)


def all_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Mean of scalar metrics over ranks (for logging)."""
    if not info.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist(), strict=True)}


def gather_dicts(rows: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Union of every rank's ``rows`` (keys must differ between ranks), on every rank."""
    if not info.distributed:
        return dict(rows)
    parts: list[dict[str, Any] | None] = [None] * info.world
    dist.all_gather_object(parts, rows)
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part or {})
    return merged
