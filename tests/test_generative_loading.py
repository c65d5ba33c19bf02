"""Offline loading: single-file LDM checkpoints, diffusers folders, tokenizers, BLIP, and errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from cadc.generative import Captioner, GenerativeDecoder, SDTurboSource, SourceError
from cadc.generative.clip_tokenizer import open_clip_bpe_path, read_open_clip_bpe, vocab_from_merges
from cadc.testing.ldm_checkpoint import sd_to_ldm_state_dict, write_sd_checkpoint
from cadc.testing.tiny_sd import (
    _TINY_MERGES,
    tiny_blip,
    tiny_blip_processor,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
    write_tiny_tokenizer_files,
)


@pytest.fixture(scope="module")
def single_file(tmp_path_factory) -> Path:
    """Tiny UNet + VAE + text encoder in one LDM-layout file, with a tokenizer/ folder beside it."""
    root = tmp_path_factory.mktemp("ckpt")
    path = root / "sd_turbo.safetensors"
    write_sd_checkpoint(path, tiny_unet(), tiny_vae(), tiny_text_encoder())
    write_tiny_tokenizer_files(root / "tokenizer")
    return path


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_ldm_layout_has_the_original_key_names() -> None:
    keys = sd_to_ldm_state_dict(tiny_unet(), tiny_vae(), tiny_text_encoder()).keys()
    for k in (
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",
        "model.diffusion_model.output_blocks.3.2.conv.weight",
        "model.diffusion_model.out.2.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.post_quant_conv.weight",
        "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight",
        "cond_stage_model.model.positional_embedding",
        "cond_stage_model.model.text_projection",
    ):
        assert k in keys, k


def test_single_file_roundtrip_through_user_loader(single_file: Path) -> None:
    src = SDTurboSource(single_file)
    assert src.kind == "single_file"
    _same_state(src.load_unet(), tiny_unet())
    _same_state(src.load_vae(), tiny_vae())
    _same_state(src.load_text_encoder(), tiny_text_encoder())
    ids = "a photo of the cat"
    assert src.load_tokenizer()(ids).input_ids == tiny_tokenizer()(ids).input_ids


def test_single_file_decode_equals_tiny_random(single_file: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    l_t, x_aux = torch.randn(1, 16, 8, 8, generator=gen), torch.rand(1, 3, 64, 64, generator=gen)
    kw = {"blip": None, "latent_channels": 16, "adapter_config": {"rank": 4}}
    a = GenerativeDecoder.from_sources(single_file, **kw).decode(l_t, x_aux)
    b = GenerativeDecoder.from_sources("tiny-random", **kw).decode(l_t, x_aux)
    torch.testing.assert_close(a.image, b.image, atol=1e-5, rtol=0)


def test_diffusers_folder(tmp_path: Path) -> None:
    tiny_unet().save_pretrained(tmp_path / "unet")
    tiny_vae().save_pretrained(tmp_path / "vae")
    tiny_text_encoder().save_pretrained(tmp_path / "text_encoder")
    write_tiny_tokenizer_files(tmp_path / "tokenizer")
    src = SDTurboSource(tmp_path)
    assert src.kind == "diffusers"
    _same_state(src.load_unet(), tiny_unet())
    _same_state(src.load_vae(), tiny_vae())
    _same_state(src.load_text_encoder(), tiny_text_encoder())
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(SourceError, match=r"vae/diffusion_pytorch_model\.safetensors"):
        src.load_vae()


def test_comfyui_layout_finds_comfy_tokenizer(tmp_path: Path) -> None:
    ckpt = tmp_path / "ComfyUI" / "models" / "checkpoints" / "sd_turbo.safetensors"
    ckpt.parent.mkdir(parents=True)
    write_sd_checkpoint(ckpt, tiny_unet(), tiny_vae(), tiny_text_encoder())
    write_tiny_tokenizer_files(tmp_path / "ComfyUI" / "comfy" / "sd1_tokenizer")
    assert len(SDTurboSource(ckpt).load_tokenizer()) == len(tiny_tokenizer())


def test_open_clip_bpe_conversion(tmp_path: Path) -> None:
    bpe = tmp_path / "bpe.txt.gz"
    bpe.write_bytes(gzip.compress(("header\n" + "\n".join(" ".join(m) for m in _TINY_MERGES)).encode()))
    tok = read_open_clip_bpe(bpe)
    assert tok.get_vocab() == vocab_from_merges(_TINY_MERGES)
    assert tok("the cat").input_ids == tiny_tokenizer()("the cat").input_ids


@pytest.mark.skipif(open_clip_bpe_path() is None, reason="open_clip_torch not installed")
def test_open_clip_vocabulary_gives_clip_ids() -> None:
    tok = read_open_clip_bpe(open_clip_bpe_path())
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.pad_token_id == 0 and len(tok) == 49408


def test_missing_sources_say_what_to_put_where(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(SourceError, match=r"models/checkpoints/sd_turbo\.safetensors.*--sd-turbo"):
        GenerativeDecoder.from_sources(tmp_path / "nope.safetensors")
    with pytest.raises(SourceError, match=r"blip-image-captioning-base.*--blip"):
        GenerativeDecoder.from_sources("tiny-random", blip=tmp_path / "no-blip")
    lone = tmp_path / "lone" / "sd_turbo.safetensors"
    lone.parent.mkdir()
    write_sd_checkpoint(lone, tiny_unet(), tiny_vae(), tiny_text_encoder())
    monkeypatch.setattr("cadc.generative.clip_tokenizer.open_clip_bpe_path", lambda: None)
    with pytest.raises(SourceError, match=r"vocab\.json and merges\.txt.*open_clip_torch"):
        SDTurboSource(lone).load_tokenizer()
    unet_only = tmp_path / "unet_only.safetensors"
    from safetensors.torch import save_file

    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 4, 3, 3)}, unet_only)
    with pytest.raises(SourceError, match="no VAE weights"):
        SDTurboSource(unet_only).load_vae()
    with pytest.raises(SourceError, match="do not fit"):
        SDTurboSource(unet_only).load_unet()


def test_blip_from_local_folder(tmp_path: Path) -> None:
    tiny_blip().save_pretrained(tmp_path)
    tiny_blip_processor().save_pretrained(tmp_path)
    images = torch.stack([torch.full((3, 48, 64), v) for v in (0.1, 0.9)])
    caps = Captioner.from_source(tmp_path)(images)
    assert caps == Captioner.from_source("tiny-random")(images)
    assert len(caps) == 2 and all(caps) and caps[0] != caps[1]
    assert all(len(c.split()) <= 30 for c in caps)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(SourceError, match=r"model\.safetensors"):
        Captioner.from_source(tmp_path)
