"""Classical baselines with resampling: Lanczos-downscale by f, code with Pillow, Lanczos-upscale back.

At CADC's rates (0.005–0.06 bpp) JPEG, WebP and AVIF cannot code a full-size image at all (AVIF's
lowest quality is ≈ 0.065 bpp on Kodak), but the same codec applied to a downscaled image can, and
that is the honest classical anchor there. For one image and one Pillow codec a :class:`RateLadder`
holds, for each factor f, the file size and PSNR of every quality from the lowest upwards:

    factor f ∈ FACTORS      coded size = (⌊W/f + ½⌋, ⌊H/f + ½⌋), Lanczos (Pillow, antialiased)
    quality q = q_min, q_min+1, …   stops once PATIENCE successive qualities all exceed the budget
    rate     bpp = 8 · len(whole file) / (W · H)       ← the ORIGINAL pixel count, not the coded one
    quality  PSNR of the 8-bit reconstruction upscaled back to W×H (Lanczos), against the original

:meth:`RateLadder.select` then returns, for a target bpp, the (f, q) with the best PSNR among those
whose whole file is ≤ the target, or, when nothing fits, the smallest file (``reached=False``).
The plain baselines are the same thing with ``factors=(1,)``. File size grows with quality in these
encoders except for rare one-step wiggles, which PATIENCE > 1 steps over; a larger quality that fits
again after PATIENCE misses in a row would be missed.

Ladders (sizes, payload sizes, PSNR) and the full scores of chosen points are cached per image as
JSON by :class:`LadderCache`, so a second run over the same images costs no encodes.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, features

from ..images import atomic_write_bytes
from .baselines import FACTORS, PillowCodec
from .payload import payload_size

PATIENCE = 2
CACHE_FORMAT = "cadc-rate-ladder/1"
_LIBRARY = {"JPEG": "libjpeg_turbo", "WEBP": "webp", "AVIF": "avif"}


def coded_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """(width, height) of the image coded at downscale ``factor`` (rounded half up, at least 1)."""
    return max(1, math.floor(width / factor + 0.5)), max(1, math.floor(height / factor + 0.5))


def resize_lanczos(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow's Lanczos (a = 3) resampling; antialiased when shrinking. No-op at the same size."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of equal shape (peak 255, mean over all samples)."""
    error = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if error == 0 else 10.0 * math.log10(255.0**2 / error)


@dataclass(frozen=True)
class Rung:
    """One coded version of the image: downscale factor, quality, whole-file and payload bytes, PSNR (dB)."""

    factor: int
    quality: int
    nbytes: int
    payload: int
    psnr: float


@dataclass(frozen=True)
class Choice:
    """What :meth:`RateLadder.select` picked for one target (bpp over the original pixels)."""

    factor: int
    quality: int
    coded_width: int
    coded_height: int
    nbytes: int
    bpp_file: float
    bpp_payload: float
    psnr: float
    target_bpp: float
    reached: bool

    @property
    def key(self) -> str:
        return f"{self.factor}/{self.quality}"


def encoder_identity(codec: PillowCodec) -> dict[str, Any]:
    """What must match for cached sizes to be reused: Pillow, the codec library, its options."""
    import PIL

    return {
        "format": codec.format,
        "options": codec.options,
        "pillow": PIL.__version__,
        "library": features.version(_LIBRARY[codec.format]),
        "factors": list(FACTORS),
        "patience": PATIENCE,
    }


