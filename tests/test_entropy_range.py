"""Entropy coding over the whole model range: every σ of the scale table, means far from zero and
symbols that the tables cannot hold (escapes), in ŷ and in ẑ.

The codec's entropy parameters are set by hand so that the test knows what is coded: g_a is
replaced by a fixed latent y (ŷ = round(y), UGAQ off), every context network's last layer gets
zero weights and a bias holding μ and σ per (quadtree step, channel), and h_a's last layer a bias
that puts ẑ where the test wants it. The 4 steps × 32 channels get σ log-spaced from half the
smallest table entry to twice the largest, so every CDF table is used (checked on the indexes the
coder actually received).

Checks: the decoder returns ŷ exactly, and the coded size stays within the rANS framing of the
estimate: ``bits_actual ≤ 1.005 · bits_estimated + 96`` (64-bit final state, 32-bit words) and
``bits_actual ≥ 0.97 · bits_estimated``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import cadc.model
from cadc.config import get_preset
from cadc.entropy import CdfTables
from cadc.model import CADCCodec, CompressedImage
from cadc.quadtree import NUM_STEPS, step_masks
from cadc.weights import build_tiny_random

GRID = (16, 16)
"""y's grid: 64 elements per (step, channel) pair, 8192 ŷ symbols."""
MAX_ESCAPE = 2**23
"""Largest |ŷ − round(μ)| planted (6 bypass words); ŷ must stay exact in float32 (|ŷ| ≤ 2**24)."""


