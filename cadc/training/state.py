"""Trainer state (optimizers, discriminator heads, step) as one safetensors file.

The codec and adapter weights live in the run's ``model.safetensors`` (written by
:func:`cadc.weights.save_codec`); this file holds the rest that ``--resume`` needs:

* tensors ``<name>.state.<param index>.<key>`` — each optimizer's per-parameter state (AdamW:
  ``step``, ``exp_avg``, ``exp_avg_sq``);
* tensors ``module.<name>.<key>`` — state dicts of trained modules that are not in the codec
  checkpoint (the discriminator heads);
* tensors ``tensor.<name>`` — named tensors the trainer keeps (``weights.*``: the raw trained
  weights, since ``model.safetensors`` may hold their EMA; ``ema.*``: the EMA);
* metadata ``cadc.trainer`` — JSON: step, the optimizers' param_groups, the run's config.

No pickle anywhere; the RNG needs no saving because the trainer reseeds from (seed, step, rank).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_state(
    path: Path,
    step: int,
    optimizers: dict[str, torch.optim.Optimizer],
    modules: dict[str, torch.nn.Module],
    extra: dict[str, Any],
    named: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the trainer state atomically; ``named`` tensors are stored under ``tensor.<name>``."""
    tensors: dict[str, torch.Tensor] = {
        f"tensor.{key}": value.detach().cpu().contiguous() for key, value in (named or {}).items()
    }
    groups: dict[str, Any] = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        for index, values in state["state"].items():
            for key, value in values.items():
                tensors[f"{name}.state.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        groups[name] = state["param_groups"]
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module.{name}.{key}"] = value.detach().cpu().contiguous()
    meta = {"step": step, "param_groups": groups, **extra}
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(temporary), metadata={"cadc.trainer": json.dumps(meta)})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_state(
    path: Path,
    optimizers: dict[str, torch.optim.Optimizer],
    modules: dict[str, torch.nn.Module],
    device: torch.device,
) -> dict[str, Any]:
    """Restore optimizers and modules from :func:`save_state`; returns the metadata (``step``, ...)
    with the named tensors under ``"tensors"`` (CPU; empty for files written before they existed)."""
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        meta = json.loads((handle.metadata() or {})["cadc.trainer"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    for name, optimizer in optimizers.items():
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        prefix = f"{name}.state."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, _, field = key[len(prefix) :].partition(".")
                per_param.setdefault(int(index), {})[field] = value
        optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"][name]})
    for name, module in modules.items():
        prefix = f"module.{name}."
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        module.to(device)
    meta["tensors"] = {k[len("tensor.") :]: v for k, v in tensors.items() if k.startswith("tensor.")}
    return meta
