"""Loss terms that need no pretrained network: rate, MSE, PSNR, the adversarial hinge losses.

Units: images are in 0..1; the rate is in bits per pixel (bpp) of the input image; MSE is the mean
over pixels and channels; PSNR is in dB with peak 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch.nn import functional as F


def rate_bpp(likelihoods: Mapping[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """R = Σ −log2 P over every likelihood tensor, divided by ``num_pixels`` (B·H·W).

    With :class:`cadc.entropy.SnappedGaussianConditional` the ŷ likelihoods use the coder's
    table-snapped σ and rounded μ, so in eval mode this is the rate the rANS coder spends (up to
    its few bytes of flush).
    """
    bits = sum(-torch.log2(p).sum() for p in likelihoods.values())
    return bits / num_pixels


def mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (images in 0..1)."""
    return F.mse_loss(x_hat.float(), x.float())


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB (peak 1) of the whole batch, computed on x̂ clamped to 0..1."""
    error = F.mse_loss(x_hat.detach().float().clamp(0, 1), x.float()).item()
    return 10.0 * math.log10(1.0 / max(error, 1e-12))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: E[relu(1 − D(x))] + E[relu(1 + D(x̂))]."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator's adversarial loss for the hinge discriminator: −E[D(x̂)]."""
    return -fake_logits.mean()
