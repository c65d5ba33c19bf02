"""Dtypes in Stage I/II (issue 13, item 1): float16 SD-Turbo files, bf16 frozen networks,
float32 trainable parameters and optimizer states, exact adapter copies."""

from __future__ import annotations

import math

import pytest
import torch

from cadc.testing.ldm_checkpoint import write_sd_checkpoint
from cadc.testing.tiny_sd import tiny_text_encoder, tiny_unet, tiny_vae, write_tiny_tokenizer_files
from cadc.training import distributed
from cadc.training.config import TrainConfig
from cadc.training.trainer import MODEL_FILE, TrainingRun, train
from cadc.weights import load_checkpoint
from tests.test_training import FAST, write_photos

STAND_INS = dict(lpips="tiny-random", clip="tiny-random")
CPU = distributed.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def fp16_sd_turbo(tmp_path_factory) -> str:
    """A tiny SD-Turbo single file stored in float16, as SD-Turbo ships."""
    folder = tmp_path_factory.mktemp("sd16")
    path = folder / "sd_turbo.safetensors"
    write_sd_checkpoint(path, tiny_unet(), tiny_vae(), tiny_text_encoder(), dtype=torch.float16)
    write_tiny_tokenizer_files(folder / "tokenizer")
    return str(folder / "sd_turbo.safetensors")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


def _dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def _optimizer_dtypes(run: TrainingRun) -> set[torch.dtype]:
    return {
        value.dtype
        for optimizer in run.optimizers.values()
        for state in optimizer.state.values()
        for key, value in state.items()
        if key != "step"
    }


def test_float16_files_train_on_the_cpu_in_float32(fp16_sd_turbo, photos, tmp_path):
    """Before: 'mat1 and mat2 must have the same dtype, but got Float and Half' in the UNet."""
    config = TrainConfig(stage="stage1", steps=1, sd_turbo=fp16_sd_turbo, **STAND_INS, **FAST)
    run = TrainingRun(config, [photos], tmp_path / "run", CPU, "")
    assert run.amp_dtype is None and run.frozen_dtype == torch.float32
    assert _dtypes(run.branch.denoiser.unet) == _dtypes(run.branch.vae) == {torch.float32}
    summary = run.run(resume=False)
    assert all(math.isfinite(v) for v in summary["final_train"].values())
    assert _optimizer_dtypes(run) == {torch.float32}
    assert run.branch.text_encoder is None  # fixed prompt only: encoded once, encoder released


def test_bf16_autocast_stores_frozen_networks_in_bf16_and_trains_in_float32(fp16_sd_turbo, photos, tmp_path):
    config = TrainConfig(
        stage="stage2", steps=1, amp="bf16", sd_turbo=fp16_sd_turbo, blip="tiny-random",
        discriminator="tiny-random", **STAND_INS, **FAST,
    )  # fmt: skip
    run = TrainingRun(config, [photos], tmp_path / "run", CPU, "")
    trainable = {id(p) for p in run.branch.trainable_parameters()}
    unet = run.branch.denoiser.unet
    assert {p.dtype for p in unet.parameters() if id(p) not in trainable} == {torch.bfloat16}
    assert {p.dtype for p in run.branch.trainable_parameters()} == {torch.float32}
    assert _dtypes(run.branch.vae) == _dtypes(run.objective.lpips) == _dtypes(run.objective.clip) == {torch.bfloat16}
    assert _dtypes(run.branch.text_encoder) == {torch.bfloat16}  # kept: captions change per image
    assert _dtypes(run.discriminator.backbone) == {torch.bfloat16}
    assert _dtypes(run.discriminator.heads) == _dtypes(run.codec) == {torch.float32}
    summary = run.run(resume=False)
    assert {"mse", "lpips", "clip", "aux", "adv", "disc"} <= set(summary["final_train"])
    assert all(math.isfinite(v) for v in summary["final_train"].values())
    assert _optimizer_dtypes(run) == {torch.float32}


def test_low_precision_frozen_weights_need_autocast():
    config = TrainConfig(stage="stage1", sd_turbo="tiny-random", frozen_dtype="bfloat16", amp="off")
    with pytest.raises(ValueError, match="needs autocast"):
        TrainingRun(config, [], "unused", CPU, "")  # type: ignore[arg-type]


def test_adapter_is_copied_exactly_into_a_bf16_unet(photos, tmp_path):
    """Stage II starts from Stage I's adapter bit for bit, even when the UNet is stored in bf16."""
    stage1 = TrainConfig(stage="stage1", steps=1, sd_turbo="tiny-random", **STAND_INS, **FAST)
    train(stage1, [photos], tmp_path / "s1")
    init = load_checkpoint(tmp_path / "s1" / MODEL_FILE)
    stage2 = stage1.replace(stage="stage2", amp="bf16", ablation="ugaq+adgic", init=str(tmp_path / "s1" / MODEL_FILE))
    run = TrainingRun(stage2, [photos], tmp_path / "s2", CPU, "")
    params = run.branch.named_trainable_parameters()
    lora_b = [k for k in init.adapter_state if k.endswith("lora_B.weight")]
    assert lora_b
    for key, value in init.adapter_state.items():
        assert torch.equal(params[key[len("adapter.") :]].detach(), value), key
