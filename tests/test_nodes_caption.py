"""CADC Caption called directly, without ComfyUI: one caption per file from that file's own x̂_aux,
the fixed prompt and timestep from the file, one warning line without a captioner."""

from __future__ import annotations

import logging

import pytest
import torch

from cadc.codec_io import encode_tensor
from cadc.config import FIXED_PROMPT
from cadc.generative.decode_plan import DecodePlanError
from cadc.weights import TINY_RANDOM_CONFIG, Checkpoint, build_tiny_random
from cadc_nodes.caption_nodes import Caption
from cadc_nodes.codec_nodes import DecodeLatent
from tests.conftest import make_photo


class FakeCaptioner:
    """Stands in for BLIP: each caption names its image's size and mean; every call is recorded."""

    def __init__(self) -> None:
        self.model = torch.nn.Linear(1, 1)
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, images: torch.Tensor) -> list[str]:
        self.calls.append(tuple(images.shape))
        return [f"{im.shape[-1]}x{im.shape[-2]} mean {im.mean():.5f}" for im in images]


def decoded(codec_config=TINY_RANDOM_CONFIG, seeds=(0, 1), sizes=((50, 70), (40, 90))):
    """Files (one per seed, of the given sizes) encoded by a tiny-random codec with ``codec_config``,
    decoded by plain tiny-random."""
    encoder = build_tiny_random(codec_config)
    files = [encode_tensor(encoder, make_photo(*size, seed=s))[0].file for s, size in zip(seeds, sizes, strict=False)]
    (latents,) = DecodeLatent().decode(Checkpoint(codec=build_tiny_random(), source="tiny-random"), files)
    return latents


@pytest.fixture(scope="module")
def two_files():
    return decoded()


def test_each_file_is_captioned_from_its_own_aux_image(two_files):
    captioner = FakeCaptioner()
    out = Caption().caption(two_files, captioner)
    prompts, captions = out["result"]
    first, second = (d.x_aux.mean() for d in two_files.images)
    expected = [f"70x50 mean {first:.5f}", f"90x40 mean {second:.5f}"]
    assert captions == expected
    assert prompts == [f"{c}, {FIXED_PROMPT}" for c in expected]
    assert captioner.calls == [(1, 3, 50, 70), (1, 3, 40, 90)]  # one image per call, cropped x̂_aux
    assert out["ui"]["cadc_info"] == [f"caption: {c}" for c in expected]
    assert Caption.OUTPUT_IS_LIST == (True, True)


def test_the_fixed_prompt_comes_from_the_file():
    latents = decoded(TINY_RANDOM_CONFIG.replace(fixed_prompt="a prompt from the file"), seeds=(2,))
    assert latents.checkpoint.codec.config.fixed_prompt == FIXED_PROMPT  # the decoding codec's default differs
    prompts, captions = Caption().caption(latents, FakeCaptioner())["result"]
    assert prompts == [f"{captions[0]}, a prompt from the file"]


def test_without_a_captioner_the_fixed_prompt_alone_and_one_warning(two_files, caplog):
    assert two_files.images[0].header.hints.captioner_id is not None
    with caplog.at_level(logging.WARNING):
        out = Caption().caption(two_files)
    assert out["result"] == ([FIXED_PROMPT, FIXED_PROMPT], ["", ""])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "no captioner" in warnings[0] and "Load CADC Captioner" in warnings[0]
    warning_line = f"warning: {warnings[0].removeprefix('CADC: ')}"
    assert out["ui"]["cadc_info"] == [warning_line, f"prompt: {FIXED_PROMPT}", f"prompt: {FIXED_PROMPT}"]


def test_a_timestep_the_decoder_cannot_run_is_refused():
    latents = decoded(TINY_RANDOM_CONFIG.replace(denoise_timestep=500), seeds=(3,))
    with pytest.raises(DecodePlanError, match="timestep of 500"):
        Caption().caption(latents, FakeCaptioner())
