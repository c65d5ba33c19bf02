"""Captioning nodes (BFATC): BLIP describes x̂_aux; the caption plus the fixed prompt is the text
condition, encoded by the stock CLIP Text Encode with SD-Turbo's own text encoder.

Custom type: ``CADC_CAPTIONER`` — a :class:`cadc.generative.captioner.Captioner`. Loaded
captioners stay cached for the life of the ComfyUI process.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cadc.generative.captioner import TINY, Captioner, join_prompt

from . import host
from .codec_nodes import CATEGORY, image_to_tensor

CAPTIONER = "CADC_CAPTIONER"
_CAPTIONER_CACHE: dict[str, Captioner] = {}


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


def load_cached_captioner(name: str) -> Captioner:
    """Load a captioner by folder name (or ``tiny-random``), once per process."""
    if name not in _CAPTIONER_CACHE:
        if name == TINY:
            source: str | Path = TINY
        else:
            dirs = captioner_dirs()
            if name not in dirs:
                raise FileNotFoundError(f"CADC: no BLIP folder '{name}' in models/{host.CAPTIONER_FOLDER}")
            source = dirs[name]
        _CAPTIONER_CACHE[name] = Captioner.from_source(source)
    return _CAPTIONER_CACHE[name]


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
                    [*captioner_dirs(), TINY],
                    {"tooltip": "A BLIP model folder in models/blip, or 'tiny-random'."},
                )
            }
        }

    def load(self, captioner_name: str) -> tuple[Captioner]:
        return (load_cached_captioner(captioner_name),)


class Caption:
    """CADC Caption."""

    DESCRIPTION = (
        "Captions images (normally the auxiliary reconstruction) with BLIP and appends the paper's "
        "fixed prompt, giving the text for CLIP Text Encode. No text is stored in the .cadc file."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "caption")
    OUTPUT_TOOLTIPS = (
        "Caption + ', ' + fixed prompt (first image of the batch); connect to CLIP Text Encode's text.",
        "The BLIP caption alone.",
    )
    FUNCTION = "caption"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "captioner": (CAPTIONER, {"tooltip": "From Load CADC Captioner."}),
                "image": ("IMAGE", {"tooltip": "Image to describe; use Aux Reconstruct's output."}),
            }
        }

    def caption(self, captioner: Captioner, image: torch.Tensor) -> dict:
        host.check_interrupted()
        host.load_managed(captioner.model)  # BLIP on ComfyUI's device, offloaded like its own models
        captions = captioner(image_to_tensor(image))
        prompt = join_prompt(captions[0])
        return {"ui": {"cadc_info": [f"caption: {c}" for c in captions]}, "result": (prompt, captions[0])}
