"""The adapter patch inside a real ComfyUI (imported in-process, CPU): ComfyUI really applies the
LoRA, and its one-step x0 equals the core decoder's (diffusers + peft) on the same weights."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.comfy_checkpoint import comfy_sd2_checkpoint, comfy_unet
from tests.comfyui_harness import find_comfyui

COMFY_DIR, SKIP_REASON = find_comfyui()
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(COMFY_DIR is None, reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def comfy_model():
    """ComfyUI's MODEL (ModelPatcher) for the random SD 2.x checkpoint."""
    if str(COMFY_DIR) not in sys.path:
        sys.path.append(str(COMFY_DIR))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sd

    model = comfy.sd.load_checkpoint_guess_config(
        str(comfy_sd2_checkpoint()), output_vae=False, output_clip=False
    )[0]
    assert type(model.model).__name__ == "BaseModel"  # detected as SD 2.x
    return model


@pytest.fixture(scope="module")
def adapter():
    """A random adapter with LoRA on every StableCodec target of the UNet (non-zero B)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from cadc.generative.adapter import LORA_TARGETS, AdapterConfig, AdapterWeights

    probe = comfy_unet()
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2.0, target_modules=list(LORA_TARGETS)), probe)
    generator = torch.Generator().manual_seed(5)

    def rand(shape: torch.Size, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std

    lora = {
        name: (rand(m.lora_A["default"].weight.shape, 0.1), rand(m.lora_B["default"].weight.shape, 0.1))
        for name, m in probe.named_modules()
        if isinstance(m, LoraLayer)
    }
    config = AdapterConfig(rank=4, alpha=2.0, latent_channels=16)
    return AdapterWeights(config, rand((320, 16, 3, 3), 0.05), rand((320,), 0.05), lora)


def comfy_x0(model, adapter, l_t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    import comfy.model_management

    from cadc_nodes.denoise_node import denoise_one
    from cadc_nodes.unet_patch import apply_adapter

    patched = apply_adapter(model, adapter)
    comfy.model_management.load_models_gpu([patched])
    return denoise_one(patched, l_t, context, 999)


def test_lora_is_applied_and_matches_the_core_decoder(comfy_model, adapter):
    from cadc.generative.adapter import AdapterWeights
    from cadc.generative.denoiser import OneStepDenoiser
    from cadc.generative.schedule import predict_x0

    generator = torch.Generator().manual_seed(1)
    l_t = torch.randn(1, 16, 8, 8, generator=generator)
    context = torch.randn(1, 77, 1024, generator=generator)
    patched = comfy_x0(comfy_model, adapter, l_t, context)
    without_lora = comfy_x0(
        comfy_model,
        AdapterWeights(adapter.config, adapter.conv_in_weight, adapter.conv_in_bias),
        l_t,
        context,
    )
    assert (patched - without_lora).abs().max() > 1.0, "ComfyUI did not apply the LoRA"

    # The checkpoint stores float16 weights: give the diffusers UNet the same rounding.
    core = OneStepDenoiser(comfy_unet().half().float(), adapter, merge=False)
    with torch.no_grad():
        expected = predict_x0(l_t[:, :4], core(l_t, context))
    torch.testing.assert_close(patched, expected, rtol=1e-4, atol=1e-3)


def test_the_checkpoint_model_is_left_unpatched(comfy_model, adapter):
    from cadc_nodes.unet_patch import CONV_IN

    comfy_x0(comfy_model, adapter, torch.zeros(1, 16, 8, 8), torch.zeros(1, 77, 1024))
    assert CONV_IN not in comfy_model.object_patches
    assert not any(k.startswith("diffusion_model.") for k in comfy_model.patches)
