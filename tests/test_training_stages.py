"""Stage I → Stage II with the generative branch, every frozen part a tiny-random stand-in."""

from __future__ import annotations

import math

import pytest
from safetensors import safe_open

from cadc import cli
from cadc.config import BLIP_CAPTIONER_ID
from cadc.container import read_cadc
from cadc.training.backbones import LPIPS, BackboneError, CLIPEmbedding, Discriminator
from cadc.training.config import TrainConfig
from cadc.training.trainer import MODEL_FILE, train
from cadc.weights import load_checkpoint
from tests.test_training import FAST, write_photos

STAND_INS = dict(sd_turbo="tiny-random", lpips="tiny-random", clip="tiny-random")


def test_stage1_then_stage2_smoke(tmp_path):
    photos = write_photos(tmp_path / "photos")
    stage1 = train(TrainConfig(stage="stage1", steps=2, **STAND_INS, **FAST), [photos], tmp_path / "s1")
    assert {"bpp", "mse", "lpips", "clip", "aux"} <= set(stage1["final_train"])  # aux: g_aux on a detached l_T
    # Stage I's UNet step never saw a caption: its files must not ask for a captioner
    assert load_checkpoint(tmp_path / "s1" / MODEL_FILE).codec.config.captioner_id is None
    config = TrainConfig(
        stage="stage2",
        steps=2,
        init=str(tmp_path / "s1" / MODEL_FILE),
        blip="tiny-random",
        discriminator="tiny-random",
        grad_accum=2,
        **STAND_INS,
        **FAST,
    )
    stage2 = train(config, [photos], tmp_path / "s2")
    terms = stage2["final_train"]
    assert {"bpp", "mse", "lpips", "clip", "aux", "adv", "disc"} <= set(terms)
    assert all(math.isfinite(v) for v in terms.values())
    assert {"bpp", "psnr", "psnr_aux", "mse", "lpips_vgg", "clip"} <= set(stage2["held_out"]["mean"])
    with safe_open(str(tmp_path / "s2" / MODEL_FILE), framework="pt") as handle:
        keys = list(handle.keys())
        assert "cadc.adapter" in (handle.metadata() or {})
    assert any(k.startswith("adapter.unet.conv_in") for k in keys)
    assert any(".lora_B." in k for k in keys)
    argv = [
        "compress",
        str(photos / "photo0.png"),
        "-o",
        str(tmp_path / "p.cadc"),
        "--model",
        str(tmp_path / "s2" / MODEL_FILE),
    ]
    assert cli.main(argv) == 0
    # Stage II with captions (BFATC) starting from the Stage I model: now its files name BLIP
    assert read_cadc(tmp_path / "p.cadc").header.hints.captioner_id == BLIP_CAPTIONER_ID


@pytest.mark.parametrize("backbone", [LPIPS, CLIPEmbedding, Discriminator])
def test_missing_backbone_file_is_a_clear_error(backbone, tmp_path):
    with pytest.raises(BackboneError, match=r"not found at .*nothing is downloaded"):
        backbone.from_source(str(tmp_path / "missing"))
