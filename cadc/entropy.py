"""Entropy models and the single-stream rANS coder.

``SnappedGaussianConditional`` is CompressAI's Gaussian conditional with one change: the scale σ
is snapped *up* to the coding table and the mean μ rounded to an integer in training too
(straight-through), so the rate the model is trained and evaluated on is the rate the coder
spends. ŷ is already integer (UGAQ rounds y / m), so a symbol is ŷ − round(μ), coded with the
zero-mean integer CDF of table entry σ̂. This is what keeps ``bits_actual`` within a fraction of
a percent of ``bits_estimated`` at the very low rates CADC runs at.

``StreamEncoder``/``StreamDecoder`` put every symbol of one image — ẑ first, then the four
quadtree steps of ŷ — into one rANS stream (CompressAI's C++ coder), so an image pays the 32-bit
flush of the coder once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._compressai import BufferedRansEncoder, EntropyBottleneck, GaussianConditional, RansDecoder


def scale_table(scale_min: float, scale_max: float, num_scales: int) -> list[float]:
    """Log-spaced σ levels from ``scale_min`` to ``scale_max`` (ratio ≈ 1.13 for 64 levels)."""
    return [math.exp(v) for v in torch.linspace(math.log(scale_min), math.log(scale_max), num_scales).tolist()]


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


class SnappedGaussianConditional(GaussianConditional):
    """Gaussian conditional coding integer symbols with table-snapped σ and rounded μ."""

    def __init__(self, scale_min: float, scale_max: float, num_scales: int) -> None:
        super().__init__(scale_table=scale_table(scale_min, scale_max, num_scales), scale_bound=scale_min)

    def snap(self, scales: torch.Tensor, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (table index [int64], σ̂ = table[index], round(μ)), all shaped like ``scales``.

        The index is the smallest i with table[i] ≥ σ (σ clamped into the table's range), the
        same rule as CompressAI's ``build_indexes``.
        """
        table = self.scale_table.to(dtype=scales.dtype, device=scales.device)
        index = torch.bucketize(scales.detach().clamp(table[0], table[-1]), table)
        return index, table[index], torch.round(means.detach())

    def snapped_likelihood(self, y_hat: torch.Tensor, scales: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """P(ŷ) under N(round(μ), σ̂) integrated over [ŷ − ½, ŷ + ½]; differentiable (STE)."""
        _, scales_hat, means_hat = self.snap(scales, means)
        scales_ste = scales + (scales_hat - scales).detach()
        means_ste = means + (means_hat - means).detach()
        likelihood = self._likelihood(y_hat, scales_ste, means_ste)
        return self.likelihood_lower_bound(likelihood) if self.use_likelihood_bound else likelihood


@dataclass(frozen=True)
class CdfTables:
    """Integer CDF tables of one entropy model, as the rANS coder takes them."""

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]

    @classmethod
    def of(cls, model: EntropyBottleneck | GaussianConditional) -> CdfTables:
        if model._quantized_cdf.numel() == 0:
            raise RuntimeError("CDF tables are missing: call codec.update() before compress/decompress")
        return cls(
            model._quantized_cdf.tolist(),
            model._cdf_length.reshape(-1).int().tolist(),
            model._offset.reshape(-1).int().tolist(),
        )


CODER_PRECISION = 16
"""Bits of the rANS coder's probability scale (CDF tables sum to 2**16)."""
BYPASS_BITS = 4
"""Raw bits per bypass word of the coder's escape code."""


def escape_bits(symbols: torch.Tensor, indexes: torch.Tensor, tables: CdfTables) -> torch.Tensor:
    """Bits the coder spends on each symbol its table cannot hold (an escape); 0 for the others.

    With u = symbol − offset and top = length − 2, a symbol with u outside [0, top) is coded as the
    sentinel entry ``top`` followed by bypass words: the count n of 4-bit words of raw = −2u − 1
    (u < 0) or 2(u − top) (u ≥ top), written as ⌊n/15⌋ + 1 words, then raw's n words. A Gaussian
    likelihood cannot price this (it is ~0 that far out), so rate estimates take it from here.

    ``symbols``, ``indexes``: integer tensors of one shape; returns float64 bits of that shape.
    """
    lengths = torch.tensor(tables.lengths, dtype=torch.int64)
    sentinel = torch.tensor([cdf[n - 1] - cdf[n - 2] for cdf, n in zip(tables.cdfs, tables.lengths, strict=True)])
    indexes = indexes.long()
    top = lengths[indexes] - 2
    u = symbols.long() - torch.tensor(tables.offsets, dtype=torch.int64)[indexes]
    raw = torch.where(u < 0, -2 * u - 1, 2 * (u - top)).clamp_min(0).double()
    words = torch.where(raw > 0, torch.floor(torch.log2(raw.clamp_min(1))) // BYPASS_BITS + 1, 0.0)
    bits = CODER_PRECISION - torch.log2(sentinel[indexes].double()) + BYPASS_BITS * (words // 15 + 1 + words)
    return torch.where((u < 0) | (u >= top), bits, 0.0)


class StreamEncoder:
    """Collects (symbol, table index) runs from several entropy models into one rANS stream."""

    def __init__(self) -> None:
        self._encoder = BufferedRansEncoder()

    def encode(self, symbols: torch.Tensor, indexes: torch.Tensor, tables: CdfTables) -> None:
        self._encoder.encode_with_indexes(
            symbols.reshape(-1).int().tolist(), indexes.reshape(-1).int().tolist(),
            tables.cdfs, tables.lengths, tables.offsets,
        )

    def finish(self) -> bytes:
        return self._encoder.flush()


class StreamDecoder:
    """Reads the runs back in the order they were written.

    CompressAI's C++ decoder does not bounds-check its reads. A valid stream never reads past
    its end, but a crafted or damaged one (the container's CRC rejects accidental damage first)
    could; the stream is therefore followed by zero padding sized for the symbol count, so that
    every read stays inside the buffer: each symbol renormalises by at most one 32-bit word, and
    an escape run stops at the first zero nibble group it reads.
    """

    def __init__(self, data: bytes, symbol_count: int) -> None:
        self._decoder = RansDecoder()
        self._decoder.set_stream(data + bytes(16 * symbol_count + 4096))

    def decode(self, indexes: torch.Tensor, tables: CdfTables) -> torch.Tensor:
        values = self._decoder.decode_stream(
            indexes.reshape(-1).int().tolist(), tables.cdfs, tables.lengths, tables.offsets
        )
        return torch.tensor(values, dtype=torch.int64).reshape(indexes.shape)
