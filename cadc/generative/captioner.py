"""BFATC captioning: BLIP describes the auxiliary reconstruction x̂_aux; the caption steers the UNet.

Prompt joining rule (:func:`join_prompt`): the caption is stripped of surrounding whitespace and of
trailing ``.``/``,``; if anything is left the prompt is ``f"{caption}, {FIXED_PROMPT}"``, otherwise
the fixed prompt alone. No text is transmitted: the decoder captions its own x̂_aux.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import BlipForConditionalGeneration, BlipProcessor

from ..config import FIXED_PROMPT
from .errors import SourceError

"""c_fix of the paper."""
TINY = "tiny-random"
MAX_NEW_TOKENS = 30
"""Caption length bound (BLIP base captions are typically 8–15 tokens)."""
BLIP_HINT = (
    "put the files of Salesforce/blip-image-captioning-base (config.json, model.safetensors, "
    "preprocessor_config.json, tokenizer.json or vocab.txt, tokenizer_config.json, "
    "special_tokens_map.json) in that folder, e.g. <ComfyUI>/models/blip/blip-image-captioning-base, "
    "and pass --blip PATH; or pass --no-caption to use the fixed prompt alone"
)


def join_prompt(caption: str | None, fixed_prompt: str = FIXED_PROMPT) -> str:
    """c = c_aux + c_fix: ``"<caption>, <fixed_prompt>"``, or ``fixed_prompt`` for no/empty caption."""
    c = (caption or "").strip().rstrip(".,").strip()
    return f"{c}, {fixed_prompt}" if c else fixed_prompt


def check_blip_folder(source: str | os.PathLike) -> Path:
    """The BLIP folder as a Path, after checking the files :meth:`Captioner.from_source` needs.

    Raises:
        SourceError: naming the missing folder or file and what to put there.
    """
    path = Path(source).expanduser()
    if not path.is_dir():
        raise SourceError(f"BLIP folder {path} not found: {BLIP_HINT}")
    for required in ("config.json", "model.safetensors"):
        if not (path / required).is_file():
            raise SourceError(f"{path / required} is missing (safetensors weights only): {BLIP_HINT}")
    if not any((path / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")):
        raise SourceError(f"{path / 'preprocessor_config.json'} is missing: {BLIP_HINT}")
    return path


class Captioner:
    """Frozen BLIP captioner (BlipForConditionalGeneration + BlipProcessor, 384×384, greedy).

    Args:
        model: BLIP captioning model (moved to ``device``/``dtype`` here).
        processor: its processor (resize to 384×384, CLIP mean/std; tokenizer for decoding).
        max_new_tokens: caption length bound.
    """

    def __init__(
        self,
        model: BlipForConditionalGeneration,
        processor: BlipProcessor,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.processor = processor
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_source(
        cls, source: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Captioner:
        """Load from ``"tiny-random"`` or a local folder in Hugging Face layout (never the hub).

        Raises:
            SourceError: the folder or one of its files is missing.
        """
        if str(source) == TINY:
            from cadc.testing.tiny_sd import tiny_blip, tiny_blip_processor

            return cls(tiny_blip(), tiny_blip_processor(), device, dtype)
        path = check_blip_folder(source)
        try:
            processor = BlipProcessor.from_pretrained(path, local_files_only=True)
            model = BlipForConditionalGeneration.from_pretrained(path, local_files_only=True, use_safetensors=True)
        except OSError as e:
            raise SourceError(f"cannot load BLIP from {path}: {e}; {BLIP_HINT}") from e
        return cls(model, processor, device, dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> list[str]:
        """Caption a batch.

        Args:
            images: [B, 3, H, W] float in 0..1 (any size; resized to 384×384 by the processor).

        Returns:
            B captions (lower-case BLIP text, special tokens removed).
        """
        weight = next(self.model.parameters())  # where the model is now (a host may have moved it)
        pixels = self.processor(
            images=[im.float().clamp(0, 1).cpu() for im in images], do_rescale=False, return_tensors="pt"
        )["pixel_values"].to(weight.device, weight.dtype)
        ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens, num_beams=1, do_sample=False)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
