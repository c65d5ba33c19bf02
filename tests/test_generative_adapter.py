"""CADC adapter: checkpoint layout, validation, and that conv_in and LoRA really act on ε."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cadc.generative import AdapterConfig, AdapterError, AdapterWeights, OneStepDenoiser
from cadc.testing.tiny_sd import tiny_unet

C = 16  # l_T channels of the tiny codec
RANK = 8  # smaller than the paper's 32 to keep these tests fast


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(1, C, 16, 16, generator=gen), torch.randn(1, 77, 32, generator=gen)


def _demo(config: AdapterConfig | None = None) -> OneStepDenoiser:
    return OneStepDenoiser(tiny_unet(), None, config or AdapterConfig(latent_channels=C, rank=RANK))


def _trained_like(seed: int = 5) -> AdapterWeights:
    """The demo adapter with every tensor randomised, as a trained one would be."""
    base = _demo().unet
    gen = torch.Generator().manual_seed(seed)
    lora = {}
    for name, m in base.named_modules():
        if hasattr(m, "lora_A"):
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            lora[name] = (torch.randn(a.shape, generator=gen) * 0.1, torch.randn(b.shape, generator=gen) * 0.1)
    w = base.conv_in.weight
    return AdapterWeights(
        AdapterConfig(latent_channels=C, rank=RANK),
        torch.randn(w.shape, generator=gen) * 0.05,
        torch.randn(w.shape[0], generator=gen) * 0.05,
        lora,
    )


def test_lora_targets_cover_stablecodec_modules() -> None:
    names = [n for n, m in _demo().unet.named_modules() if hasattr(m, "lora_A")]
    for suffix in (
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "conv1",
        "conv2",
        "conv_shortcut",
        "proj_in",
        "proj_out",
        "ff.net.0.proj",
        "ff.net.2",
        "downsamplers.0.conv",
        "upsamplers.0.conv",
    ):
        assert any(n.endswith(suffix) for n in names), suffix
    assert "conv_out" in names and "conv_in" not in names


def test_adapter_roundtrip_through_safetensors(tmp_path) -> None:
    adapter = _trained_like()
    path = tmp_path / "cadc.safetensors"
    tensors = {"codec.some.weight": torch.zeros(2), **adapter.state_dict()}
    save_file(tensors, path, metadata={"cadc.adapter": json.dumps(adapter.config.to_dict())})
    with safe_open(path, framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["cadc.adapter"])
    back = AdapterWeights.from_state_dict(state, meta)
    assert back.config == adapter.config
    assert set(back.lora) == set(adapter.lora)
    assert all(k.startswith("adapter.unet.") for k in adapter.state_dict())
    assert torch.equal(back.conv_in_weight, adapter.conv_in_weight)
    lsd = back.lora_state_dict()
    name = next(iter(back.lora))
    assert {f"{name}.lora_A.weight", f"{name}.lora_B.weight", f"{name}.alpha"} <= set(lsd)
    assert float(lsd[f"{name}.alpha"]) == 8.0


def test_conv_in_and_lora_from_safetensors_change_the_output(tmp_path) -> None:
    l_t, text = _inputs()
    adapter = _trained_like()
    save_file(adapter.state_dict(), tmp_path / "a.safetensors")
    with safe_open(tmp_path / "a.safetensors", framework="pt") as f:
        loaded = AdapterWeights.from_state_dict({k: f.get_tensor(k) for k in f.keys()})
    with torch.inference_mode():
        eps_demo = _demo()(l_t, text)
        eps_full = OneStepDenoiser(tiny_unet(), loaded)(l_t, text)
        no_lora = AdapterWeights(
            loaded.config,
            loaded.conv_in_weight,
            loaded.conv_in_bias,
            {k: (a, torch.zeros_like(b)) for k, (a, b) in loaded.lora.items()},
        )
        eps_conv_only = OneStepDenoiser(tiny_unet(), no_lora)(l_t, text)
        eps_unmerged = OneStepDenoiser(tiny_unet(), loaded, merge=False)(l_t, text)
    assert eps_full.shape == (1, 4, 16, 16)
    assert (eps_conv_only - eps_demo).abs().mean() > 1e-3, "conv_in had no effect"
    assert (eps_full - eps_conv_only).abs().mean() > 1e-3, "LoRA had no effect"
    torch.testing.assert_close(eps_full, eps_unmerged, rtol=1e-4, atol=1e-4)


def test_demo_adapter_is_plain_unet_on_first_four_channels() -> None:
    l_t, text = _inputs()
    unet = tiny_unet()
    with torch.inference_mode():
        ref = unet(l_t[:, :4], 999, encoder_hidden_states=text).sample
        eps = _demo()(l_t, text)
        eps2 = _demo()(l_t, text)
    torch.testing.assert_close(eps, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(eps, eps2)


def test_adapter_validation_errors() -> None:
    good = _trained_like().state_dict()
    name = next(k for k in good if k.endswith("lora_B.weight"))
    with pytest.raises(AdapterError, match="needs both"):
        AdapterWeights.from_state_dict({k: v for k, v in good.items() if k != name})
    with pytest.raises(AdapterError, match="conv_in"):
        AdapterWeights.from_state_dict({k: v for k, v in good.items() if "conv_in" not in k})
    with pytest.raises(AdapterError, match="rank"):
        AdapterWeights.from_state_dict(good, {"rank": 2 * RANK})
    with pytest.raises(AdapterError, match="unexpected"):
        AdapterWeights.from_state_dict({**good, "adapter.unet.foo.weight": torch.zeros(1)})
    wrong = _trained_like()
    wrong.lora.popitem()
    with pytest.raises(AdapterError, match="missing"):
        OneStepDenoiser(tiny_unet(), wrong)
