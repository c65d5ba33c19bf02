"""Apply CADC's denoiser adapter to a ComfyUI SD-Turbo MODEL (a ModelPatcher).

The adapter (:class:`cadc.generative.adapter.AdapterWeights`) has two parts:

* a new ``conv_in`` Conv2d(latent_channels → 320, 3×3) that reads all of l_T. It replaces ComfyUI's
  ``diffusion_model.input_blocks.0.0`` as an *object patch* on a clone of the ModelPatcher, so the
  MODEL that other nodes use stays untouched;
* LoRA weights named after the diffusers UNet (``down_blocks.0.attentions.0.proj_in`` ...).
  ComfyUI's own LoRA key map knows diffusers attention names only in their ``processor.to_q``
  spelling and drops the others silently. The map built here translates every diffusers UNet
  name (``comfy.utils.unet_to_diffusers``); ``comfy.lora.load_lora`` turns the tensors into
  patches and ``ModelPatcher.add_patches`` registers them, so ComfyUI applies, removes and
  offloads them like any LoRA. A LoRA module that finds no UNet weight raises instead.

ComfyUI-specific by nature, so it lives in the node pack, not in ``cadc``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from cadc.generative.adapter import AdapterConfig, AdapterWeights, seeded_adapter
from cadc.weights import Checkpoint

log = logging.getLogger(__name__)

CONV_IN = "diffusion_model.input_blocks.0.0"
"""ComfyUI's name of the UNet's input convolution (diffusers: ``conv_in``)."""


def lora_key_map(unet_config: dict[str, Any]) -> dict[str, str]:
    """Diffusers UNet module names → ComfyUI weight keys (``diffusion_model.….weight``)."""
    import comfy.utils

    return {
        diffusers_key[: -len(".weight")]: f"diffusion_model.{comfy_key}"
        for diffusers_key, comfy_key in comfy.utils.unet_to_diffusers(unet_config).items()
        if diffusers_key.endswith(".weight")
    }


def adapter_for(model: Any, checkpoint: Checkpoint) -> AdapterWeights:
    """The checkpoint's adapter, or the core's seeded demo adapter when it has none.

    The demo adapter copies the UNet's own conv_in onto l_T's first 4 channels (zeros elsewhere)
    and has no LoRA update, so the UNet behaves like plain SD-Turbo on l_T[:, :4].
    """
    if checkpoint.adapter_state:
        return AdapterWeights.from_state_dict(checkpoint.adapter_state, checkpoint.adapter_config)
    log.warning("CADC: the codec checkpoint has no denoiser adapter; using the seeded demo conv_in (no LoRA)")
    config = (
        AdapterConfig.from_dict(checkpoint.adapter_config) if checkpoint.adapter_config else AdapterConfig()
    )
    config = dataclasses.replace(config, latent_channels=checkpoint.codec.config.latent_channels)
    return seeded_adapter(model.get_model_object(CONV_IN), {}, config)


def new_conv_in(adapter: AdapterWeights) -> torch.nn.Module:
    """The adapter's conv_in as a ComfyUI manual-cast Conv2d (weights follow the input's dtype/device)."""
    import comfy.ops

    out_channels, in_channels, kernel, _ = adapter.conv_in_weight.shape
    conv = comfy.ops.manual_cast.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)
    with torch.no_grad():
        conv.weight.copy_(adapter.conv_in_weight)
        conv.bias.copy_(adapter.conv_in_bias)
    return conv.eval()


def apply_adapter(model: Any, adapter: AdapterWeights) -> Any:
    """A clone of ``model`` (ModelPatcher) with the adapter's conv_in and LoRA.

    Raises:
        ValueError: conv_in does not fit the UNet, or a LoRA module names no UNet weight.
    """
    import comfy.lora

    unet_config = model.model.model_config.unet_config
    width, adapter_width = unet_config.get("model_channels"), adapter.conv_in_weight.shape[0]
    if adapter_width != width:
        raise ValueError(f"CADC: adapter conv_in has {adapter_width} output channels, the UNet has {width}")
    patched = model.clone()
    patched.add_object_patch(CONV_IN, new_conv_in(adapter))
    if adapter.lora:
        key_map = lora_key_map(unet_config)
        unmatched = sorted(set(adapter.lora) - set(key_map))
        if unmatched:
            raise ValueError(
                f"CADC: {len(unmatched)} LoRA modules match no UNet weight, e.g. {unmatched[:3]}"
            )
        to_load = {name: key_map[name] for name in adapter.lora}
        patches = comfy.lora.load_lora(adapter.lora_state_dict(with_alpha=True), to_load, log_missing=True)
        added = patched.add_patches(patches, 1.0)
        if len(added) != len(adapter.lora):
            raise ValueError(f"CADC: ComfyUI took {len(added)} of {len(adapter.lora)} LoRA modules")
    return patched
