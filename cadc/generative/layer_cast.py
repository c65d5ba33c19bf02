"""Weights stored in the file's dtype, each layer computed in another: bounded memory for CPU decoding.

SD-Turbo's weights usually come as float16 files, but the CPU computes in float32. Casting the whole
UNet up front doubles it (1.7 → 3.5 GB). :func:`compute_in` instead keeps every weight as loaded
(float16, memory-mapped from the file by :mod:`cadc.generative.sd_turbo`) and replaces the forward
of each layer by one that casts its weights to the compute dtype for that call only. Casting
float16 → float32 is exact, so the outputs are bit-identical to those of the up-front cast.

LoRA (peft) layers are merged on the fly: the layer computes with ``W.float() + ΔW``, ΔW from peft's
own ``get_delta_weight`` in float32 — the same sum, bit for bit, as merging LoRA into a float32
UNet — so the adapter keeps its full precision although the base weights stay float16.

The replaced forwards only read module state, so several threads may run one model at once.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from peft.tuners.lora import Conv2d as LoraConv2d
from peft.tuners.lora import Linear as LoraLinear
from torch import nn
from torch.nn import functional as F

_ADAPTER = "default"


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _linear(dtype: torch.dtype) -> Callable:
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(dtype), self.weight.to(dtype), _cast(self.bias, dtype))

    return forward


def _conv2d(dtype: torch.dtype) -> Callable:
    def forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x.to(dtype), self.weight.to(dtype), _cast(self.bias, dtype))

    return forward


def _group_norm(dtype: torch.dtype) -> Callable:
    def forward(self: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.to(dtype), self.num_groups, _cast(self.weight, dtype), _cast(self.bias, dtype), self.eps)

    return forward


def _layer_norm(dtype: torch.dtype) -> Callable:
    def forward(self: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x.to(dtype), self.normalized_shape, _cast(self.weight, dtype), _cast(self.bias, dtype), self.eps
        )

    return forward


def _embedding(dtype: torch.dtype) -> Callable:
    def forward(self: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(
            ids, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse
        ).to(dtype)

    return forward


def _merged_lora(dtype: torch.dtype) -> Callable:
    """Forward of a peft LoRA Linear/Conv2d: the base layer with W + ΔW, merged for this call only."""

    def forward(self: LoraLinear | LoraConv2d, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        base = self.get_base_layer()
        weight = base.weight.to(dtype, copy=True)
        weight += self.get_delta_weight(_ADAPTER).to(dtype)  # in place, as peft's merge: one fewer copy alive
        bias = _cast(base.bias, dtype)
        if isinstance(base, nn.Conv2d):
            return base._conv_forward(x.to(dtype), weight, bias)
        return F.linear(x.to(dtype), weight, bias)

    return forward


_FORWARDS: dict[type, Callable[[torch.dtype], Callable]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.GroupNorm: _group_norm,
    nn.LayerNorm: _layer_norm,
    nn.Embedding: _embedding,
}


def compute_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Make every layer of ``model`` compute in ``dtype`` while its weights keep their own dtype.

    Linear, Conv2d, GroupNorm, LayerNorm and Embedding layers cast their weights per call; unmerged
    peft LoRA Linear/Conv2d layers merge ΔW per call (their LoRA weights must be in ``dtype`` or
    wider, so that ΔW is exact); parameters of any other module are cast once, here (they are small:
    e.g. BLIP's class embedding). Returns ``model`` (changed in place; not meant to be trained).
    """
    for module in model.modules():
        if isinstance(module, (LoraLinear, LoraConv2d)):
            if module.merged or module.disable_adapters or list(module.active_adapters) != [_ADAPTER]:
                raise ValueError(f"{type(module).__name__}: expected one unmerged, active LoRA adapter")
            for lora in (module.lora_A[_ADAPTER], module.lora_B[_ADAPTER]):
                if torch.finfo(lora.weight.dtype).bits < torch.finfo(dtype).bits:
                    raise ValueError(f"LoRA weights in {lora.weight.dtype} cannot give an exact {dtype} merge")
            module.forward = types.MethodType(_merged_lora(dtype), module)
        elif type(module) in _FORWARDS:
            module.forward = types.MethodType(_FORWARDS[type(module)](dtype), module)
        elif not isinstance(module, nn.ParameterDict):
            for name, param in list(module.named_parameters(recurse=False)):
                if param.is_floating_point() and param.dtype != dtype:
                    setattr(module, name, nn.Parameter(param.detach().to(dtype), requires_grad=False))
    return model