class FixedLatent(nn.Module):
    """Stands in for g_a: returns the same y [1, Cy, h, w] for any image of the matching size."""

    def __init__(self, y: torch.Tensor) -> None:
        super().__init__()
        self.y = nn.Parameter(y.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.y.to(x.dtype).expand(x.shape[0], -1, -1, -1)


@dataclass
class Coded:
    """One controlled image, coded: what the coder was given and what came out."""

    codec: CADCCodec
    y_hat: torch.Tensor  # [1, Cy, h, w] the planted ŷ
    compressed: CompressedImage
    runs: list[tuple[torch.Tensor, torch.Tensor, CdfTables]]  # (symbols, indexes, tables) per encode call

    @property
    def y_runs(self) -> list[tuple[torch.Tensor, torch.Tensor, CdfTables]]:
        return self.runs[1:]  # the first run is ẑ

    def escapes(self, runs: list[tuple[torch.Tensor, torch.Tensor, CdfTables]]) -> int:
        """Symbols the tables cannot hold (coded as the sentinel + bypass words)."""
        count = 0
        for symbols, indexes, tables in runs:
            u = symbols.long() - torch.tensor(tables.offsets)[indexes.long()]
            count += int(((u < 0) | (u >= torch.tensor(tables.lengths)[indexes.long()] - 2)).sum())
        return count


def sigma_grid(codec: CADCCodec) -> torch.Tensor:
    """σ [4, Cy] log-spaced from half the smallest table entry to twice the largest."""
    table = codec.gaussian_conditional.scale_table
    count = NUM_STEPS * codec.config.y_channels
    low, high = math.log(float(table[0]) / 2), math.log(float(table[-1]) * 2)
    return torch.exp(torch.linspace(low, high, count, dtype=torch.float64)).reshape(NUM_STEPS, -1)


def far_means(codec: CADCCodec, generator: torch.Generator, reach: float) -> torch.Tensor:
    """μ [4, Cy]: uniform in ±reach with fractional parts (round(μ) matters), float32-representable."""
    shape = (NUM_STEPS, codec.config.y_channels)
    means = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * reach
    return means.float().double()


def set_context(codec: CADCCodec, means: torch.Tensor, sigmas: torch.Tensor) -> None:
    """Every context step predicts μ = means[k], σ = sigmas[k] per channel, whatever it sees."""
    channels = codec.config.y_channels
    with torch.no_grad():
        for k, step in enumerate(codec.context.steps):
            step[-1].weight.zero_()
            step[-1].bias[:channels] = means[k].float()
            step[-1].bias[channels:] = sigmas[k].float()


def set_z(codec: CADCCodec, offsets: torch.Tensor) -> None:
    """h_a outputs medians + ``offsets`` [Cz] everywhere, so the ẑ symbols are round(offsets)."""
    with torch.no_grad():
        last = codec.h_a.net[-1]
        last.weight.zero_()
        last.bias.copy_(codec.entropy_bottleneck.quantiles[:, 0, 1] + offsets)


def sample_y_hat(
    codec: CADCCodec, means: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator, escape_rate: float
) -> torch.Tensor:
    """ŷ [1, Cy, h, w] drawn from N(μ, σ) of each element's step and channel; a fraction
    ``escape_rate`` is instead put 12σ + 10^U(0, 7) (capped at MAX_ESCAPE) away from μ."""
    channels = codec.config.y_channels
    masks = step_masks(channels, *GRID)
    y_hat = torch.zeros(1, channels, *GRID, dtype=torch.float64)
    for k in range(NUM_STEPS):
        mu, sigma = means[k].reshape(-1, 1, 1), sigmas[k].reshape(-1, 1, 1)
        values = mu + sigma * torch.randn(channels, *GRID, generator=generator, dtype=torch.float64)
        distance = 12 * sigma + 10 ** (7 * torch.rand(channels, *GRID, generator=generator, dtype=torch.float64))
        sign = torch.where(torch.rand(channels, *GRID, generator=generator) < 0.5, -1.0, 1.0).double()
        outlier = mu.round() + sign * distance.clamp(max=MAX_ESCAPE - 1)
        escape = torch.rand(channels, *GRID, generator=generator) < escape_rate
        y_hat[0][masks[k]] = torch.where(escape, outlier, values).round()[masks[k]]
    return y_hat


def plant_table_edges(codec: CADCCodec, y_hat: torch.Tensor, means: torch.Tensor, sigmas: torch.Tensor) -> None:
    """Put symbols exactly at the edges of their tables: the last in-table value, the sentinel value
    itself (an escape with raw value 0) and one below the table (raw value 1), in every step."""
    channels = codec.config.y_channels
    gc = codec.gaussian_conditional
    index, _, means_hat = gc.snap(sigmas, means)
    offsets, lengths = gc._offset.long(), gc._cdf_length.long()
    masks = step_masks(channels, *GRID)
    for k in range(NUM_STEPS):
        for channel, u in zip((0, 1, 2), (lengths - 3, lengths - 2, torch.full_like(lengths, -1)), strict=True):
            i = int(index[k, channel])
            rows, cols = torch.nonzero(masks[k, channel], as_tuple=True)
            y_hat[0, channel, rows[0], cols[0]] = means_hat[k, channel] + offsets[i] + u[i]


def code(
    codec: CADCCodec, y_hat: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> Coded:
    """Compress an image through ``codec`` whose g_a yields ``y_hat``, recording every run the
    coder receives, and check that decompress returns ŷ exactly."""
    codec.g_a = FixedLatent(y_hat.float())
    runs: list[tuple[torch.Tensor, torch.Tensor, CdfTables]] = []
    encode = cadc.model.StreamEncoder.encode

    def recording(self, symbols: torch.Tensor, indexes: torch.Tensor, tables: CdfTables) -> None:
        runs.append((symbols.reshape(-1).clone(), indexes.reshape(-1).clone(), tables))
        encode(self, symbols, indexes, tables)

    monkeypatch.setattr(cadc.model.StreamEncoder, "encode", recording)
    # g_a is a stand-in, so it runs whole (tiling needs the real transform's receptive field)
    compressed = codec.compress(torch.zeros(1, 3, 64 * GRID[0], 64 * GRID[1]), tile_bytes=None)[0]
    assert torch.equal(compressed.y_hat.double(), y_hat), "compress did not code the planted ŷ"
    decoded = codec.decompress(compressed.payload, compressed.y_shape, compressed.z_shape, aux=False)
    assert torch.equal(decoded.y_hat.double(), y_hat), "decoded ŷ differs from the coded one"
    return Coded(codec, y_hat, compressed, runs)


def controlled_codec(seed: int, reach: float, z_offsets: torch.Tensor | None = None):
    codec = build_tiny_random(get_preset("tiny").replace(ugaq=False))
    generator = torch.Generator().manual_seed(seed)
    sigmas = sigma_grid(codec)
    means = far_means(codec, generator, reach)
    set_context(codec, means, sigmas)
    set_z(codec, torch.zeros(codec.config.z_channels) if z_offsets is None else z_offsets)
    return codec, means, sigmas, generator


def assert_rate_within_framing(compressed: CompressedImage) -> None:
    bits_actual = 8 * len(compressed.payload)
    estimated = compressed.bits_estimated
    assert bits_actual <= 1.005 * estimated + 96, (bits_actual, estimated)
    assert bits_actual >= 0.97 * estimated, (bits_actual, estimated)


@pytest.mark.parametrize("reach", [0.0, 3000.0, 2.0**20])
def test_every_scale_of_the_table_round_trips_at_the_estimated_rate(monkeypatch, reach):
    codec, means, sigmas, generator = controlled_codec(seed=1, reach=reach)
    coded = code(codec, sample_y_hat(codec, means, sigmas, generator, escape_rate=0.0), monkeypatch)
    used = torch.cat([indexes for _, indexes, _ in coded.y_runs]).unique()
    assert used.tolist() == list(range(codec.config.num_scales)), "some CDF tables were never exercised"
    # each table carries a fair share of the symbols: the smallest count is at least 32 (of 8192)
    counts = torch.bincount(torch.cat([indexes for _, indexes, _ in coded.y_runs]).long())
    assert int(counts.min()) >= 32
    assert coded.escapes(coded.y_runs) < 20  # Gaussian samples stay (almost always) inside the tables
    assert_rate_within_framing(coded.compressed)


@pytest.mark.parametrize("escape_rate", [0.01, 0.05, 0.25])
def test_escapes_in_y_round_trip_and_are_priced(monkeypatch, escape_rate):
    codec, means, sigmas, generator = controlled_codec(seed=2, reach=5000.0)
    y_hat = sample_y_hat(codec, means, sigmas, generator, escape_rate)
    plant_table_edges(codec, y_hat, means, sigmas)
    coded = code(codec, y_hat, monkeypatch)
    escapes = coded.escapes(coded.y_runs)
    assert escapes >= 0.8 * escape_rate * y_hat.numel(), escapes
    assert (coded.y_hat - coded.y_hat.round()).abs().max() == 0
    assert max(float(symbols.abs().max()) for symbols, _, _ in coded.y_runs) > 2**20  # up to 6 bypass words
    assert_rate_within_framing(coded.compressed)


def test_escapes_in_z_round_trip_and_are_priced(monkeypatch):
    """ẑ outside the factorized model's range in most channels, both signs, up to 3.5·10⁶."""
    z_channels = get_preset("tiny").z_channels
    offsets = torch.tensor([(-1) ** c * 4.0 ** (c % 11) * 3.3 for c in range(z_channels)])
    codec, means, sigmas, generator = controlled_codec(seed=3, reach=100.0, z_offsets=offsets)
    coded = code(codec, sample_y_hat(codec, means, sigmas, generator, escape_rate=0.0), monkeypatch)
    assert coded.escapes(coded.runs[:1]) >= coded.runs[0][0].numel() // 2
    assert int(coded.runs[0][0].abs().max()) > 2**20
    assert_rate_within_framing(coded.compressed)
