"""Weights stored in the file's dtype, each layer computed in another: bounded memory for CPU decoding.

SD-Turbo's weights usually come as float16 files, but the CPU computes in float32. Casting the whole
UNet up front doubles it (1.7 → 3.5 GB). :func:`compute_in` instead keeps every weight as loaded
(float16, memory-mapped from the file by :mod:`cadc.generative.sd_turbo`) and replaces the forward
of each layer by one that casts its weights to the compute dtype for that call only. Casting
float16 → float32 is exact, so the outputs are bit-identical to those of the up-front cast.

LoRA (peft) layers are merged once, before: :func:`merge_lora` computes ``W.float() + ΔW`` in float32
(ΔW from peft's own ``get_delta_weight``, from float32 LoRA weights) and stores the sum rounded once
to the file's dtype, as a float16 GPU pipeline does; the LoRA wrappers are then removed. Merging per
call instead would keep float32 precision but costs a weight-sized ΔW on every call (measured: +4 s
on a 9.5 s UNet tile on 2 cores), and running LoRA unmerged was slower still.

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


_FORWARDS: dict[type, Callable[[torch.dtype], Callable]] = {
    nn.Linear: _linear,
    nn.Conv2d: _conv2d,
    nn.GroupNorm: _group_norm,
    nn.LayerNorm: _layer_norm,
    nn.Embedding: _embedding,
}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every unmerged peft LoRA Linear/Conv2d of ``model`` into its base layer and remove the wrapper.

    The merged weight is ``(W.float() + ΔW)`` rounded once to W's dtype, ΔW being peft's
    ``get_delta_weight`` computed from the LoRA weights (keep them float32 for a float32-exact ΔW).
    It is written into W's own storage: for weights memory-mapped copy-on-write from a file, only the
    pages that change become private memory, and a zero ΔW (an untrained adapter) changes none.
    Returns ``model`` (changed in place).
    """
    wrappers = [(name, m) for name, m in model.named_modules() if isinstance(m, (LoraLinear, LoraConv2d))]
    for name, module in wrappers:
        if module.merged or module.disable_adapters or list(module.active_adapters) != [_ADAPTER]:
            raise ValueError(f"{name}: expected one unmerged, active LoRA adapter")
        base = module.get_base_layer()
        with torch.no_grad():
            if not torch.count_nonzero(module.lora_B[_ADAPTER].weight):  # ΔW = 0: nothing to write
                delta = None
            else:
                delta = module.get_delta_weight(_ADAPTER).to(torch.float32)
            if delta is not None and torch.count_nonzero(delta):
                merged = base.weight.to(torch.float32, copy=True)
                merged += delta
                base.weight.copy_(merged)  # rounds to W's dtype, as .to() does
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, base)
    return model


def compute_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Make every layer of ``model`` compute in ``dtype`` while its weights keep their own dtype.

    Linear, Conv2d, GroupNorm, LayerNorm and Embedding layers cast their weights per call;
    parameters of any other module are cast once, here (they are small: e.g. BLIP's class
    embedding). LoRA wrappers must be merged first (:func:`merge_lora`). Returns ``model`` (changed
    in place; not meant to be trained).
    """
    for module in model.modules():
        if isinstance(module, (LoraLinear, LoraConv2d)):
            raise ValueError("merge LoRA layers first (merge_lora)")
        if type(module) in _FORWARDS:
            module.forward = types.MethodType(_FORWARDS[type(module)](dtype), module)
        elif not isinstance(module, nn.ParameterDict):
            for name, param in list(module.named_parameters(recurse=False)):
                if param.is_floating_point() and param.dtype != dtype:
                    setattr(module, name, nn.Parameter(param.detach().to(dtype), requires_grad=False))
    return model
