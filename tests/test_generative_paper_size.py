"""Paper-size SD-Turbo shapes with random weights (slow: ~1.3 B parameters on the CPU)."""

from __future__ import annotations

import pytest
import torch

from cadc.generative import GenerativeDecoder, SDTurboSource
from cadc.testing.ldm_checkpoint import write_sd_checkpoint
from cadc.testing.tiny_sd import random_sd_turbo, write_tiny_tokenizer_files

pytestmark = pytest.mark.slow


def test_paper_size_single_file_decode_at_256(tmp_path) -> None:
    """A random SD-Turbo-shaped single file (bundled configs, no embedded ones) decodes 256×256."""
    unet, vae, text_encoder = random_sd_turbo()
    assert unet.config.cross_attention_dim == 1024 and text_encoder.config.num_hidden_layers == 23
    ckpt = tmp_path / "sd_turbo.safetensors"
    write_sd_checkpoint(ckpt, unet, vae, text_encoder, embed_configs=False, dtype=torch.float16)
    del unet, vae, text_encoder
    # The tiny tokenizer's ids fit the 49,408-token embedding; the real vocabulary is not shipped.
    write_tiny_tokenizer_files(tmp_path / "tokenizer")
    assert SDTurboSource(ckpt).kind == "single_file"

    dec = GenerativeDecoder.from_sources(ckpt, blip=None, latent_channels=320)
    gen = torch.Generator().manual_seed(0)
    l_t = torch.randn(1, 320, 32, 32, generator=gen)
    res = dec.decode(l_t, None, out_hw=(256, 256))
    assert res.image.shape == (1, 3, 256, 256)
    assert torch.isfinite(res.image).all()
    assert dec.encode_prompts(res.prompts).shape == (1, 77, 1024)
    lora = [n for n, m in dec.denoiser.unet.named_modules() if hasattr(m, "lora_A")]
    assert dec.denoiser.unet.conv_in.weight.shape == (320, 320, 3, 3)
    assert len(lora) == 257  # every StableCodec LoRA target in the SD 2.1 UNet
    print("paper-size seconds", res.seconds, "peak MiB", round(res.peak_memory_mib))
