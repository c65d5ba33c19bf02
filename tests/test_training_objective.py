"""Stage I trains g_aux without touching the paper's Stage I loss; the MSE scale convention
(issue 13, item 4)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cadc.generative.adapter import AdapterConfig
from cadc.generative.sd_turbo import SDTurboSource
from cadc.model import CADCCodec
from cadc.training.config import TrainConfig
from cadc.training.generative_branch import GenerativeBranch
from cadc.training.losses import mse
from cadc.training.objective import Objective
from tests.conftest import make_photo


def _gradients(config: TrainConfig, x: torch.Tensor) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    codec = CADCCodec(config.codec_config()).train()
    adapter = AdapterConfig(latent_channels=codec.config.latent_channels)
    branch = GenerativeBranch(SDTurboSource("tiny-random"), None, adapter)
    total, terms, _ = Objective(codec, config, branch)(x)
    total.backward()
    named = {f"codec.{k}": p for k, p in codec.named_parameters()}
    named |= {f"adapter.{k}": p for k, p in branch.named_trainable_parameters().items()}
    return terms, {k: p.grad.clone() for k, p in named.items() if p.grad is not None}


@pytest.fixture(scope="module")
def stage1_runs():
    x = make_photo(64, 64, seed=5)
    base = TrainConfig(stage="stage1", sd_turbo="tiny-random")
    return {
        "none": _gradients(base.replace(aux_weight=0.0), x),
        "stop": _gradients(base, x),
        "through": _gradients(base.replace(aux_stop_gradient=False), x),
    }


def test_stage1_defaults_train_g_aux_on_a_stop_gradient_latent():
    config = TrainConfig(stage="stage1", sd_turbo="tiny-random")
    assert (config.aux_weight, config.aux_stop_gradient, config.effective_aux_weight) == (4.0, True, 4.0)
    stage2 = TrainConfig(stage="stage2", sd_turbo="tiny-random", blip="tiny-random")
    assert (stage2.aux_weight, stage2.aux_stop_gradient) == (4.0, False)
    codec = TrainConfig(stage="codec")
    assert (codec.aux_weight, codec.aux_stop_gradient, codec.ema_decay) == (1.0, False, 0.0)  # shipped runs unchanged


def test_stop_gradient_l_aux_reaches_only_g_aux(stage1_runs):
    terms_none, none = stage1_runs["none"]
    terms_stop, stop = stage1_runs["stop"]
    assert "aux" in terms_stop and "aux" not in terms_none
    g_aux = {k for k in stop if k.startswith("codec.g_aux.")}
    assert g_aux and not g_aux & set(none)  # L_aux is g_aux's only gradient source
    for name, grad in none.items():  # everything else sees exactly the paper's Stage I loss
        assert torch.equal(stop[name], grad), name


def test_without_stop_gradient_l_aux_reaches_the_codec(stage1_runs):
    _, none = stage1_runs["none"]
    _, through = stage1_runs["through"]
    changed = [k for k, g in none.items() if not torch.equal(through[k], g)]
    assert any(k.startswith("codec.g_s.") for k in changed) and any(k.startswith("codec.g_a.") for k in changed)


def test_mse_convention_matches_stablecodec_on_minus_one_to_one():
    """StableCodec: 2.0·MSE on images in −1..1. Ours: mse_weight·MSE on 0..1 with mse_weight 8."""
    generator = torch.Generator().manual_seed(0)
    x, x_hat = torch.rand(2, 3, 16, 16, generator=generator), torch.rand(2, 3, 16, 16, generator=generator)
    stablecodec = 2.0 * F.mse_loss(x_hat * 2 - 1, x * 2 - 1)
    config = TrainConfig(stage="stage1", sd_turbo="tiny-random")
    torch.testing.assert_close(config.mse_weight * mse(x_hat, x), stablecodec, rtol=1e-6, atol=0)
    assert config.aux_weight * mse(x_hat, x) == pytest.approx(float(F.mse_loss(x_hat * 2 - 1, x * 2 - 1)), rel=1e-6)
