"""The one decision both ``cadc decompress`` and the ComfyUI nodes make for a file: prompt, timestep,
captions, warning, tiling (cadc.generative.decode_plan)."""

from __future__ import annotations

import itertools

import pytest
import torch

from cadc.codec_io import decoder_hints
from cadc.config import FIXED_PROMPT, get_preset
from cadc.container import DecoderHints
from cadc.generative.decode_plan import DecodePlanError, Tiling, caption_each, plan_decode
from cadc.model_lookup import PACKAGE_MODELS_DIR
from cadc.training.config import ABLATIONS, TrainConfig
from cadc.weights import load_checkpoint

CONFIG = get_preset("tiny")
BLIP = "Salesforce/blip-image-captioning-base"


def test_fixed_prompt_comes_from_the_file_before_the_codec():
    own = CONFIG.replace(fixed_prompt="codec default")
    assert plan_decode(DecoderHints(fixed_prompt="from the file"), own, captioner=True).fixed_prompt == "from the file"
    assert plan_decode(DecoderHints(), own, captioner=True).fixed_prompt == "codec default"
    # an empty hint is a real value, not "missing"
    assert plan_decode(DecoderHints(fixed_prompt=""), own, captioner=True).fixed_prompt == ""


def test_prompt_joins_the_caption_only_when_captioning():
    plan = plan_decode(DecoderHints(fixed_prompt="sharp"), CONFIG, captioner=True)
    assert plan.prompt(" a red house. ") == "a red house, sharp"
    assert plan.prompt("") == "sharp"
    silent = plan_decode(DecoderHints(fixed_prompt="sharp"), CONFIG, captioner=False)
    assert silent.prompt("a red house") == "sharp"


@pytest.mark.parametrize("timestep", [0, 1, 500, 998, 1000, 9999])
def test_timesteps_other_than_999_are_refused(timestep):
    with pytest.raises(DecodePlanError, match=f"timestep of {timestep}"):
        plan_decode(DecoderHints(timestep=timestep), CONFIG, captioner=True)
    # a file without the hint falls back to the codec's setting, which is checked the same way
    with pytest.raises(DecodePlanError):
        plan_decode(DecoderHints(), CONFIG.replace(denoise_timestep=timestep), captioner=True)


def test_timestep_999_from_the_file_or_the_codec():
    assert plan_decode(DecoderHints(timestep=999), CONFIG, captioner=False).timestep == 999
    assert plan_decode(DecoderHints(), CONFIG, captioner=False).timestep == 999


@pytest.mark.parametrize(
    "captioner, opt_out, aux, hint", list(itertools.product([False, True], [False, True], [False, True], [None, BLIP]))
)
def test_captioning_and_warning_over_every_combination(captioner, opt_out, aux, hint):
    plan = plan_decode(DecoderHints(captioner_id=hint), CONFIG.replace(aux=aux), captioner=captioner, opt_out=opt_out)
    assert plan.caption == (captioner and not opt_out and aux)
    if captioner and not opt_out and not aux:
        assert plan.warning is not None and "no aux decoder" in plan.warning
    elif hint is not None and not captioner and not opt_out:
        assert plan.warning is not None and hint in plan.warning and "no captioner" in plan.warning
    else:
        assert plan.warning is None
    if plan.warning:
        assert "\n" not in plan.warning


def test_warning_tells_how_to_add_a_captioner():
    plan = plan_decode(DecoderHints(captioner_id=BLIP), CONFIG, captioner=False, how_to_caption="pass --blip PATH")
    assert "pass --blip PATH" in plan.warning


def test_tiling_starts_above_128_latent_pixels():
    tiling = plan_decode(DecoderHints(), CONFIG, captioner=False).tiling
    assert tiling == Tiling(96, 32, 128)
    assert not tiling.applies(128, 128) and not tiling.applies(64, 128)
    assert tiling.applies(129, 8) and tiling.applies(8, 136)


def test_caption_each_captions_every_image_on_its_own():
    calls = []

    def captioner(batch: torch.Tensor) -> list[str]:
        calls.append(tuple(batch.shape))
        return [f"mean {batch.mean():.2f}"]

    images = [torch.full((1, 3, 8, 8), 0.25), torch.full((3, 16, 8), 0.75)]
    assert caption_each(captioner, images) == ["mean 0.25", "mean 0.75"]
    assert calls == [(1, 3, 8, 8), (1, 3, 16, 8)]


def test_default_prompt_is_the_papers():
    assert plan_decode(DecoderHints(), CONFIG, captioner=False).prompt(None) == FIXED_PROMPT


RUNS = [(s, a) for s in ("codec", "stage1", "stage2") for a in sorted(ABLATIONS) if s != "codec" or ABLATIONS[a].aux]


@pytest.mark.parametrize("stage, ablation", RUNS)
def test_only_a_stage2_run_with_captions_names_a_captioner(stage, ablation):
    """A model names BLIP in its files only when its UNet step was trained on captions (Stage II
    with BFATC); the others must not make every decode without a captioner warn."""
    config = TrainConfig(stage=stage, ablation=ablation, blip="tiny-random", sd_turbo="tiny-random", preset="tiny")
    want = BLIP if stage == "stage2" and ABLATIONS[ablation].caption else None
    assert config.captioner_hint == want
    assert config.codec_config().captioner_id == want


def test_shipped_models_name_no_captioner_so_decoding_them_without_one_is_quiet():
    """The shipped family is codec-only (no trained UNet adapter)."""
    for path in sorted(PACKAGE_MODELS_DIR.glob("*.safetensors")):
        checkpoint = load_checkpoint(path)
        assert not checkpoint.adapter_state, path.name
        hints = decoder_hints(checkpoint.codec)
        assert hints.captioner_id is None, path.name
        assert plan_decode(hints, checkpoint.codec.config, captioner=False).warning is None
