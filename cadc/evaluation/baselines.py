"""Classical baselines through Pillow (JPEG, WebP, AVIF) at a matched bitrate.

For each image and target, :func:`match_bpp` binary-searches the integer quality for the highest
one whose WHOLE file (headers included) is at most the target bpp, i.e. the baseline never gets
more bits than CADC. If even the lowest quality is larger, that lowest-quality file is returned with
``reached=False`` (at CADC's ultra-low rates JPEG's headers alone often exceed the budget).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, features


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

    @staticmethod
    def decode(data: bytes) -> torch.Tensor:
        """File bytes → [1, 3, H, W] float32 in 0..1."""
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


CODECS = {
    "jpeg": PillowCodec("JPEG", "JPEG", 1, 95, {"optimize": True}),  # 4:2:0, optimised Huffman tables
    "webp": PillowCodec("WebP", "WEBP", 0, 100, {"method": 6}),  # slowest, smallest
    "avif": PillowCodec("AVIF", "AVIF", 0, 100, {"speed": 4}),
}
_FEATURE = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}


def available(name: str) -> bool:
    """Whether this Pillow build can write ``name`` (``PIL.features``)."""
    return bool(features.check(_FEATURE[name]))


def parse_baselines(text: str) -> list[str]:
    """``"jpeg,webp"`` → ``["jpeg", "webp"]``; unknown names raise ValueError, "" gives []."""
    names = [item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [n for n in names if n not in CODECS]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(CODECS)}")
    return names


def to_pil_rgb8(x: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] in 0..1 → 8-bit RGB PIL image."""
    array = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


@dataclass(frozen=True)
class Match:
    """Result of :func:`match_bpp`: the chosen quality, its file, its bpp (whole file) and whether
    it is within the target; ``encodes`` counts the encoder calls this search made."""

    quality: int
    data: bytes
    bpp: float
    reached: bool
    encodes: int


def match_bpp(
    codec: PillowCodec, image: Image.Image, target_bpp: float, cache: dict[int, bytes] | None = None
) -> Match:
    """Highest quality whose whole file is ≤ ``target_bpp`` (bits per pixel), by binary search.

    Assumes file size grows with quality (true for these encoders up to rare one-step wiggles).
    ``cache`` (quality → bytes) lets several targets for the same image and codec share encodes.
    """
    cache = {} if cache is None else cache
    pixels = image.width * image.height
    encodes = 0

    def bpp(quality: int) -> float:
        nonlocal encodes
        if quality not in cache:
            cache[quality] = codec.encode(image, quality)
            encodes += 1
        return 8 * len(cache[quality]) / pixels

    low, high = codec.quality_min, codec.quality_max
    if bpp(low) > target_bpp:
        return Match(low, cache[low], bpp(low), False, encodes)
    while low < high:  # invariant: bpp(low) <= target
        middle = (low + high + 1) // 2
        if bpp(middle) <= target_bpp:
            low = middle
        else:
            high = middle - 1
    return Match(low, cache[low], bpp(low), True, encodes)
