"""UGAQ on the shipped models: the quantization step m adapts to the image, and the coded ŷ is
not what isotropic rounding would give.

Measured on cadc/assets/astronaut.png (512², ŷ 96 × 8 × 8) with the photo family:

    model          m range      m 5-95 %     per-channel spatial range   ŷ ≠ round(y)
    cadc-photo-1   1.006-2.305  1.016-1.519  0.251                       6.6 %
    cadc-photo-2   1.000-1.752  1.001-1.209  0.070                       5.5 %
    cadc-photo-3   1.000-1.385  1.000-1.114  0.058                       5.8 %

The bounds below are about half of that, so a trained f_u passes and an untrained one (zero last
layer: m ≡ 1 + softplus(−4) everywhere) or an encoder that ignores m fails.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from cadc.images import load_image
from cadc.weights import load_codec

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted((ROOT / "models").glob("*.safetensors"))
IMAGE = ROOT / "cadc" / "assets" / "astronaut.png"


@pytest.fixture(scope="module", params=MODELS, ids=[m.stem for m in MODELS])
def codec(request):
    codec = load_codec(request.param)
    if not codec.config.ugaq:
        pytest.skip(f"{request.param.name} is an isotropic-rounding (M0) model")
    return codec


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return load_image(IMAGE).tensor  # [1, 3, 512, 512]


def ugaq_step(codec, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, m) as the exact encoder computes them (float64 copies of g_a, h_a and f_u)."""
    g_a, h_a, ugaq = codec._float64("g_a"), codec._float64("h_a"), codec._float64("ugaq")
    with torch.no_grad():
        y = g_a(x.double())
        medians = codec._medians(torch.float64, y.device)
        z_hat = torch.round(h_a(y) - medians) + medians
        return y, ugaq.step(y, z_hat)


def test_step_varies_across_the_image(codec, x):
    _, m = ugaq_step(codec, x)
    assert float(m.min()) >= 1.0
    low, high = torch.quantile(m.flatten(), torch.tensor([0.05, 0.95], dtype=m.dtype)).tolist()
    assert high - low >= 0.03, f"m's 5-95 % range is only {low:.4f}-{high:.4f}"
    # across positions within each channel (not only from channel to channel)
    spatial = (m.amax(dim=(2, 3)) - m.amin(dim=(2, 3))).median().item()
    assert spatial >= 0.01, f"median per-channel spatial range of m is {spatial:.4f}"
    # m depends on the image content: a flat grey image gets other steps
    _, m_flat = ugaq_step(codec, torch.full_like(x, 0.5))
    assert (m - m_flat).abs().max().item() >= 0.03


def test_coded_y_hat_is_y_over_m_rounded_and_not_isotropic_rounding(codec, x):
    y, m = ugaq_step(codec, x)
    coded = codec.compress(x)[0].y_hat.double()
    assert torch.equal(coded, torch.round(y / m))
    isotropic = copy.deepcopy(codec)
    isotropic.ugaq = None  # m ≡ 1
    plain = isotropic.compress(x)[0].y_hat.double()
    assert torch.equal(plain, torch.round(y))
    differ = (coded != plain).double().mean().item()
    assert differ >= 0.03, f"UGAQ changes only {differ:.2%} of ŷ"
