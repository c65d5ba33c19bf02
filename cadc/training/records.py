"""What a run writes about itself while it trains (rank 0 only).

* ``metrics.jsonl`` — one JSON object per optimizer step: ``step`` (1-based, after the update),
  every loss term (``loss``, ``bpp``, ``mse``, ``lpips``, ``clip``, ``aux``, ``adv``, ``disc``,
  ``quantile``, ``psnr`` … as the stage has them, averaged over micro-batches and ranks), ``lr``,
  ``grad_norm`` (before clipping; ``grad_norm_aux`` for a separately clipped g_aux),
  ``step_seconds`` (wall time of the step on rank 0, data loading included), and the memory
  high-water mark: ``cuda_peak_mib`` (``torch.cuda.max_memory_allocated`` during the step) on
  CUDA, ``rss_peak_mib`` (the process's peak resident set so far) on the CPU.
* ``validation.jsonl`` — one object per validation: step, score, the per-metric means and the
  per-image rows.
* ``tensorboard/`` — the same scalars as TensorBoard events (``train/<key>``, ``val/<key>``),
  through ``torch.utils.tensorboard``, when the ``tensorboard`` package is importable; otherwise
  the JSONL files are the only record (``TensorBoardUnavailable`` names the reason once).

On ``--resume`` the JSONL rows after the resumed step are dropped (they belong to the steps that
will be redone) and TensorBoard purges them the same way.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

METRICS_FILE = "metrics.jsonl"
VALIDATION_FILE = "validation.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSONL file (an empty list when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_after(path: Path, step: int) -> None:
    """Keep the rows of ``path`` with ``step`` ≤ ``step`` (a resumed run redoes the rest)."""
    rows = [row for row in read_jsonl(path) if row.get("step", 0) <= step]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def peak_memory(device: torch.device) -> dict[str, float]:
    """The memory high-water mark in MiB: CUDA allocations since the last reset, or peak RSS."""
    if device.type == "cuda":
        return {"cuda_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"rss_peak_mib": peak / (2**20 if sys.platform == "darwin" else 2**10)}


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA high-water mark (RSS peaks cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


class RunLog:
    """Appends scalar rows to the JSONL files and, when available, TensorBoard.

    Args:
        out: the run folder.
        start: the step the run starts from (rows after it are dropped on resume).
        tensorboard: write TensorBoard events if ``torch.utils.tensorboard`` can be imported.
        enabled: False on ranks other than 0 (nothing is written).
    """

    def __init__(self, out: Path, start: int, tensorboard: bool, enabled: bool = True) -> None:
        self.enabled = enabled
        self.writer = None
        self.tensorboard_note = "tensorboard disabled (tensorboard = false)"
        if not enabled:
            return
        self.metrics_path, self.validation_path = out / METRICS_FILE, out / VALIDATION_FILE
        for path in (self.metrics_path, self.validation_path):
            _truncate_after(path, start)
        self._metrics = self.metrics_path.open("a")
        self._validation = self.validation_path.open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:  # torch's module needs the separate `tensorboard` package
                self.tensorboard_note = f"tensorboard not written: {error} (pip install tensorboard)"
            else:
                self.writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=start + 1 if start else None)
                self.tensorboard_note = f"tensorboard events in {out / TENSORBOARD_DIR}"

    def step(self, step: int, scalars: dict[str, float]) -> None:
        """One training step's scalars."""
        if not self.enabled:
            return
        self._metrics.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def validation(self, step: int, result: dict[str, Any]) -> None:
        """One validation (``score``, ``mean``, ``images``, ``failed``)."""
        if not self.enabled:
            return
        self._validation.write(json.dumps({"step": step, **result}) + "\n")
        self._validation.flush()
        if self.writer is not None:
            for key, value in {"score": result["score"], **result["mean"]}.items():
                if value is not None:
                    self.writer.add_scalar(f"val/{key}", value, step)

    def flush(self) -> None:
        if not self.enabled:
            return
        self._metrics.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._metrics.close()
        self._validation.close()
        if self.writer is not None:
            self.writer.close()
