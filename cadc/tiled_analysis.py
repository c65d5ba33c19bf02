"""Bounded-memory g_a: the analysis transform evaluated over overlapping tiles.

Why: g_a's activations near full resolution are wide. In the ``sd-turbo`` preset the GatedBlock of
stage 2 expands 128 channels to 512 at 1/4 of the image side (32 values per image pixel, 256 bytes
in the exact float64 mode), so an untiled 24 MP photo needs about 6 GiB for that one tensor and
the whole encode ~1 KB per pixel. y itself is small (320 values per 64×64 pixels), so h_a and f_u,
which run on y, need no tiling: only g_a does.

Receptive field (computed, not assumed): :func:`footprint` maps an output index i of a chain of
convolutions to the input interval it reads, [S·i − before, S·i + S − 1 + after], by pushing the
interval back through every layer (a k×k convolution with stride s, padding p and dilation d reads
[s·a − p, s·b − p + d·(k − 1)] for outputs [a, b]; a residual block reads the hull of its branch and
its input). For the ``sd-turbo`` g_a this gives before = 771, after = 708 image pixels: one y
element depends on a 1543-pixel-wide window. Tiling the whole of g_a with such halos would
recompute most of the image, so g_a is split into *segments* (consecutive stages; a segment grows
while its halo stays within ``max_halo`` image pixels): for ``sd-turbo`` stages 1-3 (stride 8, halo
43 px), then stage 4, 5 and 6 alone. Each segment runs tile by tile over the stored output of the
previous one; the stored maps shrink fast (24 bytes per image pixel after stage 3 in float64).

Tiles: output cores split each axis evenly; a tile's input is its core's receptive field, widened
to the segment's stride grid (so every layer samples the same positions as on the whole image) and
clipped at the image border (where the zero padding is then the whole image's own). Every output
kept from a tile therefore depends only on inputs the tile holds: tiled and untiled g_a compute the
same function.

Exactness: the same function, but not always the same float rounding. PyTorch's float64 CPU
convolution hands 1×1 convolutions to MKL's GEMM, whose blocking (hence summation order) depends
on the matrix size: the same output position computed in a smaller tile can differ in the last bit
(measured: up to 5e-16 absolute on O(1) activations). So tiled and untiled y agree to ~1e-15, and
ŷ = round(y / m) agrees unless an element sits within ~1e-15 of a rounding boundary (about 1e-15
per element; never seen in the tests). Determinism is unaffected: the tile plan depends only on
the image size, ``tile_bytes`` and ``max_halo``, and float64 convolutions are bit-identical across
thread counts, so the same image still gives a byte-identical file. Every file is decodable
whatever ŷ the encoder chose: the decoder reads ŷ from the stream and never recomputes g_a.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers import GatedBlock
from .transforms import AnalysisTransform

TILE_BYTES = 256 * 2**20
"""Default budget for the widest activation of one tile (bytes). A tile's transient memory is about
three times this (a GatedBlock holds its expansion, the gated product and the depthwise output at
once): ~0.8 GiB, whatever the image size."""
MAX_HALO = 64
"""Default largest halo (image pixels per side) a segment of g_a may need; see the module docstring."""


@dataclass(frozen=True)
class Footprint:
    """Input positions read by output index i of a layer chain, along one axis.

    Output i reads input positions ``stride·i − before`` … ``stride·i + stride − 1 + after``.
    """

    stride: int
    before: int
    after: int


Interval = tuple[int, int]
"""Inclusive [first, last] index range along one axis."""


def _conv_params(module: nn.Module) -> tuple[int, int, int, int] | None:
    """(kernel, stride, padding, dilation) along the height axis of a convolution-like module.

    Anything with ``kernel_size`` and ``padding`` counts (``nn.Conv2d`` and the exact encoder's
    shift-and-add depthwise convolution, which has stride and dilation 1). Only square, symmetric
    settings are accepted, so one axis describes both.
    """
    if not hasattr(module, "kernel_size") or not hasattr(module, "padding"):
        return None
    pairs = [getattr(module, name, (1, 1)) for name in ("kernel_size", "stride", "padding", "dilation")]
    if any(isinstance(p, str) or p[0] != p[1] for p in pairs):
        raise TypeError(f"no receptive-field rule for {module!r} (non-square or string padding)")
    kernel, stride, padding, dilation = (int(p[0]) for p in pairs)
    return kernel, stride, padding, dilation


def _children(module: nn.Module) -> list[nn.Module]:
    """Sub-layers of a plain chain, in forward order; TypeError for anything else."""
    if isinstance(module, nn.Sequential):
        return list(module)
    if isinstance(module, GatedBlock):
        return [module.fc1, module.dwconv, module.fc2]
    if isinstance(module, AnalysisTransform):  # its input scaling 2x - 1 is element-wise
        return list(module.stages)
    raise TypeError(f"no receptive-field rule for {type(module).__name__}")


def _elementwise(module: nn.Module) -> bool:
    return isinstance(module, (nn.GELU, nn.Identity, nn.ReLU, nn.SiLU))


def input_interval(module: nn.Module, interval: Interval) -> Interval:
    """The input positions that output positions ``interval`` of ``module`` read (one axis).

    Supports convolutions, element-wise activations, ``nn.Sequential`` chains, GatedBlocks (the
    hull of the residual input and the branch) and ``AnalysisTransform`` (its stages; the input
    scaling ``2x − 1`` is element-wise). Raises TypeError for any other module rather than guess.
    """
    first, last = interval
    conv = _conv_params(module)
    if conv is not None:
        kernel, stride, padding, dilation = conv
        return stride * first - padding, stride * last - padding + dilation * (kernel - 1)
    if _elementwise(module):
        return interval
    lo, hi = first, last
    for child in reversed(_children(module)):
        lo, hi = input_interval(child, (lo, hi))
    if isinstance(module, GatedBlock):  # residual: x + branch(x)
        return min(lo, first), max(hi, last)
    return lo, hi


def _stride(module: nn.Module) -> int:
    conv = _conv_params(module)
    if conv is not None:
        return conv[1]
    if _elementwise(module):
        return 1
    return math.prod(_stride(child) for child in _children(module))


def footprint(module: nn.Module) -> Footprint:
    """The receptive field of ``module``'s outputs along one axis (see :class:`Footprint`)."""
    stride = _stride(module)
    lo, hi = input_interval(module, (0, 0))
    return Footprint(stride=stride, before=-lo, after=hi - (stride - 1))


