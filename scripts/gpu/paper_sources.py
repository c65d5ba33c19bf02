"""Random-weight stand-ins of every frozen source of Stage I/II at the paper's sizes, written as a
user holds the real ones (for cost and shape checks only: their losses mean nothing).

Used by ``scripts/gpu/stage1_smoke.py`` and ``tests/test_training_paper_size.py``. Nothing is
downloaded; every model is built from a config with seeded random weights.

==========================  ==========================================================  =========
file / folder               what                                                        field
==========================  ==========================================================  =========
``sd/sd_turbo.safetensors`` SD-Turbo single file (UNet 866 M, VAE, OpenCLIP-H text      sd_turbo
                            encoder) in float16 as SD-Turbo ships; ``sd/tokenizer/``
                            holds a tiny BPE vocabulary whose ids fit the embedding
``lpips_vgg16.safetensors`` LPIPS with a VGG16 feature stack                            lpips
``clip/``                   CLIPVisionModelWithProjection, ViT-L/14 at 224             clip
``blip/``                   BLIP captioner, blip-image-captioning-base sizes            blip
``dino/``                   DINOv2-small with 4 registers                               discriminator
``photos/``                 smooth synthetic photographs                                --data
==========================  ==========================================================  =========
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_sd_turbo(folder: Path, dtype: torch.dtype = torch.float16) -> Path:
    from cadc.testing.ldm_checkpoint import write_sd_checkpoint
    from cadc.testing.tiny_sd import random_sd_turbo, write_tiny_tokenizer_files

    folder.mkdir(parents=True, exist_ok=True)
    unet, vae, text_encoder = random_sd_turbo()
    path = folder / "sd_turbo.safetensors"
    write_sd_checkpoint(path, unet, vae, text_encoder, embed_configs=False, dtype=dtype)
    write_tiny_tokenizer_files(folder / "tokenizer")
    return path


def write_lpips_vgg16(path: Path) -> Path:
    from safetensors.torch import save_file

    from cadc.training.backbones import VGG16_LAYERS, _vgg_features

    torch.manual_seed(1)
    tensors = {f"features.{k}": v for k, v in _vgg_features(VGG16_LAYERS).state_dict().items()}
    tensors |= {f"lin{i}.weight": torch.rand(1, w, 1, 1) for i, w in enumerate((64, 128, 256, 512, 512))}
    save_file(tensors, str(path))
    return path


def write_clip_vit_l14(folder: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(2)
    config = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=224, patch_size=14, projection_dim=768,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    return folder


def write_dinov2_small(folder: Path) -> Path:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(3)
    config = Dinov2WithRegistersConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518,
        num_register_tokens=4,
    )  # fmt: skip
    Dinov2WithRegistersModel(config).save_pretrained(folder)
    return folder


def write_blip_base(folder: Path) -> Path:
    """BLIP's default config has blip-image-captioning-base's sizes (ViT-B/16 at 384, BERT-base
    decoder); the processor's vocabulary is tiny (unknown ids decode as [UNK])."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    from cadc.testing.tiny_sd import tiny_blip_processor

    torch.manual_seed(4)
    BlipForConditionalGeneration(BlipConfig()).save_pretrained(folder)
    tiny_blip_processor().save_pretrained(folder)
    return folder


def write_photos(folder: Path, count: int, height: int, width: int) -> Path:
    """Smooth photo-like RGB images (waves, an edge, a little noise) as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for index in range(count):
        channels = []
        for c in range(3):
            fx, fy, phase = rng.uniform(0.5, 3.0, 3)
            wave = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * xx / width + fy * yy / height) + phase)
            edge = 0.15 * (xx > width * (0.3 + 0.1 * c))
            channels.append(np.clip(wave + edge + rng.normal(0, 0.03, (height, width)), 0, 1))
        array = (np.stack(channels, -1) * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"photo{index}.png")
    return folder


def write_all(root: Path, stage2: bool, photo_size: tuple[int, int] = (576, 640)) -> dict[str, str]:
    """Write the sources Stage I (and, with ``stage2``, Stage II) needs under ``root``; returns the
    TrainConfig fields pointing at them plus ``data`` (the photo folder)."""
    fields = {
        "sd_turbo": str(write_sd_turbo(root / "sd")),
        "lpips": str(write_lpips_vgg16(root / "lpips_vgg16.safetensors")),
        "clip": str(write_clip_vit_l14(root / "clip")),
        "data": str(write_photos(root / "photos", 2, *photo_size)),
    }
    if stage2:
        fields["blip"] = str(write_blip_base(root / "blip"))
        fields["discriminator"] = str(write_dinov2_small(root / "dino"))
    return fields
