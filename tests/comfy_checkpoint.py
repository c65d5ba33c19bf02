"""A random SD-2-layout single-file checkpoint that ComfyUI's CheckpointLoaderSimple accepts.

``cadc.testing.tiny_sd`` models are too small for ComfyUI: it recognises SD 2.x only by a
320-channel UNet with 1024-d cross-attention, and builds the VAE (SD's 128/256/512/512) and the
OpenCLIP-H text tower (24 × 1024) at their fixed sizes, refusing tensors of other shapes. This file
keeps those fixed sizes and shrinks what ComfyUI reads from the weights: a one-level UNet (320
channels, one res block, one transformer block) with 1024-d cross-attention. Weights are seeded
random float16 (about 0.9 GB), written once per test run into ``$CADC_TEST_CACHE`` (tests/hygiene.py
points it at the run's temporary folder; set it to a folder of your own to keep the file).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from cadc.testing.ldm_checkpoint import write_sd_checkpoint

VERSION = "1"
COMFY_UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320,),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D",),
    "up_block_types": ("CrossAttnUpBlock2D",),
    "cross_attention_dim": 1024,
    "attention_head_dim": (5,),
    "use_linear_projection": True,
}
SD_VAE_CONFIG = {
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
}
OPEN_CLIP_H_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,  # the writer adds the 24th block, as in real SD 2.x files
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1024,
}


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded small random weights for every tensor (norm weights near 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.02
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)
    return model.eval()


def comfy_unet() -> UNet2DConditionModel:
    """The checkpoint's UNet as a diffusers model (same seeded weights, float32)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _randomized(UNet2DConditionModel(**COMFY_UNET_CONFIG), 1)


def comfy_sd2_checkpoint(cache_dir: Path | None = None) -> Path:
    """Path of the cached checkpoint, written on first use (about 20 s on 2 cores)."""
    cache = cache_dir or Path(os.environ.get("CADC_TEST_CACHE", Path(tempfile.gettempdir()) / "cadc-tests"))
    path = cache / f"comfy-sd2-random-v{VERSION}.safetensors"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    unet = comfy_unet()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = _randomized(AutoencoderKL(**SD_VAE_CONFIG), 2)
        text = _randomized(CLIPTextModel(CLIPTextConfig(**OPEN_CLIP_H_CONFIG)), 3)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_sd_checkpoint(temporary, unet, vae, text, embed_configs=False, dtype=torch.float16)
    os.replace(temporary, path)
    return path
