"""Gradient checkpointing (issue 13, item 1): a switch that changes memory, not numbers or names."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import cadc.layers
from cadc.model import CADCCodec
from cadc.training.config import TrainConfig, load_config
from cadc.training.objective import Objective
from cadc.transforms import set_gradient_checkpointing
from cadc.weights import default_model_path, load_codec
from tests.conftest import make_photo


def _loss_and_grads(codec: CADCCodec, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    codec.zero_grad(set_to_none=True)
    out = codec(x)
    loss = out["l_T"].pow(2).mean() + out["x_aux"].pow(2).mean() + out["y_hat"].abs().mean()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in codec.named_parameters() if p.grad is not None}


def test_codec_transforms_same_outputs_and_gradients(monkeypatch):
    codec = load_codec(default_model_path()).train()
    x = make_photo(128, 192, seed=3)
    plain_loss, plain = _loss_and_grads(codec, x)
    calls = []
    original = cadc.layers.checkpoint
    monkeypatch.setattr(cadc.layers, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert sorted(set_gradient_checkpointing(codec, True)) == ["g_a", "g_aux", "g_s"]
    ckpt_loss, ckpt = _loss_and_grads(codec, x)
    assert len(calls) == 6 + 3 + 1  # g_a's six stages, g_s's three, g_aux once
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain.keys() == ckpt.keys() and len(plain) > 50
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-6, atol=1e-9, msg=name)
    with torch.no_grad():  # inference never checkpoints
        codec(x)
    assert len(calls) == 10


def test_shipped_checkpoint_names_and_outputs_unchanged():
    """The switch adds no parameter or buffer: the shipped file loads strictly and codes the
    same bytes with the switch on or off."""
    codec = load_codec(default_model_path())
    with safe_open(str(default_model_path()), framework="pt") as handle:
        stored = {k[len("codec.") :] for k in handle.keys() if k.startswith("codec.")}
    set_gradient_checkpointing(codec, True)
    assert set(codec.state_dict()) == stored
    x = make_photo(128, 128, seed=1)
    on = codec.compress(x)[0].payload
    set_gradient_checkpointing(codec, False)
    assert codec.compress(x)[0].payload == on


@pytest.mark.parametrize("stage", ["codec", "stage1", "stage2"])
def test_stage_defaults(stage):
    config = load_config(None, {"stage": stage, "sd_turbo": "x", "blip": "x"})
    assert config.gradient_checkpointing == (stage != "codec")


def test_unet_and_vae_checkpoint_with_the_same_result(monkeypatch):
    """Stage I objective on tiny SD: the switch engages diffusers' checkpointing in the UNet and
    the VAE decoder and leaves the loss and the adapter's gradients unchanged."""
    from cadc.generative.adapter import AdapterConfig
    from cadc.generative.sd_turbo import SDTurboSource
    from cadc.training.generative_branch import GenerativeBranch

    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = make_photo(64, 64, seed=2)
    results = []
    for enabled in (False, True):
        config = TrainConfig(stage="stage1", sd_turbo="tiny-random", gradient_checkpointing=enabled)
        torch.manual_seed(0)
        codec = CADCCodec(config.codec_config())
        set_gradient_checkpointing(codec, enabled)
        branch = GenerativeBranch(
            SDTurboSource("tiny-random"), None, AdapterConfig(latent_channels=codec.config.latent_channels),
            gradient_checkpointing=enabled,
        )  # fmt: skip
        calls.clear()
        total, _, _ = Objective(codec, config, branch)(x)
        total.backward()
        results.append((total.detach(), [p.grad.clone() for p in branch.trainable_parameters()], len(calls)))
    (plain, plain_grads, plain_calls), (ckpt, ckpt_grads, ckpt_calls) = results
    assert plain_calls == 0 and ckpt_calls > 6
    torch.testing.assert_close(ckpt, plain, rtol=1e-6, atol=0)
    for a, b in zip(plain_grads, ckpt_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
