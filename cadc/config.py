"""Codec configuration: one frozen dataclass, serialised as JSON next to the weights.

Two presets ship with the code:

* ``sd-turbo`` — the paper's sizes: y has 320 channels at 1/64 resolution, z 320 channels at
  1/256, l_T 320 channels at 1/8 (the SD-Turbo latent grid).
* ``photo`` — the shipped CPU-trainable family (about 2.4 M parameters): wide enough for real
  photographs at 0.01–0.06 bpp, small enough to train on a 2-core CPU in under an hour per rate.
* ``tiny`` — the same graph with a few channels, for tests and demos.

Parameter counts (``CADCCodec(get_preset(name)).parameter_counts()``) are listed in README.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

BLIP_CAPTIONER_ID = "Salesforce/blip-image-captioning-base"
"""The frozen captioner of BFATC (paper: BLIP base)."""

FIXED_PROMPT = (
    "A high-resolution, 8K, ultra-realistic image with sharp focus, vibrant colors, and natural lighting"
)
"""The paper's fixed prompt c_fix (BFATC), joined after the BLIP caption."""


@dataclass(frozen=True)
class CodecConfig:
    """Sizes and switches of one CADC codec.

    Attributes:
        name: preset or model family name, part of the model id written into ``.cadc`` files.
        ga_widths: output channels of g_a's six stride-2 stages (x → y is 64× down); the last
            entry must equal ``y_channels``.
        ga_blocks: residual blocks after each of g_a's stages.
        y_channels: channels of y (paper: 320). Must be divisible by 4 (quadtree channel groups).
        z_channels: channels of the hyper-latent z (paper: 320).
        hyper_width: hidden width of h_a and h_s.
        ctx_width: hidden width of each of the four quadtree context networks.
        ugaq_width: hidden width of the UGAQ network f_u.
        latent_channels: channels of l_T on the SD latent grid (paper: 320; the first 4 are the
            noisy SD latent the UNet denoises).
        gs_widths: output channels of g_s's three ×2 upsampling stages (1/64 → 1/8); the last
            entry must equal ``latent_channels``.
        gs_blocks: residual blocks after each of g_s's stages.
        aux_widths: channels of g_aux's three ×2 upsampling stages (1/8 → 1/1 after a final
            conv to RGB). g_aux is deliberately light (ADGIC).
        ugaq: content-adaptive quantization (UGAQ). False gives isotropic rounding (m = 1).
        aux: build g_aux (ADGIC). False drops it; decompress then returns no x̂_aux.
        num_scales, scale_min, scale_max: the log-spaced table of Gaussian σ used for coding.
        rate_tag: free text identifying the rate point of the weights, e.g. ``"lambda=2"``.
        denoise_timestep: timestep of the one-step UNet pass (paper: 999).
        captioner_id: captioner the decoder uses for BFATC; written into every file as a hint.
            None: the model's UNet step was not trained with captions (codec-only or Stage I
            models, ablations without BFATC), so its files name no captioner and decoding them
            without one raises no warning.
        fixed_prompt: c_fix, appended to the caption.
    """

    name: str
    ga_widths: tuple[int, ...]
    ga_blocks: tuple[int, ...]
    y_channels: int
    z_channels: int
    hyper_width: int
    ctx_width: int
    ugaq_width: int
    latent_channels: int
    gs_widths: tuple[int, ...]
    gs_blocks: tuple[int, ...]
    aux_widths: tuple[int, ...]
    ugaq: bool = True
    aux: bool = True
    num_scales: int = 64
    scale_min: float = 0.11
    scale_max: float = 256.0
    rate_tag: str = "untrained"
    denoise_timestep: int = 999
    captioner_id: str | None = BLIP_CAPTIONER_ID
    fixed_prompt: str = FIXED_PROMPT
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (len(self.ga_widths) == 6, "ga_widths needs 6 stages (64x downsampling)"),
            (len(self.ga_blocks) == 6, "ga_blocks needs 6 entries"),
            (self.ga_widths[-1] == self.y_channels, "ga_widths[-1] must equal y_channels"),
            (self.y_channels % 4 == 0, "y_channels must be divisible by 4 (quadtree channel groups)"),
            (len(self.gs_widths) == 3, "gs_widths needs 3 stages (1/64 -> 1/8)"),
            (len(self.gs_blocks) == 3, "gs_blocks needs 3 entries"),
            (self.gs_widths[-1] == self.latent_channels, "gs_widths[-1] must equal latent_channels"),
            (self.latent_channels >= 4, "latent_channels must be >= 4 (l_T[:, :4] is the SD latent)"),
            (len(self.aux_widths) == 3, "aux_widths needs 3 stages (1/8 -> 1/1)"),
            (0 < self.scale_min < self.scale_max, "need 0 < scale_min < scale_max"),
            (self.num_scales >= 2, "num_scales must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid CodecConfig {self.name!r}: {message}")

    @property
    def model_id(self) -> str:
        """Short id written into ``.cadc`` headers, e.g. ``cadc-sd-turbo``."""
        return f"cadc-{self.name}"

    def replace(self, **changes: Any) -> CodecConfig:
        """A copy with some fields changed (e.g. ``ugaq=False`` for the M0 ablation)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CodecConfig:
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CodecConfig fields {unknown}: written by a newer CADC version?")
        for key in ("ga_widths", "ga_blocks", "gs_widths", "gs_blocks", "aux_widths"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


PRESETS: dict[str, CodecConfig] = {
    "sd-turbo": CodecConfig(
        name="sd-turbo",
        ga_widths=(64, 128, 192, 256, 320, 320),
        ga_blocks=(0, 1, 1, 2, 2, 2),
        y_channels=320,
        z_channels=320,
        hyper_width=320,
        ctx_width=384,
        ugaq_width=192,
        latent_channels=320,
        gs_widths=(320, 320, 320),
        gs_blocks=(2, 2, 1),
        aux_widths=(64, 32, 16),
    ),
    "photo": CodecConfig(
        name="photo",
        ga_widths=(16, 32, 48, 64, 96, 96),
        ga_blocks=(0, 0, 1, 1, 1, 1),
        y_channels=96,
        z_channels=48,
        hyper_width=64,
        ctx_width=48,
        ugaq_width=48,
        latent_channels=32,
        gs_widths=(96, 64, 32),
        gs_blocks=(1, 1, 1),
        aux_widths=(64, 32, 16),
    ),
    "tiny": CodecConfig(
        name="tiny",
        ga_widths=(8, 12, 16, 24, 32, 32),
        ga_blocks=(0, 0, 1, 1, 1, 1),
        y_channels=32,
        z_channels=16,
        hyper_width=32,
        ctx_width=32,
        ugaq_width=16,
        latent_channels=16,
        gs_widths=(32, 24, 16),
        gs_blocks=(1, 1, 1),
        aux_widths=(16, 12, 8),
    ),
}


def get_preset(name: str) -> CodecConfig:
    """Return a preset by name (``sd-turbo``, ``photo`` or ``tiny``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