@dataclass
class RateLadder:
    """Rungs of one image under one Pillow codec, grown on demand (see the module docstring).

    Args:
        codec: the Pillow codec (format, quality range, options).
        image: the original, 8-bit RGB.
        rungs: factor → rungs for qualities ``quality_min, quality_min + 1, …`` (contiguous).
        scores: ``"factor/quality"`` → full metric scores of that reconstruction (filled by callers).
    """

    codec: PillowCodec
    image: Image.Image
    rungs: dict[int, list[Rung]] = field(default_factory=dict)
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    encodes: int = 0

    def __post_init__(self) -> None:
        self.original = np.asarray(self.image)
        self.pixels = self.image.width * self.image.height
        self._downscaled: dict[int, Image.Image] = {}
        self._files: dict[tuple[int, int], bytes] = {}  # this run's encodes, until release()

    def bpp(self, nbytes: int) -> float:
        """Bits per ORIGINAL pixel of ``nbytes`` bytes."""
        return 8 * nbytes / self.pixels

    def _small(self, factor: int) -> Image.Image:
        if factor not in self._downscaled:
            self._downscaled[factor] = resize_lanczos(self.image, coded_size(*self.image.size, factor))
        return self._downscaled[factor]

    def encode(self, factor: int, quality: int) -> bytes:
        """The whole file for (factor, quality)."""
        self.encodes += 1
        return self.codec.encode(self._small(factor), quality)

    def reconstruct(self, data: bytes) -> np.ndarray:
        """Decode ``data`` and Lanczos-upscale it to the original size: uint8 [H, W, 3]."""
        with Image.open(io.BytesIO(data)) as decoded:
            small = decoded.convert("RGB")
        return np.asarray(resize_lanczos(small, self.image.size))

    def reconstruction(self, factor: int, quality: int) -> torch.Tensor:
        """The upscaled reconstruction of (factor, quality), [1, 3, H, W] in 0..1 (re-encoded if this
        run has not kept the file, e.g. when the rung came from the cache)."""
        data = self._files.get((factor, quality)) or self.encode(factor, quality)
        array = self.reconstruct(data).astype(np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()

    def release(self) -> None:
        """Drop the files and downscaled images kept in memory (the rungs stay)."""
        self._files.clear()
        self._downscaled.clear()

    def _covers(self, factor: int, target_bpp: float) -> bool:
        rungs = self.rungs.get(factor, [])
        if rungs and rungs[-1].quality >= self.codec.quality_max:
            return True
        tail = rungs[-PATIENCE:]
        return len(tail) == PATIENCE and all(self.bpp(r.nbytes) > target_bpp for r in tail)

    def grow(self, factors: tuple[int, ...], target_bpp: float) -> None:
        """Encode further qualities of each factor until the ladder covers ``target_bpp``."""
        for factor in factors:
            rungs = self.rungs.setdefault(factor, [])
            while not self._covers(factor, target_bpp):
                quality = rungs[-1].quality + 1 if rungs else self.codec.quality_min
                data = self._files[factor, quality] = self.encode(factor, quality)
                rungs.append(
                    Rung(
                        factor,
                        quality,
                        len(data),
                        payload_size(data, self.codec.format),
                        psnr_uint8(self.reconstruct(data), self.original),
                    )
                )

    def select(self, factors: tuple[int, ...], target_bpp: float) -> Choice:
        """Best PSNR with whole file ≤ ``target_bpp`` over ``factors`` (ties: fewer bytes, smaller factor);
        if nothing fits, the smallest file, flagged ``reached=False``."""
        self.grow(factors, target_bpp)
        candidates = [r for f in factors for r in self.rungs[f]]
        feasible = [r for r in candidates if self.bpp(r.nbytes) <= target_bpp]
        if feasible:
            best = min(feasible, key=lambda r: (-r.psnr, r.nbytes, r.factor, r.quality))
        else:
            best = min(candidates, key=lambda r: (r.nbytes, -r.psnr, r.factor, r.quality))
        width, height = coded_size(*self.image.size, best.factor)
        return Choice(
            best.factor,
            best.quality,
            width,
            height,
            best.nbytes,
            self.bpp(best.nbytes),
            self.bpp(best.payload),
            best.psnr,
            target_bpp,
            bool(feasible),
        )

    # -- JSON -------------------------------------------------------------------------------------
    def to_json(self, identity: dict[str, Any], image_id: str, scores_key: str) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "encoder": identity,
            "image": {"sha256": image_id, "width": self.image.width, "height": self.image.height},
            "rungs": {str(f): [[r.quality, r.nbytes, r.payload, r.psnr] for r in rs] for f, rs in self.rungs.items()},
            "scores_key": scores_key,
            "scores": self.scores,
        }


def image_id(image: Image.Image) -> str:
    """sha256 of the 8-bit RGB pixels and size (a changed file under the same name gets a new ladder)."""
    digest = hashlib.sha256(f"{image.width}x{image.height}".encode())
    digest.update(np.asarray(image).tobytes())
    return digest.hexdigest()


class LadderCache:
    """Ladders on disk: ``folder/<codec>/<image stem>.json``, one per (base codec, image).

    A cached file is used only if the encoder identity (Pillow, library version, options) and the
    image's pixels match; its scores only if ``scores_key`` (which metrics, which backbones) matches.
    ``folder=None`` keeps ladders in memory only.
    """

    def __init__(self, folder: str | os.PathLike[str] | None, scores_key: str) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.scores_key = scores_key
        self.loaded: dict[tuple[str, str], RateLadder] = {}

    def _path(self, name: str, stem: str) -> Path:
        assert self.folder is not None
        return self.folder / name / f"{stem}.json"

    def get(self, name: str, codec: PillowCodec, stem: str, image: Image.Image) -> RateLadder:
        """The ladder of ``image`` (named ``stem``) under base codec ``name``, from memory, disk or new."""
        key = (name, stem)
        if key in self.loaded:
            return self.loaded[key]
        ladder = RateLadder(codec, image)
        if self.folder is not None and self._path(name, stem).is_file():
            self._restore(ladder, json.loads(self._path(name, stem).read_text()), codec, image)
        self.loaded[key] = ladder
        return ladder

    def _restore(self, ladder: RateLadder, data: dict[str, Any], codec: PillowCodec, image: Image.Image) -> None:
        if data.get("format") != CACHE_FORMAT or data.get("encoder") != _jsonable(encoder_identity(codec)):
            return
        if data.get("image", {}).get("sha256") != image_id(image):
            return
        ladder.rungs = {
            int(f): [Rung(int(f), q, n, p, psnr) for q, n, p, psnr in rungs] for f, rungs in data["rungs"].items()
        }
        if data.get("scores_key") == self.scores_key:
            ladder.scores = data["scores"]

    def save(self, name: str, stem: str) -> None:
        """Write one ladder (atomically) if the cache has a folder."""
        if self.folder is None:
            return
        ladder = self.loaded[(name, stem)]
        data = ladder.to_json(_jsonable(encoder_identity(ladder.codec)), image_id(ladder.image), self.scores_key)
        path = self._path(name, stem)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(data) + "\n").encode())


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    """The value as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))
