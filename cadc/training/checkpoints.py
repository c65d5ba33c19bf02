"""The run folder's checkpoint files: step checkpoints with a retention rule, ``last`` and ``best``.

Layout (rank 0 writes; ``out`` is ``cadc train --out``)::

    model.safetensors            last checkpoint's exported model (EMA weights when EMA is on) —
                                 what `cadc compress --model` and Stage II's --init read
    trainer-state.safetensors    last checkpoint's trainer state (raw weights, EMA, optimizers, step)
                                 — what --resume reads
    best.safetensors, best.json  exported model with the lowest validation score so far, and its
                                 step, score and metric means
    checkpoints/step-00012000/   model.safetensors + trainer-state.safetensors of that step

``model.safetensors`` and ``trainer-state.safetensors`` are hard links to the newest step's files
(copies where the file system has no hard links), replaced atomically, so a crash never leaves a
half-written "last". Retention: the ``keep`` newest step folders stay, plus every step that is a
multiple of ``keep_every`` (when > 0); older ones are deleted after a new one is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer-state.safetensors"
BEST_MODEL_FILE = "best.safetensors"
BEST_INFO_FILE = "best.json"
CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir(out: Path, step: int) -> Path:
    """``out/checkpoints/step-<8-digit step>``."""
    return out / CHECKPOINT_DIR / f"step-{step:08d}"


def step_checkpoints(out: Path) -> dict[int, Path]:
    """Complete step folders (both files present) by step."""
    found = {}
    root = out / CHECKPOINT_DIR
    for path in root.iterdir() if root.is_dir() else ():
        match = _STEP_DIR.match(path.name)
        if match and (path / MODEL_FILE).is_file() and (path / STATE_FILE).is_file():
            found[int(match[1])] = path
    return dict(sorted(found.items()))


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source`` (a copy if linking fails), atomically."""
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def publish_last(out: Path, step: int) -> None:
    """Point the top-level model/state files at step ``step``'s checkpoint."""
    folder = step_dir(out, step)
    for name in (MODEL_FILE, STATE_FILE):
        link_or_copy(folder / name, out / name)


def prune(out: Path, keep: int, keep_every: int) -> list[int]:
    """Delete step folders outside the retention rule; returns the deleted steps."""
    steps = list(step_checkpoints(out))
    newest = set(steps[-keep:])
    doomed = [s for s in steps if s not in newest and not (keep_every and s % keep_every == 0)]
    for step in doomed:
        shutil.rmtree(step_dir(out, step), ignore_errors=True)
    return doomed


def read_best(out: Path) -> dict[str, Any] | None:
    """``best.json`` (step, score, mean) or None."""
    path = out / BEST_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_best_info(out: Path, info: dict[str, Any]) -> None:
    temporary = out / f".{BEST_INFO_FILE}.tmp-{os.getpid()}"
    temporary.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, out / BEST_INFO_FILE)
