"""SD-Turbo's noise schedule and the one-step x0 prediction.

SD-Turbo (like SD 2.1) was trained with 1000 discrete steps, "scaled linear" betas from 0.00085 to
0.012 and ε-prediction. CADC denoises in one step at t = 999:

    l_0 = (l_T[:, :4] − √(1 − ᾱ_999) · ε) / √ᾱ_999

which is exactly what diffusers' schedulers return as ``pred_original_sample`` for that step.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012
TIMESTEP = 999
"""The single denoising step CADC uses."""
VAE_SCALING_FACTOR = 0.18215
"""SD 2.x VAE latent scale: UNet units = VAE units × 0.18215."""


def alphas_cumprod(num_steps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """ᾱ_t for t = 0..num_steps-1, float64 [num_steps] (scaled linear: β = linspace(√β0, √β1)²)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


ALPHA_CUMPROD_999 = float(alphas_cumprod()[TIMESTEP])
"""ᾱ_999 ≈ 0.004660 (σ_999 = √((1−ᾱ)/ᾱ) ≈ 14.6146)."""


def predict_x0(l_t4: torch.Tensor, eps: torch.Tensor, alphas_cumprod_999: float = ALPHA_CUMPROD_999) -> torch.Tensor:
    """One-step x0 from an ε prediction.

    Args:
        l_t4: noisy latent [B, 4, h, w] in UNet units (VAE latent × 0.18215).
        eps: the UNet's ε prediction [B, 4, h, w].
        alphas_cumprod_999: ᾱ at the step taken (t = 999 by default).

    Returns:
        l_0 [B, 4, h, w] float32 in UNet units; divide by 0.18215 before the VAE decoder.
    """
    a = torch.tensor(alphas_cumprod_999, dtype=torch.float64)
    sqrt_a = float(a.sqrt())
    sqrt_1ma = float((1.0 - a).sqrt())
    return (l_t4.float() - sqrt_1ma * eps.float()) / sqrt_a
