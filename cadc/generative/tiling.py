"""Latent tiling with blended seams, for the UNet and the VAE decoder on large images.

A latent [B, C, h, w] is cut into overlapping tiles (StableCodec: 96 with overlap 32 in latent
pixels); each tile goes through ``fn`` and the outputs are averaged with weights that ramp linearly
from ~0 to 1 across the overlap, so seams blend. ``fn`` may upscale by an integer factor (the VAE
decoder: 8), the weights are then computed at the output resolution.

Tiles see only their own context (the UNet's attention and the VAE's GroupNorm statistics are
per tile), so tiled output is close to, not equal to, untiled output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]


def tile_starts(length: int, tile: int, overlap: int, align: int = 8) -> list[int]:
    """Start offsets of tiles covering ``0..length`` with at least ~``overlap`` shared pixels.

    Starts are multiples of ``align`` (the UNet needs tile sizes and offsets on its 8-pixel grid) and
    spread evenly, the last tile ending at ``length``. A single tile when ``length <= tile``.
    """
    if length <= tile:
        return [0]
    if tile % align or length % align:
        raise ValueError(f"tile {tile} and length {length} must be multiples of {align}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile})")
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    starts = [round(i * (length - tile) / (n - 1) / align) * align for i in range(n)]
    if any(b - a > tile for a, b in itertools.pairwise(starts)):
        raise ValueError(f"tiles {tile} with overlap {overlap} leave gaps over {length}")
    return starts


def ramp(size: int, overlap: int) -> torch.Tensor:
    """1-D blend weights [size]: linear from 1/(2·overlap) up to 1 over ``overlap`` at both ends."""
    x = torch.arange(size, dtype=torch.float32) + 0.5
    if overlap <= 0:
        return torch.ones(size)
    return torch.minimum(x, x.flip(0)).div(overlap).clamp(max=1.0)


def tiled(
    fn: TileFn,
    x: torch.Tensor,
    tile: int,
    overlap: int,
    scale: int = 1,
    align: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Apply ``fn`` tile by tile and blend.

    Args:
        fn: maps [B, C, th, tw] to [B, C', th·scale, tw·scale].
        x: [B, C, h, w] input.
        tile, overlap: tile side and overlap in input pixels.
        scale: fn's integer upscaling factor.
        align: tile offsets are multiples of this.
        progress: called with (tiles done, tiles total) after each tile.

    Returns:
        [B, C', h·scale, w·scale] float32.
    """
    _, _, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap, align), tile_starts(w, tile, overlap, align)
    th, tw = min(tile, h), min(tile, w)
    wy, wx = ramp(th * scale, overlap * scale), ramp(tw * scale, overlap * scale)
    weight = (wy[:, None] * wx[None, :]).to(x.device)
    out: torch.Tensor | None = None
    norm = torch.zeros(h * scale, w * scale, device=x.device)
    total, done = len(ys) * len(xs), 0
    for y in ys:
        for x0 in xs:
            y_out = fn(x[:, :, y : y + th, x0 : x0 + tw]).float()
            if out is None:
                out = torch.zeros(x.shape[0], y_out.shape[1], h * scale, w * scale, device=x.device)
            sl = (slice(y * scale, (y + th) * scale), slice(x0 * scale, (x0 + tw) * scale))
            out[:, :, sl[0], sl[1]] += y_out * weight
            norm[sl] += weight
            done += 1
            if progress is not None:
                progress(done, total)
    assert out is not None
    return out / norm
