"""Captioning nodes (BFATC): BLIP describes each file's x̂_aux; caption + the file's fixed prompt is the
text condition, encoded by the stock CLIP Text Encode with SD-Turbo's own text encoder.

CADC Caption decides with :func:`cadc.generative.decode_plan.plan_decode`, as ``cadc decompress``
does: one prompt per file (a list output, so CLIP Text Encode runs once per file and One-Step
Denoise pairs each conditioning with its file), the fixed prompt from the file's header.

Custom type: ``CADC_CAPTIONER`` — a :class:`cadc.generative.captioner.Captioner`, owned by
ComfyUI's node cache (nothing is cached here).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from cadc.model_lookup import TINY_RANDOM

from . import host
from .codec_nodes import CATEGORY, LATENT, DecodedFiles

if TYPE_CHECKING:
    from cadc.generative.captioner import Captioner

log = logging.getLogger(__name__)

CAPTIONER = "CADC_CAPTIONER"
HOW_TO_CAPTION = "connect Load CADC Captioner to CADC Caption's captioner input"


def captioner_dirs() -> dict[str, Path]:
    """BLIP folders (``save_pretrained`` layout, with a config.json) in the ``blip`` model folders."""
    found: dict[str, Path] = {}
    for folder in host.folder_paths().get_folder_paths(host.CAPTIONER_FOLDER):
        root = Path(folder)
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / "config.json").is_file():
                    found.setdefault(child.name, child)
    return found


def load_captioner(name: str) -> Captioner:
    """Load a captioner by folder name (or ``tiny-random``) on the CPU; Caption moves it to ComfyUI's device."""
    from cadc.generative.captioner import Captioner

    if name == TINY_RANDOM:
        return Captioner.from_source(TINY_RANDOM)
    dirs = captioner_dirs()
    if name not in dirs:
        raise FileNotFoundError(f"CADC: no BLIP folder '{name}' in models/{host.CAPTIONER_FOLDER}")
    return Captioner.from_source(dirs[name])


class LoadCaptioner:
    """Load CADC Captioner."""

    DESCRIPTION = (
        "Loads the BLIP captioner from a folder in models/blip (e.g. blip-image-captioning-base saved "
        "with save_pretrained). 'tiny-random' is an untrained test model that outputs random words."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (CAPTIONER,)
    RETURN_NAMES = ("captioner",)
    OUTPUT_TOOLTIPS = ("The captioner, for CADC Caption.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "captioner_name": (
                    [*captioner_dirs(), TINY_RANDOM],
                    {"tooltip": "A BLIP model folder in models/blip, or 'tiny-random'."},
                )
            }
        }

    def load(self, captioner_name: str) -> tuple[Captioner]:
        return (load_captioner(captioner_name),)


class Caption:
    """CADC Caption."""

    DESCRIPTION = (
        "Captions each decoded file's auxiliary reconstruction with BLIP and appends the fixed prompt "
        "the file names, giving one prompt per file for CLIP Text Encode (as cadc decompress does). "
        "Without a captioner the prompt is the fixed prompt alone. No text is stored in the .cadc file."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "caption")
    OUTPUT_IS_LIST = (True, True)
    OUTPUT_TOOLTIPS = (
        "One prompt per file (caption + ', ' + fixed prompt); connect to CLIP Text Encode's text.",
        "One BLIP caption per file (empty without a captioner).",
    )
    FUNCTION = "caption"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {"cadc_latent": (LATENT, {"tooltip": "Output of Decode Latent."})},
            "optional": {
                "captioner": (
                    CAPTIONER,
                    {"tooltip": "From Load CADC Captioner; leave unconnected for the fixed prompt alone."},
                ),
            },
        }

    def caption(self, cadc_latent: DecodedFiles, captioner: Captioner | None = None) -> dict:
        from cadc.generative.decode_plan import caption_each, plan_decode

        config = cadc_latent.checkpoint.codec.config
        plans = [
            plan_decode(d.header.hints, config, captioner=captioner is not None, how_to_caption=HOW_TO_CAPTION)
            for d in cadc_latent.images
        ]
        warnings = list(dict.fromkeys(p.warning for p in plans if p.warning))
        for warning in warnings:
            log.warning("CADC: %s", warning)
        captions = [""] * len(plans)
        to_caption = [i for i, plan in enumerate(plans) if plan.caption]
        if to_caption:
            assert captioner is not None  # plan.caption implies a captioner
            host.load_small_model(captioner, captioner.model)  # BLIP whole on ComfyUI's device
            progress = host.progress_bar(len(to_caption))

            def one(image):
                host.check_interrupted()
                text = captioner(image)
                progress.update(1)
                return text

            texts = caption_each(one, [cadc_latent.images[i].x_aux for i in to_caption])
            for i, text in zip(to_caption, texts, strict=True):
                captions[i] = text
        prompts = [plan.prompt(text) for plan, text in zip(plans, captions, strict=True)]
        shown = [
            f"caption: {text}" if plan.caption else f"prompt: {prompt}"
            for text, prompt, plan in zip(captions, prompts, plans, strict=True)
        ]
        lines = [*(f"warning: {w}" for w in warnings), *shown]
        return {"ui": {"cadc_info": lines}, "result": (prompts, captions)}
