"""Dtypes and devices of a run's networks.

* Trainable parameters (codec, UNet ``conv_in`` + LoRA, discriminator heads) and every optimizer
  state are float32, whatever dtype the SD-Turbo files hold (they ship as float16).
* Frozen networks (UNet base, VAE, text encoder, BLIP, LPIPS, CLIP, the discriminator's
  backbone) are stored in ``frozen_dtype``: by default the autocast dtype when autocast is on
  (bf16 on CUDA: half the memory of float32) and float32 otherwise, so a float16 file on a CPU
  run is upcast instead of failing with "mat1 and mat2 must have the same dtype".
* The frozen networks run under :func:`autocast` (bf16) when it is on; the codec and its rate
  always run in float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from .config import TrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 when ``amp`` is ``bf16``, or ``auto`` on CUDA; None (no autocast) otherwise."""
    if config.amp == "bf16" or (config.amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def frozen_dtype(config: TrainConfig, amp: torch.dtype | None) -> torch.dtype:
    """Storage dtype of the frozen networks; low precision only under autocast."""
    if config.frozen_dtype == "auto":
        return amp if amp is not None else torch.float32
    dtype = DTYPES[config.frozen_dtype]
    if dtype != torch.float32 and amp is None:
        raise ValueError(
            f"frozen_dtype={config.frozen_dtype} needs autocast (amp = 'bf16', or 'auto' on CUDA): "
            "without it float32 activations meet low-precision weights"
        )
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``device`` in ``dtype``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def freeze(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``module`` moved to ``device`` / ``dtype`` (floating tensors only), eval mode, no gradients."""
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def cast_frozen(module: nn.Module, dtype: torch.dtype, trainable: list[nn.Parameter]) -> None:
    """Cast ``module``'s parameters and floating buffers to ``dtype`` in place, except the
    ``trainable`` parameters, which are made float32 (their values are not rounded through
    ``dtype`` on the way)."""
    keep = {id(p) for p in trainable}
    for p in module.parameters():
        target = torch.float32 if id(p) in keep else dtype
        if p.dtype != target:
            p.data = p.data.to(target)
    for owner in module.modules():
        for name, buffer in owner.named_buffers(recurse=False):
            if buffer.is_floating_point() and buffer.dtype != dtype:
                setattr(owner, name, buffer.to(dtype))