def widest_activation(module: nn.Module, in_channels: int) -> float:
    """The widest tensor ``module`` makes, in values per *input* position (its input included).

    E.g. a stride-2 convolution to 64 channels followed by a 1×1 convolution to 512 channels gives
    max(in_channels, 64/4, 512/4). Used to size tiles from a byte budget.
    """
    widest, scale = float(in_channels), 1.0

    def walk(m: nn.Module) -> None:
        nonlocal widest, scale
        conv = _conv_params(m)
        if conv is not None:
            scale /= conv[1] ** 2
            widest = max(widest, m.weight.shape[0] * scale)
        elif not _elementwise(m):
            for child in _children(m):
                walk(child)

    walk(module)
    return widest


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis: input positions ``[start, stop)``; its outputs ``keep`` are the whole
    map's outputs ``[out_start, out_stop)``."""

    start: int
    stop: int
    out_start: int
    out_stop: int
    keep: slice


def axis_tiles(length: int, fp: Footprint, max_input: int) -> list[AxisTile]:
    """Tiles covering an axis of ``length`` input positions (a multiple of ``fp.stride``).

    Output positions are split into equal cores, as few as keep every tile's input (core plus
    halos, on the stride grid) within ``max_input`` positions; a core has at least one output.
    """
    s = fp.stride
    if length % s:
        raise ValueError(f"axis length {length} is not a multiple of the stride {s}")
    outputs = length // s
    halo = -(-fp.before // s) * s + -(-fp.after // s) * s
    per_tile = max(1, (max_input - halo) // s)
    count = -(-outputs // per_tile)
    bounds = [round(i * outputs / count) for i in range(count + 1)]
    tiles = []
    for first, stop in itertools.pairwise(bounds):
        start = max(0, (s * first - fp.before) // s * s)
        end = min(length, -(-(s * stop + fp.after) // s) * s)
        tiles.append(AxisTile(start, end, first, stop, slice(first - start // s, stop - start // s)))
    return tiles


@dataclass(frozen=True)
class Segment:
    """Consecutive stages of g_a run together over tiles."""

    layers: nn.Sequential
    footprint: Footprint
    widest: float  # values per input position (see widest_activation)


def plan_segments(analysis: nn.Module, max_halo: int = MAX_HALO) -> list[Segment]:
    """Group g_a's stages into segments whose halo stays within ``max_halo`` image pixels.

    A segment starting at image stride ``r`` with footprint ``fp`` needs ``r·max(fp.before,
    fp.after)`` image pixels of halo; a stage that alone exceeds ``max_halo`` forms its own segment.
    """
    stages = _children(analysis)
    channels = _in_channels(stages[0])
    segments: list[Segment] = []
    current: list[nn.Module] = []
    image_stride = 1

    def close() -> None:
        nonlocal channels, image_stride
        layers = nn.Sequential(*current)
        fp = footprint(layers)
        segments.append(Segment(layers, fp, widest_activation(layers, channels)))
        channels = _out_channels(layers)
        image_stride *= fp.stride
        current.clear()

    for stage in stages:
        candidate = footprint(nn.Sequential(*current, stage))
        if current and image_stride * max(candidate.before, candidate.after) > max_halo:
            close()
        current.append(stage)
    close()
    return segments


def _convs(module: nn.Module) -> Iterator[nn.Module]:
    if _conv_params(module) is not None:
        yield module
    elif not _elementwise(module):
        for child in _children(module):
            yield from _convs(child)


def _in_channels(module: nn.Module) -> int:
    return int(next(_convs(module)).weight.shape[1])


def _out_channels(module: nn.Module) -> int:
    """Output channels of a chain: its last convolution's (residual blocks keep their width)."""
    return int(list(_convs(module))[-1].weight.shape[0])


def segment_tiles(
    segment: Segment, height: int, width: int, tile_bytes: int, bytes_per_value: float
) -> tuple[list[AxisTile], list[AxisTile]]:
    """Row and column tiles of ``segment`` over an input of ``height`` × ``width`` positions.

    Tiles are square-ish with at most ``tile_bytes / (bytes_per_value · widest)`` input positions
    (``bytes_per_value``: the element size), so the widest activation of one image fits the budget.
    """
    positions = tile_bytes / (bytes_per_value * segment.widest)
    side = max(segment.footprint.stride, math.isqrt(int(positions)))
    return axis_tiles(height, segment.footprint, side), axis_tiles(width, segment.footprint, side)


def run_tiled(
    layers: nn.Module,
    x: torch.Tensor,
    tiles: tuple[Sequence[AxisTile], Sequence[AxisTile]],
    stride: int,
    prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> torch.Tensor:
    """``layers(prepare(x))`` computed tile by tile.

    Args:
        layers: a chain with stride ``stride``, [B, C, H, W] → [B, C', H/stride, W/stride].
        x: [B, C, H, W]; read one tile at a time.
        tiles: (row tiles, column tiles) from :func:`axis_tiles` with ``layers``' footprint.
        prepare: applied to each input tile first (e.g. a cast to the network's device and dtype).

    Returns:
        [B, C', H/stride, W/stride] in the dtype and on the device ``layers`` produce.
    """
    out: torch.Tensor | None = None
    for row, col in itertools.product(*tiles):
        tile = layers(prepare(x[:, :, row.start : row.stop, col.start : col.stop]))
        if out is None:
            out = tile.new_empty((x.shape[0], tile.shape[1], x.shape[-2] // stride, x.shape[-1] // stride))
        out[:, :, row.out_start : row.out_stop, col.out_start : col.out_stop] = tile[:, :, row.keep, col.keep]
        del tile
    assert out is not None
    return out


def tiled_analysis(
    analysis: AnalysisTransform,
    x: torch.Tensor,
    tile_bytes: int = TILE_BYTES,
    max_halo: int = MAX_HALO,
    segments: Sequence[Segment] | None = None,
) -> torch.Tensor:
    """y = g_a(x) with bounded memory (see the module docstring).

    Args:
        analysis: g_a (an ``AnalysisTransform``, possibly a float64 copy).
        x: [B, 3, H, W] in 0..1 on any device and dtype (H, W multiples of g_a's stride); each tile
            is cast to ``analysis``' device and dtype when it is read, so x is never copied whole.
        tile_bytes: budget for the widest activation of one tile, per image: the plan, hence every
            rounding, is the same whatever the batch an image is encoded in.
        max_halo: see :func:`plan_segments`.
        segments: a precomputed :func:`plan_segments` result (must belong to ``analysis``).

    Returns:
        y [B, Cy, H/64, W/64] in ``analysis``' dtype, on its device.
    """
    param = next(analysis.parameters())
    plan = list(segments) if segments is not None else plan_segments(analysis, max_halo)
    bytes_per_value = param.element_size()
    h = x
    for index, segment in enumerate(plan):
        tiles = segment_tiles(segment, h.shape[-2], h.shape[-1], tile_bytes, bytes_per_value)
        prepare = (
            (lambda t: analysis.scale_input(t.to(device=param.device, dtype=param.dtype)))
            if index == 0
            else (lambda t: t)
        )
        h = run_tiled(segment.layers, h, tiles, segment.footprint.stride, prepare)
    return h
