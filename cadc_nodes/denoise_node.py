"""One-Step Denoise: CADC's generative step on ComfyUI's own SD-Turbo MODEL.

The stock CheckpointLoaderSimple loads SD-Turbo; this node clones that MODEL, patches in the CADC
adapter of the codec that decoded the files (:mod:`cadc_nodes.unet_patch`), loads it through
ComfyUI's model management with the memory the UNet step needs, and calls the UNet once per file
at the timestep :func:`cadc.generative.decode_plan.plan_decode` decides (t = 999; other
timesteps are refused), over latent tiles where the plan says so. ComfyUI's sampler path is not
used: its ``apply_model`` treats the input as a 4-channel noisy latent and cannot take l_T's extra
channels. x0 comes from :func:`cadc.generative.schedule.predict_x0`, the formula the core decoder
uses, and is returned in ComfyUI's LATENT units (VAE units) for the stock VAE Decode.

The node takes its inputs as lists (``INPUT_IS_LIST``): CADC Caption gives one prompt per file, so
CLIP Text Encode gives one conditioning per file, and file i is denoised with conditioning i (a
single conditioning applies to every file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from . import host
from .codec_nodes import CATEGORY, LATENT, DecodedFiles

if TYPE_CHECKING:
    from cadc.generative.decode_plan import Tiling


def denoise_one(
    patched: Any, l_t: torch.Tensor, context: torch.Tensor, timestep: int, tiling: Tiling | None = None
) -> torch.Tensor:
    """l_0 [B, 4, h, w] (UNet units, float32, CPU) from l_T [B, C, h, w] and text states [B, 77, D].

    ε at ``timestep`` comes from the patched UNet (over tiles when ``tiling`` applies to the latent),
    then :func:`predict_x0`. ``patched`` must already be loaded (``load_models_gpu``).
    """
    from cadc.generative.schedule import alphas_cumprod, predict_x0
    from cadc.generative.tiling import tiled

    base = patched.model
    dtype = base.manual_cast_dtype or base.get_dtype()
    device = patched.load_device
    text = context.to(device=device, dtype=dtype)

    def eps(x: torch.Tensor) -> torch.Tensor:
        t = torch.full((x.shape[0],), float(timestep), device=device)
        return base.diffusion_model(x.to(device=device, dtype=dtype), t, context=text).float()

    with torch.inference_mode():
        if tiling is not None and tiling.applies(*l_t.shape[-2:]):
            e = tiled(eps, l_t, tiling.tile, tiling.overlap)
        else:
            e = eps(l_t)
    return predict_x0(l_t[:, :4].cpu(), e.cpu(), float(alphas_cumprod()[timestep]))


def unet_memory(model: Any, latent_hw: list[tuple[int, int]], tiling: Tiling) -> float:
    """Bytes of activation memory ComfyUI's own estimate gives for the largest UNet call.

    One call per file (batch 1, one conditioning, no CFG); a tiled latent is called tile by tile.
    """
    largest = max(
        (min(h, tiling.tile), min(w, tiling.tile)) if tiling.applies(h, w) else (h, w) for h, w in latent_hw
    )
    return float(model.model.memory_required([1, 4, *largest]))


class OneStepDenoise:
    """CADC One-Step Denoise."""

    DESCRIPTION = (
        "Runs SD-Turbo once on each decoded latent l_T (at the timestep the file names: 999) with the "
        "codec's conv_in and LoRA applied to a copy of MODEL, and returns the predicted clean latents "
        "for VAE Decode. Conditioning i goes with file i (CADC Caption gives one prompt per file)."
    )
    CATEGORY = CATEGORY
    INPUT_IS_LIST = True
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = (
        "Clean SD latents at the padded size; VAE Decode them, then crop with Crop to Original Size.",
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
                    {"tooltip": "CLIP Text Encode of CADC Caption's prompts: one per file, or one for all."},
                ),
                "cadc_latent": (LATENT, {"tooltip": "Output of Decode Latent (it carries the codec's adapter)."}),
            }
        }

    def denoise(
        self, model: list[Any], positive: list[list], cadc_latent: list[DecodedFiles]
    ) -> tuple[dict[str, torch.Tensor]]:
        import comfy.model_management

        from cadc.generative.decode_plan import plan_decode

        from .unet_patch import adapter_for, apply_adapter

        if len(model) != 1:
            raise ValueError(f"CADC: One-Step Denoise takes one MODEL, got a list of {len(model)}")
        files = [(decoded, latent.checkpoint) for latent in cadc_latent for decoded in latent.images]
        if len(positive) not in (1, len(files)):
            raise ValueError(
                f"CADC: {len(positive)} conditionings for {len(files)} files; connect CADC Caption's prompt "
                "(one per file) through CLIP Text Encode, or a single prompt for all"
            )
        plans = [
            plan_decode(decoded.header.hints, checkpoint.codec.config, captioner=False, opt_out=True)
            for decoded, checkpoint in files
        ]
        hw = [tuple(decoded.latent.l_T.shape[-2:]) for decoded, _ in files]
        memory = unet_memory(model[0], hw, plans[0].tiling)
        progress = host.progress_bar(len(files))
        latents = []
        patched_for: dict[int, Any] = {}
        for i, ((decoded, checkpoint), plan) in enumerate(zip(files, plans, strict=True)):
            host.check_interrupted()
            key = id(checkpoint)
            if key not in patched_for:
                patched_for[key] = apply_adapter(model[0], adapter_for(model[0], checkpoint))
            patched = patched_for[key]
            comfy.model_management.load_models_gpu([patched], memory_required=memory, minimum_memory_required=memory)
            context = positive[i if len(positive) > 1 else 0][0][0]
            l_0 = denoise_one(patched, decoded.latent.l_T, context, plan.timestep, plan.tiling)
            latents.append(patched.model.process_latent_out(l_0))
            progress.update(1)
        if len({tuple(x.shape) for x in latents}) > 1:
            raise ValueError("CADC: cannot batch latents of different sizes; decode one file at a time")
        return ({"samples": torch.cat(latents)},)
