"""CADC's generative decoder: one-step SD-Turbo denoising of l_T, BLIP captioning (BFATC), tiling.

Pure diffusers / transformers / peft; never imports ComfyUI. Main entry point::

    dec = GenerativeDecoder.from_sources(sd_turbo="tiny-random", blip="tiny-random", latent_channels=C)
    res = dec.decode(l_T, x_aux, out_hw=(H, W))   # res.image [B, 3, H, W] in 0..1

Building blocks for other front ends (the ComfyUI nodes): :class:`Captioner`, :func:`join_prompt`,
:func:`predict_x0`, :class:`AdapterWeights` (new conv_in + LoRA in diffusers UNet naming),
:class:`OneStepDenoiser`, :class:`SDTurboSource`, :func:`tiled`.
"""

from .adapter import ADAPTER_PREFIX, LORA_TARGETS, AdapterConfig, AdapterError, AdapterWeights, seeded_adapter
from .captioner import FIXED_PROMPT, Captioner, join_prompt
from .denoiser import OneStepDenoiser
from .errors import SourceError
from .pipeline import GenerativeDecoder, GenerativeResult, Progress
from .schedule import ALPHA_CUMPROD_999, TIMESTEP, VAE_SCALING_FACTOR, alphas_cumprod, predict_x0
from .sd_turbo import SDTurboSource
from .tiling import tiled

__all__ = [
    "ADAPTER_PREFIX",
    "ALPHA_CUMPROD_999",
    "FIXED_PROMPT",
    "LORA_TARGETS",
    "TIMESTEP",
    "VAE_SCALING_FACTOR",
    "AdapterConfig",
    "AdapterError",
    "AdapterWeights",
    "Captioner",
    "GenerativeDecoder",
    "GenerativeResult",
    "OneStepDenoiser",
    "Progress",
    "SDTurboSource",
    "SourceError",
    "alphas_cumprod",
    "join_prompt",
    "predict_x0",
    "seeded_adapter",
    "tiled",
]
