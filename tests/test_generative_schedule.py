"""The one-step x0 math against diffusers' own schedulers, on a tiny UNet's real ε."""

from __future__ import annotations

import math

import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler

from cadc.generative import ALPHA_CUMPROD_999, TIMESTEP, alphas_cumprod, predict_x0
from cadc.generative.sd_turbo import CONFIG_DIR
from cadc.testing.tiny_sd import tiny_text_encoder, tiny_tokenizer, tiny_unet


def _eps_and_latent() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    l_t4 = torch.randn(2, 4, 16, 24, generator=gen)
    ids = tiny_tokenizer()(["a cat", "the sky"], padding="max_length", max_length=77, return_tensors="pt")
    with torch.inference_mode():
        text = tiny_text_encoder()(ids.input_ids)[0]
        eps = tiny_unet()(l_t4, TIMESTEP, encoder_hidden_states=text).sample
    return l_t4, eps


def _scheduler_config() -> dict:
    return EulerDiscreteScheduler.load_config(CONFIG_DIR / "scheduler")


def test_schedule_constants_match_sd_turbo() -> None:
    ref = DDPMScheduler.from_config(_scheduler_config()).alphas_cumprod
    torch.testing.assert_close(alphas_cumprod().float(), ref, rtol=1e-6, atol=0)
    assert abs(ALPHA_CUMPROD_999 - 0.0046601) < 1e-6
    assert abs(math.sqrt((1 - ALPHA_CUMPROD_999) / ALPHA_CUMPROD_999) - 14.6146) < 1e-3


def test_predict_x0_equals_ddpm_one_step() -> None:
    l_t4, eps = _eps_and_latent()
    sched = DDPMScheduler.from_config(_scheduler_config())
    sched.set_timesteps(1)
    assert sched.timesteps.tolist() == [TIMESTEP]
    out = sched.step(eps, TIMESTEP, l_t4, generator=torch.Generator().manual_seed(1))
    ours = predict_x0(l_t4, eps)
    torch.testing.assert_close(ours, out.pred_original_sample, rtol=1e-5, atol=1e-5)
    # StableCodec takes prev_sample of the one-step scheduler: at t=999 it is the same x0.
    torch.testing.assert_close(ours, out.prev_sample, rtol=1e-5, atol=1e-5)


def test_predict_x0_equals_euler_pred_original_sample() -> None:
    l_t4, eps = _eps_and_latent()
    sched = EulerDiscreteScheduler.from_config(_scheduler_config())
    sched.set_timesteps(1)
    assert sched.timesteps.tolist() == [TIMESTEP]
    # Euler works in σ space: x_σ = x_t / √ᾱ.
    sample = l_t4 / math.sqrt(ALPHA_CUMPROD_999)
    out = sched.step(eps, sched.timesteps[0], sample)
    torch.testing.assert_close(predict_x0(l_t4, eps), out.pred_original_sample, rtol=1e-4, atol=1e-4)
