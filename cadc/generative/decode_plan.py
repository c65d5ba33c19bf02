"""What the generative decoder runs for one ``.cadc`` file: one decision for the CLI and the ComfyUI nodes.

``cadc decompress`` and the nodes (CADC Caption, CADC One-Step Denoise) both call
:func:`plan_decode`, so a graph decodes a file exactly as the command does:

* **timestep** — the file's hint, else the codec's ``denoise_timestep``; anything but t = 999 is
  refused (the one-step x0 formula and the adapter were trained for that step only);
* **prompt** — ``join_prompt(caption, fixed prompt)``, the fixed prompt being the file's hint, else
  the codec's ``fixed_prompt`` (an empty hint is kept: the caption alone);
* **captions** — BLIP describes each image's own x̂_aux, cropped to the original size, one image
  per call (:func:`caption_each`); none when no captioner is given, when the caller opted out,
  or when the codec has no aux decoder;
* **warning** — one line when the file's hint names a captioner (its model was trained with
  captions) but the decode runs without captions;
* **tiling** — the UNet step (and, in the CLI, the VAE decoder) runs over latent tiles when the
  latent's longer side exceeds :attr:`Tiling.above`. In a graph the VAE is ComfyUI's own VAE
  Decode, untiled, so images whose latent is larger than that decode differently there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from ..config import CodecConfig
from ..container import DecoderHints
from .captioner import join_prompt
from .schedule import TIMESTEP

SUPPORTED_TIMESTEPS = (TIMESTEP,)
"""Timesteps this decoder can run (CADC: one step at t = 999)."""


class DecodePlanError(ValueError):
    """The file asks for something this decoder cannot run."""


@dataclass(frozen=True)
class Tiling:
    """Latent tiling of the UNet and VAE: ``tile`` and ``overlap`` in latent pixels (multiples of 8);
    tiles are used when the latent's longer side exceeds ``above``."""

    tile: int = 96
    overlap: int = 32
    above: int = 128

    def applies(self, height: int, width: int) -> bool:
        """Whether a latent of ``height`` × ``width`` (latent pixels) is decoded in tiles."""
        return max(height, width) > self.above


@dataclass(frozen=True)
class DecodePlan:
    """The decisions for one file (see the module docstring).

    Attributes:
        timestep: the UNet's timestep (always 999 here).
        fixed_prompt: c_fix, joined after each caption.
        caption: whether each image is captioned.
        captioner_id: the captioner the file's hint names (None: no hint).
        tiling: the latent tiling.
        warning: one line to show the user, or None.
    """

    timestep: int
    fixed_prompt: str
    caption: bool
    captioner_id: str | None = None
    tiling: Tiling = field(default_factory=Tiling)
    warning: str | None = None

    def prompt(self, caption: str | None) -> str:
        """The text condition for one image: its caption (ignored when not captioning) + c_fix."""
        return join_prompt(caption if self.caption else None, self.fixed_prompt)


def plan_decode(
    hints: DecoderHints,
    config: CodecConfig,
    *,
    captioner: bool,
    opt_out: bool = False,
    how_to_caption: str = "give a captioner",
) -> DecodePlan:
    """Decide how to decode a file with header ``hints`` made by a codec with ``config``.

    Args:
        hints: the file's decoder hints (``CadcFile.header.hints``).
        config: the codec's config (defaults for missing hints; whether it has an aux decoder).
        captioner: whether a captioner is available (CLI ``--blip``; a connected Load CADC Captioner).
        opt_out: the user asked for the fixed prompt alone (CLI ``--no-caption``): no warning then.
        how_to_caption: the end of the warning, telling the user how to add captions.

    Raises:
        DecodePlanError: the file asks for a timestep this decoder cannot run.
    """
    timestep = hints.timestep if hints.timestep is not None else config.denoise_timestep
    if timestep not in SUPPORTED_TIMESTEPS:
        raise DecodePlanError(
            f"this file asks for a denoising timestep of {timestep}; this decoder runs t = {TIMESTEP} only"
        )
    fixed_prompt = hints.fixed_prompt if hints.fixed_prompt is not None else config.fixed_prompt
    caption = captioner and not opt_out and config.aux
    warning = None
    if captioner and not opt_out and not config.aux:
        warning = "the codec has no aux decoder, so there is nothing to caption; decoding with the fixed prompt alone"
    elif hints.captioner_id is not None and not captioner and not opt_out:
        warning = (
            f"this file was made for decoding with captions ({hints.captioner_id}) but no captioner is "
            f"given ({how_to_caption}); decoding with the fixed prompt alone"
        )
    return DecodePlan(timestep, fixed_prompt, caption, hints.captioner_id, Tiling(), warning)


def caption_each(captioner: Callable[[torch.Tensor], Sequence[str]], images: Iterable[torch.Tensor]) -> list[str]:
    """One caption per image, each image captioned on its own.

    Args:
        captioner: maps a batch [1, 3, H, W] in 0..1 to one caption (``Captioner.__call__``).
        images: x̂_aux of each file, [1, 3, H, W] (or [3, H, W]) in 0..1, cropped to the original size.
    """
    captions = []
    for image in images:
        (text,) = captioner(image if image.dim() == 4 else image[None])
        captions.append(text)
    return captions
