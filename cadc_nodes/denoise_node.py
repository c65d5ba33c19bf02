"""One-Step Denoise: CADC's generative step on ComfyUI's own SD-Turbo MODEL.

The stock CheckpointLoaderSimple loads SD-Turbo; this node clones that MODEL, patches in the CADC
adapter (:mod:`cadc_nodes.unet_patch`), loads it through ComfyUI's model management and calls the
UNet once at t = 999 on l_T. ComfyUI's sampler path is not used: its ``apply_model`` treats the
input as a 4-channel noisy latent and cannot take l_T's extra channels. x0 comes from
:func:`cadc.generative.schedule.predict_x0`, the formula the core decoder uses, and is returned
in ComfyUI's LATENT units (VAE units) for the stock VAE Decode.
"""

from __future__ import annotations

from typing import Any

import torch

from cadc.codec_io import DecodedImage
from cadc.generative.schedule import TIMESTEP, alphas_cumprod, predict_x0
from cadc.weights import Checkpoint

from . import host
from .codec_nodes import CATEGORY, CODEC, LATENT
from .unet_patch import adapter_for, apply_adapter


def denoise_one(patched: Any, l_t: torch.Tensor, context: torch.Tensor, timestep: int) -> torch.Tensor:
    """ε at ``timestep`` from the patched UNet, turned into l_0 (UNet units, float32, CPU).

    ``patched`` must already be loaded (``comfy.model_management.load_models_gpu``).
    """
    base = patched.model
    dtype = base.manual_cast_dtype or base.get_dtype()
    device = patched.load_device
    t = torch.full((l_t.shape[0],), float(timestep), device=device)
    with torch.inference_mode():
        eps = base.diffusion_model(
            l_t.to(device=device, dtype=dtype), t, context=context.to(device=device, dtype=dtype)
        )
    return predict_x0(l_t[:, :4].cpu(), eps.float().cpu(), float(alphas_cumprod()[timestep]))


class OneStepDenoise:
    """CADC One-Step Denoise."""

    DESCRIPTION = (
        "Runs SD-Turbo once (t = 999) on the decoded latent l_T with the codec's conv_in and LoRA "
        "applied to a copy of MODEL, and returns the predicted clean latent for VAE Decode."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = (
        "Clean SD latent at the padded size; VAE Decode it, then crop with Crop to Original Size.",
    )
    FUNCTION = "denoise"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": (
                    "MODEL",
                    {"tooltip": "SD-Turbo from Load Checkpoint (the base the codec was trained on)."},
                ),
                "positive": (
                    "CONDITIONING",
                    {"tooltip": "CLIP Text Encode of the caption prompt (only the first entry is used)."},
                ),
                "cadc_latent": (LATENT, {"tooltip": "Output of Decode Latent."}),
                "codec": (CODEC, {"tooltip": "The codec; its checkpoint carries the conv_in/LoRA adapter."}),
            }
        }

    def denoise(
        self, model: Any, positive: list, cadc_latent: list[DecodedImage], codec: Checkpoint
    ) -> tuple[dict[str, torch.Tensor]]:
        import comfy.model_management

        patched = apply_adapter(model, adapter_for(model, codec))
        comfy.model_management.load_models_gpu([patched])
        context = positive[0][0]
        progress = host.progress_bar(len(cadc_latent))
        latents = []
        for decoded in cadc_latent:
            host.check_interrupted()
            timestep = decoded.header.hints.timestep
            l_0 = denoise_one(
                patched, decoded.latent.l_T, context, TIMESTEP if timestep is None else timestep
            )
            latents.append(patched.model.process_latent_out(l_0))
            progress.update(1)
        if len({tuple(x.shape) for x in latents}) > 1:
            raise ValueError("CADC: cannot batch latents of different sizes; decode one file at a time")
        return ({"samples": torch.cat(latents)},)
