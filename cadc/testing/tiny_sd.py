"""Seeded tiny random SD-Turbo-shaped models and a tiny BLIP, built from config objects.

Same classes and topology family as the real models (SD 2.x UNet with linear-projection
cross-attention, KL VAE with 4 latent channels and 8× downsampling, CLIP text encoder, CLIP BPE
tokenizer, BLIP captioner), a few hundred thousand parameters each. Every call returns a fresh
model with the same weights (seeded), so ``tiny-random`` is reproducible across runs and machines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

from cadc.generative.clip_tokenizer import make_clip_tokenizer, vocab_from_merges

SEED = 20260
TEXT_DIM = 32
"""Hidden size of the tiny text encoder = the tiny UNet's cross_attention_dim."""

TINY_UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": TEXT_DIM,
    "attention_head_dim": (2, 4, 4),
    "use_linear_projection": True,
    "norm_num_groups": 8,
}
TINY_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (8, 16, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
_TINY_MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("o", "f</w>"),
    ("i", "n"),
    ("a", "n"),
    ("a", "t</w>"),
    ("c", "at</w>"),
]
TINY_BLIP_WORDS = ["a", "photo", "of", "cat", "dog", "red", "house", "tree", "with", "sky", "on", "the"]


def _seeded(build, seed: int):
    """Build a module under a fixed RNG state, then restore the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval().requires_grad_(False)


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Give every zero-initialised parameter (norm biases, zero-init output convs) small noise too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def tiny_unet(seed: int = SEED) -> UNet2DConditionModel:
    """Tiny SD-2-style UNet: 3 levels, linear-projection cross-attention to 32-d text states."""
    return _randomize(_seeded(lambda: UNet2DConditionModel(**TINY_UNET_CONFIG), seed), seed)


def tiny_vae(seed: int = SEED + 1) -> AutoencoderKL:
    """Tiny KL VAE: 4 latent channels, 8× downsampling, scaling factor 0.18215."""
    return _randomize(_seeded(lambda: AutoencoderKL(**TINY_VAE_CONFIG), seed), seed)


def tiny_tokenizer() -> CLIPTokenizer:
    """CLIP-style BPE tokenizer: all 512 byte tokens, a few merges, pad "!" to 77 tokens."""
    return make_clip_tokenizer(vocab_from_merges(_TINY_MERGES), _TINY_MERGES)


def tiny_text_encoder_config() -> CLIPTextConfig:
    """2-layer, 32-d CLIP text encoder over the tiny tokenizer's vocabulary."""
    tok = tiny_tokenizer()
    return CLIPTextConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        projection_dim=TEXT_DIM,
    )


def tiny_text_encoder(seed: int = SEED + 2) -> CLIPTextModel:
    """Tiny CLIPTextModel (hidden states [B, 77, 32])."""
    config = tiny_text_encoder_config()
    return _seeded(lambda: CLIPTextModel(config), seed)


def tiny_blip_processor() -> BlipProcessor:
    """BLIP processor at 384×384 (CLIP mean/std) with a tiny WordPiece vocabulary."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {t: i for i, t in enumerate(specials + TINY_BLIP_WORDS)}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    image_processor = BlipImageProcessor(
        size={"height": 384, "width": 384},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_blip_config() -> BlipConfig:
    """BLIP with 2-layer 32-d vision and text towers; 384×384 input in 32-px patches.

    The wide init (0.5) makes the random captions depend visibly on the image.
    """
    n_vocab = 6 + len(TINY_BLIP_WORDS)
    return BlipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 384,
            "patch_size": 32,
            "initializer_range": 0.5,
        },
        text_config={
            "vocab_size": n_vocab,
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "pad_token_id": 0,
            "sep_token_id": 3,
            "bos_token_id": 5,
            "eos_token_id": 3,
            "initializer_range": 0.5,
        },
        projection_dim=32,
    )


def tiny_blip(seed: int = SEED + 3) -> BlipForConditionalGeneration:
    """Tiny random BlipForConditionalGeneration matching :func:`tiny_blip_processor`."""
    config = tiny_blip_config()
    model = _seeded(lambda: BlipForConditionalGeneration(config), seed)
    with torch.no_grad():  # never emit special tokens other than [SEP] (end of caption)
        model.text_decoder.cls.predictions.bias[[0, 1, 2, 4, 5]] = -1e4
    return model


def random_sd_turbo(seed: int = SEED) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """Paper-size UNet, VAE and text encoder from the bundled SD-Turbo configs, random weights.

    For shape and cost checks (≈1.3 B parameters, ~5 GB in float32); slow to build on a CPU.
    """
    from cadc.generative.sd_turbo import CONFIG_DIR

    unet_cfg = UNet2DConditionModel.load_config(CONFIG_DIR / "unet")
    vae_cfg = AutoencoderKL.load_config(CONFIG_DIR / "vae")
    te_cfg = CLIPTextConfig.from_json_file(CONFIG_DIR / "text_encoder" / "config.json")
    unet = _seeded(lambda: UNet2DConditionModel.from_config(unet_cfg), seed)
    vae = _seeded(lambda: AutoencoderKL.from_config(vae_cfg), seed + 1)
    text_encoder = _seeded(lambda: CLIPTextModel(te_cfg), seed + 2)
    return unet, vae, text_encoder


def write_tiny_tokenizer_files(folder: str | os.PathLike) -> Path:
    """Write the tiny tokenizer as ``vocab.json`` + ``merges.txt`` (the files SD loaders read)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    vocab = vocab_from_merges(_TINY_MERGES)
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = "\n".join(" ".join(m) for m in _TINY_MERGES)
    (out / "merges.txt").write_text(f"#version: 0.2\n{merges}\n", encoding="utf-8")
    return out
