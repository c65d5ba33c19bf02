"""The nodes and ComfyUI's model management, in-process against a real ComfyUI (CPU).

Small models (codec, BLIP) load whole (``force_full_load``); the UNet step reserves the memory
ComfyUI's own estimate gives; nothing outlives the node outputs that hold it; One-Step Denoise
pairs conditioning i with file i and refuses a timestep it cannot run.
"""

from __future__ import annotations

import gc
import sys
import weakref

import pytest
import torch

from cadc.codec_io import encode_tensor
from cadc.generative.decode_plan import DecodePlanError
from cadc.weights import TINY_RANDOM, TINY_RANDOM_CONFIG, build_tiny_random
from tests.comfy_checkpoint import comfy_sd2_checkpoint
from tests.comfyui_harness import find_comfyui
from tests.conftest import make_photo

COMFY_DIR, SKIP_REASON = find_comfyui()
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(COMFY_DIR is None, reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI's model management module, imported in-process with --cpu."""
    if str(COMFY_DIR) not in sys.path:
        sys.path.append(str(COMFY_DIR))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management

    return comfy.model_management


@pytest.fixture(scope="module")
def comfy_model(comfy):
    """ComfyUI's MODEL (ModelPatcher) for the random SD 2.x checkpoint."""
    import comfy.sd

    return comfy.sd.load_checkpoint_guess_config(str(comfy_sd2_checkpoint()), output_vae=False, output_clip=False)[0]


@pytest.fixture
def load_calls(comfy, monkeypatch):
    """Every call of ``load_models_gpu`` (models, keyword arguments), passed through to ComfyUI."""
    calls = []
    real = comfy.load_models_gpu

    def record(models, **kwargs):
        calls.append((list(models), kwargs))
        return real(models, **kwargs)

    monkeypatch.setattr(comfy, "load_models_gpu", record)
    return calls


def decoded_files(seeds=(0, 1), config=TINY_RANDOM_CONFIG):
    from cadc_nodes.codec_nodes import DecodeLatent, LoadCodec

    (checkpoint,) = LoadCodec().load(TINY_RANDOM)
    encoder = build_tiny_random(config)
    files = [encode_tensor(encoder, make_photo(50, 70, seed=s))[0].file for s in seeds]
    return DecodeLatent().decode(checkpoint, files)[0]


def test_the_codec_loads_whole_and_is_freed_with_the_node_output(comfy, load_calls):
    latents = decoded_files(seeds=(0,))
    ((models, kwargs),) = load_calls
    assert kwargs == {"force_full_load": True}
    assert models[0].model[0] is latents.checkpoint.codec
    assert any(m.model is models[0] for m in comfy.current_loaded_models)

    codec = weakref.ref(latents.checkpoint.codec)
    del models, load_calls[:]
    gc.disable()  # freed by reference counting alone: no cycle keeps the codec alive
    try:
        del latents
        assert codec() is None
    finally:
        gc.enable()
    comfy.cleanup_models()
    assert all(m.real_model is None or m.real_model() is not None for m in comfy.current_loaded_models)


def test_blip_loads_whole_for_captioning(load_calls):
    from cadc.generative.captioner import Captioner
    from cadc_nodes.caption_nodes import Caption

    latents = decoded_files(seeds=(0,))
    captioner = Captioner.from_source(TINY_RANDOM)
    load_calls.clear()
    prompts, captions = Caption().caption(latents, captioner)["result"]
    ((models, kwargs),) = load_calls
    assert kwargs == {"force_full_load": True} and models[0].model[0] is captioner.model
    assert prompts[0].startswith(captions[0])


def test_one_step_denoise_pairs_conditioning_i_with_file_i(comfy_model, load_calls):
    from cadc_nodes.denoise_node import OneStepDenoise, denoise_one
    from cadc_nodes.unet_patch import adapter_for, apply_adapter

    latents = decoded_files()
    generator = torch.Generator().manual_seed(0)
    contexts = [torch.randn(1, 77, 1024, generator=generator) for _ in range(2)]
    load_calls.clear()
    (out,) = OneStepDenoise().denoise([comfy_model], [[[c, {}]] for c in contexts], [latents])
    samples = out["samples"]
    h, w = latents.images[0].latent.l_T.shape[-2:]
    assert samples.shape == (2, 4, h, w)
    expected_memory = comfy_model.model.memory_required([1, 4, h, w])
    assert [kwargs for _, kwargs in load_calls] == [
        {"memory_required": expected_memory, "minimum_memory_required": expected_memory}
    ] * 2

    patched = apply_adapter(comfy_model, adapter_for(comfy_model, latents.checkpoint))
    comfy_model_management = sys.modules["comfy.model_management"]
    comfy_model_management.load_models_gpu([patched])
    for i, (decoded, context) in enumerate(zip(latents.images, contexts, strict=True)):
        alone = patched.model.process_latent_out(denoise_one(patched, decoded.latent.l_T, context, 999))
        torch.testing.assert_close(samples[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    swapped = patched.model.process_latent_out(denoise_one(patched, latents.images[0].latent.l_T, contexts[1], 999))
    assert (swapped - samples[:1]).abs().max() > 1e-3, "the conditioning must matter"

    (single,) = OneStepDenoise().denoise([comfy_model], [[[contexts[0], {}]]], [latents])
    torch.testing.assert_close(single["samples"][:1], samples[:1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="3 conditionings for 2 files"):
        OneStepDenoise().denoise([comfy_model], [[[c, {}]] for c in [*contexts, contexts[0]]], [latents])


def test_one_step_denoise_refuses_a_timestep_it_cannot_run(comfy_model):
    from cadc_nodes.denoise_node import OneStepDenoise

    latents = decoded_files(seeds=(0,), config=TINY_RANDOM_CONFIG.replace(denoise_timestep=500))
    with pytest.raises(DecodePlanError, match="timestep of 500"):
        OneStepDenoise().denoise([comfy_model], [[[torch.zeros(1, 77, 1024), {}]]], [latents])
