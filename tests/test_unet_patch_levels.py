"""The adapter patch on a multi-level SD-2-layout UNet inside a real ComfyUI (in-process, CPU).

The UNet has three resolution levels like SD 2.x (cross-attention in the first two, a plain
level last), so every kind of LoRA target exists: attention projections, feed-forwards,
resnets with and without ``conv_shortcut``, down- and up-sampler convolutions, ``conv_out``.
ComfyUI loads it from LDM-layout tensors written by our own converter
(:func:`cadc.testing.ldm_checkpoint.unet_to_ldm`), with no VAE or text encoder.

Checks:
* the key map of :mod:`cadc_nodes.unet_patch` agrees with ComfyUI's own LoRA key conversion
  (``comfy.lora.model_lora_keys_unet``) for every LoRA target and conv_in;
* every mapped ComfyUI weight holds the same numbers as the diffusers module it was mapped from
  (random weights, so a wrong mapping cannot match), which checks the map against a conversion
  written independently of ComfyUI's;
* the patched ComfyUI UNet's one-step x0 equals the core decoder's (diffusers + peft).
"""

from __future__ import annotations

import sys

import pytest
import torch

from tests.comfyui_harness import find_comfyui

COMFY_DIR, SKIP_REASON = find_comfyui()
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(COMFY_DIR is None, reason=SKIP_REASON)]

UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 640),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 10),  # diffusers' name for the head count: 64 channels per head, as SD 2.x
    "use_linear_projection": True,
}
LATENT_CHANNELS = 16


def random_unet() -> torch.nn.Module:
    """The diffusers UNet with seeded random weights, every tensor different (norm weights near 1)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**UNET_CONFIG)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.02
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)
    return unet.eval()


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return random_unet()


@pytest.fixture(scope="module")
def comfy_model(unet):
    """ComfyUI's MODEL (ModelPatcher) for the UNet, loaded from LDM-layout float32 tensors."""
    if str(COMFY_DIR) not in sys.path:
        sys.path.append(str(COMFY_DIR))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sd

    from cadc.testing.ldm_checkpoint import unet_to_ldm

    ldm = unet_to_ldm({k: v.clone() for k, v in unet.state_dict().items()}, unet.config)
    model = comfy.sd.load_diffusion_model_state_dict(
        {f"model.diffusion_model.{k}": v for k, v in ldm.items()}, model_options={"dtype": torch.float32}
    )
    assert model is not None, "ComfyUI did not recognise the UNet"
    assert type(model.model).__name__ == "BaseModel" and model.model.model_config.unet_config["model_channels"] == 320
    return model


def lora_target_names(unet: torch.nn.Module) -> list[str]:
    """Diffusers names of every module the adapter puts a LoRA on."""
    from cadc.generative.adapter import LORA_TARGETS

    return sorted(
        name
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear)
        and any(name == target or name.endswith(f".{target}") for target in LORA_TARGETS)
    )


def test_the_unet_has_every_kind_of_lora_target(unet):
    names = lora_target_names(unet)
    for kind in ("downsamplers.0.conv", "upsamplers.0.conv", "conv_shortcut", "attn2.to_k", "ff.net.2", "proj_in"):
        assert any(kind in name for name in names), kind
    assert any(n.startswith("down_blocks.2.") for n in names) and any(n.startswith("up_blocks.0.") for n in names)
    assert any(n.startswith("mid_block.") for n in names) and "conv_out" in names


def test_key_map_agrees_with_comfyuis_lora_key_conversion(unet, comfy_model):
    import comfy.lora

    from cadc_nodes.unet_patch import CONV_IN, lora_key_map

    ours = lora_key_map(comfy_model.model.model_config.unet_config)
    comfy_map = comfy.lora.model_lora_keys_unet(comfy_model.model, {})
    names = lora_target_names(unet)
    assert len(names) > 100
    for name in [*names, "conv_in"]:
        assert ours[name] == comfy_map["lora_unet_" + name.replace(".", "_")], name
    assert ours["conv_in"] == f"{CONV_IN}.weight"


def test_every_mapped_weight_holds_the_diffusers_modules_numbers(unet, comfy_model):
    from cadc_nodes.unet_patch import CONV_IN, lora_key_map

    ours = lora_key_map(comfy_model.model.model_config.unet_config)
    comfy_state = comfy_model.model.state_dict()
    modules = dict(unet.named_modules())
    for name in [*lora_target_names(unet), "conv_in"]:
        expected = modules[name].weight.detach()
        actual = comfy_state[ours[name]]
        assert actual.shape == expected.shape and torch.equal(actual, expected), name
    assert torch.equal(comfy_model.get_model_object(CONV_IN).weight, unet.conv_in.weight.detach())


def random_adapter(unet: torch.nn.Module):
    """An adapter with a non-zero LoRA on every target and a conv_in reading 16 l_T channels."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from cadc.generative.adapter import LORA_TARGETS, AdapterConfig, AdapterWeights

    probe = random_unet()
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2.0, target_modules=list(LORA_TARGETS)), probe)
    generator = torch.Generator().manual_seed(5)

    def rand(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std

    lora = {
        name: (rand(m.lora_A["default"].weight.shape, 0.1), rand(m.lora_B["default"].weight.shape, 0.1))
        for name, m in probe.named_modules()
        if isinstance(m, LoraLayer)
    }
    assert sorted(lora) == lora_target_names(unet)
    config = AdapterConfig(rank=4, alpha=2.0, latent_channels=LATENT_CHANNELS)
    return AdapterWeights(config, rand((320, LATENT_CHANNELS, 3, 3), 0.05), rand((320,), 0.05), lora)


def comfy_eps(model, adapter, l_t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """ε of the patched ComfyUI UNet at t = 999 (the UNet called directly, as the denoise node does)."""
    import comfy.model_management

    from cadc_nodes.unet_patch import apply_adapter

    patched = apply_adapter(model, adapter)
    comfy.model_management.load_models_gpu([patched])
    with torch.inference_mode():
        t = torch.full((l_t.shape[0],), 999.0)
        return patched.model.diffusion_model(l_t, t, context=context).float()


def test_patched_comfyui_unet_equals_the_core_decoder(unet, comfy_model):
    from cadc.generative.adapter import AdapterWeights
    from cadc.generative.denoiser import OneStepDenoiser
    from cadc.generative.schedule import predict_x0

    adapter = random_adapter(unet)
    generator = torch.Generator().manual_seed(1)
    l_t = torch.randn(1, LATENT_CHANNELS, 16, 16, generator=generator)
    context = torch.randn(1, 77, 1024, generator=generator)
    patched = comfy_eps(comfy_model, adapter, l_t, context)
    no_lora = AdapterWeights(adapter.config, adapter.conv_in_weight, adapter.conv_in_bias)
    assert (patched - comfy_eps(comfy_model, no_lora, l_t, context)).abs().max() > 0.5, "the LoRA was not applied"

    core = OneStepDenoiser(random_unet(), adapter, merge=False)
    with torch.no_grad():
        expected = core(l_t, context)
    torch.testing.assert_close(patched, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(predict_x0(l_t[:, :4], patched), predict_x0(l_t[:, :4], expected), rtol=1e-4, atol=1e-3)
