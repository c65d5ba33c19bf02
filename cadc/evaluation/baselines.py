"""Classical baselines through Pillow: JPEG, WebP, AVIF, plain and resampled.

Each baseline codes an image at a target bpp, choosing per image the (downscale factor, quality)
with the best PSNR whose whole file is at most the target (:mod:`.resampled` does the search):

* ``jpeg``, ``webp``, ``avif``: full size only (factor 1), i.e. the highest quality that fits;
* ``jpeg-rs``, ``webp-rs``, ``avif-rs``: Lanczos-downscaled by a factor in :data:`FACTORS`, coded,
  Lanczos-upscaled back; the rate counts the whole file over the ORIGINAL pixels.

If nothing fits (JPEG's headers alone often exceed CADC's budget), the smallest file is used and
flagged ``reached=False``, so a baseline never silently gets fewer bits than it is shown with.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, features

FACTORS = (1, 2, 3, 4, 6, 8)
"""Downscale factors of the resampled baselines."""


@dataclass(frozen=True)
class PillowCodec:
    """A Pillow format with its quality range and fixed encoder options."""

    name: str
    format: str
    quality_min: int
    quality_max: int
    options: dict = field(default_factory=dict)

    def encode(self, image: Image.Image, quality: int) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=self.format, quality=quality, **self.options)
        return buffer.getvalue()


CODECS = {
    "jpeg": PillowCodec("JPEG", "JPEG", 1, 95, {"optimize": True}),  # 4:2:0, optimised Huffman tables
    "webp": PillowCodec("WebP", "WEBP", 0, 100, {"method": 6}),  # slowest, smallest
    "avif": PillowCodec("AVIF", "AVIF", 0, 100, {"speed": 4}),
}
_FEATURE = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}


@dataclass(frozen=True)
class Baseline:
    """A named baseline: its Pillow codec (``base``, a key of :data:`CODECS`) and downscale factors."""

    name: str
    base: str
    factors: tuple[int, ...]

    @property
    def label(self) -> str:
        """Legend text: ``"AVIF"`` or ``"AVIF (resampled)"``."""
        return CODECS[self.base].name + (" (resampled)" if self.factors != (1,) else "")


BASELINES = {name: Baseline(name, name, (1,)) for name in CODECS} | {
    f"{name}-rs": Baseline(f"{name}-rs", name, FACTORS) for name in CODECS
}


def available(name: str) -> bool:
    """Whether Pillow can write the codec of baseline ``name``: built in (``PIL.features``), or for AVIF
    on Pillow < 11.2 through the ``pillow-avif-plugin`` package when it is installed."""
    base = BASELINES[name].base
    if features.check(_FEATURE[base]):
        return True
    if base == "avif":
        try:
            import pillow_avif  # noqa: F401  (registers the AVIF plugin with Pillow)
        except ImportError:
            return False
        return "AVIF" in Image.SAVE
    return False


def parse_baselines(text: str) -> list[str]:
    """``"jpeg,avif-rs"`` → ``["jpeg", "avif-rs"]``; unknown names raise ValueError, "" gives []."""
    names = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return list(dict.fromkeys(names))


def to_pil_rgb8(x: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] in 0..1 → 8-bit RGB PIL image."""
    array = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")
