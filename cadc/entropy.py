"""Entropy models and the single-stream rANS coder.

``SnappedGaussianConditional`` is CompressAI's Gaussian conditional with one change: the scale σ
is snapped *up* to the coding table and the mean μ rounded to an integer in training too
(straight-through), so the rate the model is trained and evaluated on is the rate the coder
spends. ŷ is already integer (UGAQ rounds y / m), so a symbol is ŷ − round(μ), coded with the
zero-mean integer CDF of table entry σ̂. This is what keeps ``bits_actual`` within a fraction of
a percent of ``bits_estimated`` at the very low rates CADC runs at.

``StreamEncoder``/``StreamDecoder`` put every symbol of one image — ẑ first, then the four
quadtree steps of ŷ — into one rANS stream, so an image pays the 32-bit flush of the coder once.
Two coders write the same bytes (:func:`entropy_coder` picks one): CompressAI's C++ coder when
compressai is installed (its extension alone, see :mod:`cadc._compressai`), else :mod:`cadc.rans`
(pure Python + numpy); ``CADC_ENTROPY_CODER=python`` or
``=compressai`` forces one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property

import torch

from . import rans
from ._compressai import (
    COMPRESSAI_ERROR,
    BufferedRansEncoder,
    EntropyBottleneck,
    GaussianConditional,
    RansDecoder,
)

CODER_ENV = "CADC_ENTROPY_CODER"
"""Environment variable forcing the rANS coder: ``python`` or ``compressai`` (unset/``auto``: the fastest)."""
CODERS = ("compressai", "python")


def entropy_coder() -> str:
    """The coder ``StreamEncoder``/``StreamDecoder`` use now: ``"compressai"`` or ``"python"``.

    CompressAI's C++ coder when it loads, else the pure-Python one; :data:`CODER_ENV` forces
    either (read on every call). Both write and read the same bytes.
    """
    choice = os.environ.get(CODER_ENV, "").strip().lower()
    if choice in ("", "auto"):
        return "compressai" if COMPRESSAI_ERROR is None else "python"
    if choice not in CODERS:
        raise ValueError(f"{CODER_ENV}={choice!r}: use python, compressai or auto")
    if choice == "compressai" and COMPRESSAI_ERROR is not None:
        raise RuntimeError(f"{CODER_ENV}=compressai, but compressai's coder does not load here ({COMPRESSAI_ERROR})")
    return choice


def entropy_coder_description() -> str:
    """One line for ``cadc info``/``--version``: the coder in use and why."""
    try:
        coder = entropy_coder()
    except (ValueError, RuntimeError) as error:
        return f"unusable: {error}"
    forced = f", forced by {CODER_ENV}" if os.environ.get(CODER_ENV, "").strip().lower() in CODERS else ""
    if coder == "compressai":
        return f"compressai (C++ rANS{forced})"
    reason = forced.removeprefix(", ") or f"compressai's coder not loadable: {COMPRESSAI_ERROR}"
    return f"python (pure-Python rANS, same bytes; {reason})"


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

    @cached_property
    def table_set(self) -> rans.CdfTableSet:
        """The tables as the pure-Python coder takes them (validated once)."""
        return rans.CdfTableSet(self.cdfs, self.lengths, self.offsets)


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
    """Collects (symbol, table index) runs from several entropy models into one rANS stream.

    ``coder``: ``"compressai"`` or ``"python"``; default :func:`entropy_coder`. A symbol the coder
    cannot represent (an escape of more than 7 nibbles, |symbol| ≳ 2²⁷) raises ``ValueError``.
    """

    def __init__(self, coder: str | None = None) -> None:
        self.coder = coder or entropy_coder()
        self._encoder = BufferedRansEncoder() if self.coder == "compressai" else rans.RansEncoder()

    def encode(self, symbols: torch.Tensor, indexes: torch.Tensor, tables: CdfTables) -> None:
        symbols = symbols.reshape(-1).int().numpy()
        indexes = indexes.reshape(-1).int().numpy()
        if self.coder == "compressai":
            rans.check_symbols(symbols, indexes, tables.lengths, tables.offsets)  # C++ would loop forever
            self._encoder.encode_with_indexes(
                symbols.tolist(), indexes.tolist(), tables.cdfs, tables.lengths, tables.offsets
            )
        else:
            self._encoder.encode_with_indexes(symbols, indexes, tables.table_set)

    def finish(self) -> bytes:
        return self._encoder.flush()


class StreamDecoder:
    """Reads the runs back in the order they were written, from any bytes, within bounded memory.

    Bytes past the longest stream ``symbol_count`` symbols can make (:func:`max_stream_bytes`)
    are ignored: a valid stream never reaches them, and this bounds the work and memory a crafted
    one can cause.

    CompressAI's C++ decoder does not bounds-check its reads. A valid stream never reads past
    its end, but a crafted or damaged one (the container's CRC rejects accidental damage first)
    can; the stream is therefore followed by zero padding (:func:`cpp_padding`) so that the reads
    stay inside the buffer. The pure-Python decoder reads words past the end as zeros, which gives
    the same symbols.
    """

    def __init__(self, data: bytes, symbol_count: int, coder: str | None = None) -> None:
        self.coder = coder or entropy_coder()
        data = data[: max_stream_bytes(symbol_count)]
        if self.coder == "compressai":
            self._decoder = RansDecoder()
            self._decoder.set_stream(data + bytes(cpp_padding(len(data), symbol_count)))
        else:
            self._decoder = rans.RansDecoder()
            self._decoder.set_stream(data)

    def decode(self, indexes: torch.Tensor, tables: CdfTables) -> torch.Tensor:
        flat = indexes.reshape(-1).int()
        if self.coder == "compressai":
            values = self._decoder.decode_stream(flat.tolist(), tables.cdfs, tables.lengths, tables.offsets)
        else:
            values = self._decoder.decode_stream(flat.numpy(), tables.table_set)
        return torch.tensor(values, dtype=torch.int64).reshape(indexes.shape)


def max_stream_bytes(symbol_count: int) -> int:
    """Upper bound on the bytes the encoder writes for ``symbol_count`` symbols.

    A symbol costs at most 16 bits (frequency ≥ 1 of 2¹⁶) plus, when escaped, a 4-bit count and
    at most 7 payload nibbles: 48 bits, 6 bytes (7 are allowed for the coder's rounding); the final
    state is 8 bytes.
    """
    return 7 * symbol_count + 64


def cpp_padding(stream_bytes: int, symbol_count: int) -> int:
    """Zero bytes after a stream that keep the C++ decoder's reads inside its buffer.

    Each symbol renormalises by at most one 32-bit word; an escape's nibble count stops at the
    first nibble below 15, so only 0xF nibbles from the stream can lengthen it, and each count
    nibble of 15 adds 15 payload nibbles to read: ≤ 15 bytes read per stream byte. (The fuzz corpus
    of ``scripts/fuzz_decoder.py`` reads at most a quarter of the per-symbol part.)
    """
    return 16 * symbol_count + 16 * stream_bytes + 4096
