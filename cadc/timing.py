"""Per-stage wall-clock timing shared by the codec and the generative decoder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def synchronize_cuda() -> None:
    """Wait for queued GPU work (no-op when CUDA is unused)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def stage_timer(timings: dict[str, float] | None, name: str) -> Iterator[None]:
    """Add the wall seconds of the block to ``timings[name]`` (no-op when ``timings`` is None).

    When CUDA is in use, queued GPU work is waited for on both ends (only while timing), so each
    stage is charged its own kernels rather than the previous stage's.
    """
    if timings is None:
        yield
        return
    synchronize_cuda()
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize_cuda()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
