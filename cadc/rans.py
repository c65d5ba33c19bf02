"""Pure-Python rANS coder, byte-identical with CompressAI's C++ ``BufferedRansEncoder``/``RansDecoder``.

The coder is Fabian Giesen's 64-bit rANS (``rans64.h``: 63-bit state, lower bound L = 2³¹, 32-bit
words) as CompressAI drives it, re-implemented from the algorithm so that CADC installs where no
C++ compiler or compressai wheel exists (Windows, CPython 3.13). Same API as CompressAI's classes
(``encode_with_indexes`` + ``flush``; ``set_stream`` + ``decode_stream``), same bytes.

Coding of one symbol ``v`` with CDF table ``t`` (``cdf`` of ``length`` entries, 16-bit precision:
``cdf[0] = 0 < cdf[1] < … < cdf[length − 1] = 2¹⁶``, ``offset``):

* ``u = v − offset``; with ``top = length − 2`` (the escape sentinel), ``0 ≤ u < top`` is coded with
  the range ``[cdf[u], cdf[u + 1])``.
* Otherwise the sentinel ``top`` is coded, then *bypass* nibbles (4 raw bits each, rANS with
  2⁴ precision and frequency 1): ``raw = −2u − 1`` for ``u < 0``, ``raw = 2(u − top)`` for
  ``u ≥ top``; the nibble count ``n`` of ``raw`` as 15, 15, …, ``n mod 15`` (a run of 15s then the
  rest), then ``raw``'s ``n`` nibbles, least significant first.

The encoder codes the symbols in reverse, emitting 32-bit little-endian words backwards, then
writes the final state as two words (low, high) in front. The decoder reads forwards.

What the C++ coder leaves undefined is defined here, as the C++ build behaves on x86-64/arm64:

* decoding: words past the end of the stream read as zero (``cadc.entropy.StreamDecoder`` gives
  the C++ decoder a zero padding for the same effect); an escape whose nibble count exceeds 8
  (never written by an encoder) ORs nibble ``j`` in at bit ``4j mod 32`` of a 32-bit signed value,
  as the hardware's 5-bit shift count does;
* encoding: a value whose escape needs more than 7 nibbles (``raw ≥ 2²⁸``) makes the C++
  encoder loop forever; here it raises ``ValueError`` (:data:`MAX_ESCAPE_RAW`);
* tables: invalid CDF tables or indexes (C++ asserts, compiled out) raise ``ValueError``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

PRECISION = 16
"""Bits of the CDF tables' probability scale (``cdf[length − 1] = 2**PRECISION``)."""
BYPASS_BITS = 4
"""Raw bits per bypass (escape) symbol."""
MAX_ESCAPE_RAW = 1 << 28
"""Escape payloads must stay below this (7 nibbles): CompressAI's encoder never returns beyond it."""
_STATE_LOW = 1 << 31  # rans64's L: the state stays in [L, 2**63) between symbols
_WORD_MASK = (1 << 32) - 1
_NIBBLE_MASK = (1 << BYPASS_BITS) - 1
_CUM_MASK = (1 << PRECISION) - 1

IntSequence = Sequence[int] | np.ndarray


class CdfTableSet:
    """Validated CDF tables as the coder uses them.

    Args:
        cdfs: [T, ≥ max(lengths)] integer rows (CompressAI's ``_quantized_cdf``), list or array.
        lengths: [T] valid entries per row (``_cdf_length``), each ≥ 3 (a value and the escape sentinel).
        offsets: [T] value of row entry 0 (``_offset``).
    """

    def __init__(self, cdfs: Sequence[Sequence[int]] | np.ndarray, lengths: IntSequence, offsets: IntSequence):
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        count = self.lengths.size
        self.table = _as_matrix(cdfs, count, int(self.lengths.max(initial=0)))
        if self.offsets.size != count or count == 0:
            raise ValueError(f"{count} CDF lengths, {self.offsets.size} offsets and {len(self.table)} tables")
        self._validate()

    def _validate(self) -> None:
        lengths, table = self.lengths, self.table
        if lengths.min() < 3 or lengths.max() > table.shape[1]:
            raise ValueError("CDF lengths must be 3 .. the table width")  # C++: a 2-entry table divides by 0
        columns = np.arange(table.shape[1])
        inside = columns[None, :] < lengths[:, None]
        steps = np.diff(table, axis=1)
        increasing = (steps > 0) | ~inside[:, 1:]
        last = table[np.arange(len(table)), lengths - 1]
        if (table[:, 0] != 0).any() or (last != 1 << PRECISION).any() or not increasing.all():
            raise ValueError(f"CDF tables must rise strictly from 0 to {1 << PRECISION} within their lengths")

    def check_indexes(self, indexes: np.ndarray) -> None:
        if indexes.size and (indexes.min() < 0 or indexes.max() >= self.lengths.size):
            raise ValueError(f"CDF index outside 0..{self.lengths.size - 1}")


def _as_matrix(cdfs: Sequence[Sequence[int]] | np.ndarray, count: int, width: int) -> np.ndarray:
    """Rows of ``cdfs`` as an int64 [count, width'] array (ragged lists are zero-padded)."""
    try:
        matrix = np.asarray(cdfs, dtype=np.int64)
    except ValueError:  # ragged rows
        matrix = np.zeros(0)
    if matrix.ndim != 2:
        rows = [list(row) for row in cdfs]
        matrix = np.zeros((len(rows), max([width, *map(len, rows)])), dtype=np.int64)
        for i, row in enumerate(rows):
            matrix[i, : len(row)] = row
    if len(matrix) != count:
        raise ValueError(f"{len(matrix)} CDF tables for {count} lengths")
    return matrix


class RansEncoder:
    """Buffers symbols from any number of ``encode_with_indexes`` calls; ``flush`` returns the stream.

    Equivalent to ``compressai.ans.BufferedRansEncoder``.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def encode_with_indexes(
        self,
        symbols: IntSequence,
        indexes: IntSequence,
        cdfs: Sequence[Sequence[int]] | np.ndarray | CdfTableSet,
        cdf_lengths: IntSequence | None = None,
        offsets: IntSequence | None = None,
    ) -> None:
        """Queue ``symbols[i]`` coded with table ``indexes[i]`` (``cdfs`` may be a ready CdfTableSet)."""
        tables = cdfs if isinstance(cdfs, CdfTableSet) else CdfTableSet(cdfs, cdf_lengths, offsets)
        symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
        indexes = np.asarray(indexes, dtype=np.int64).reshape(-1)
        if symbols.shape != indexes.shape:
            raise ValueError(f"{symbols.size} symbols but {indexes.size} CDF indexes")
        tables.check_indexes(indexes)
        self._runs.append(_coding_ops(symbols, indexes, tables))

    def flush(self) -> bytes:
        """The rANS stream of every queued symbol; the encoder is empty afterwards."""
        runs, self._runs = self._runs, []
        if not runs:
            starts = freqs = shifts = np.zeros(0, dtype=np.int64)
        else:
            starts, freqs, shifts = (np.concatenate(parts) for parts in zip(*runs, strict=True))
        return _encode(starts, freqs, shifts)


def _coding_ops(
    symbols: np.ndarray, indexes: np.ndarray, tables: CdfTableSet
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rANS operations (start, frequency, precision bits) for the symbols, in coding order.

    A plain symbol is one operation at 16-bit precision; an escaped one adds the bypass
    operations (start = nibble, frequency 1, 4-bit precision) of its nibble count and payload.
    """
    top, value, raw = _escape_payloads(symbols, indexes, tables.lengths, tables.offsets)
    escaped = (value < 0) | (value >= top)
    value = np.where(escaped, top, value)
    start = tables.table[indexes, value]
    freq = tables.table[indexes, value + 1] - start

    nibbles = sum((raw >> (BYPASS_BITS * k) != 0).astype(np.int64) for k in range(7))  # < 15: one count op
    extra = np.where(escaped, 1 + nibbles, 0)
    position = np.arange(symbols.size) + np.cumsum(extra) - extra
    total = symbols.size + int(extra.sum())
    starts = np.zeros(total, dtype=np.int64)
    freqs = np.ones(total, dtype=np.int64)
    shifts = np.full(total, BYPASS_BITS, dtype=np.int64)
    starts[position], freqs[position], shifts[position] = start, freq, PRECISION
    where = np.flatnonzero(escaped)
    starts[position[where] + 1] = nibbles[where]
    for k in range(7):
        where = np.flatnonzero(escaped & (nibbles > k))
        starts[position[where] + 2 + k] = (raw[where] >> (BYPASS_BITS * k)) & _NIBBLE_MASK
    return starts, freqs, shifts


def _escape_payloads(
    symbols: np.ndarray, indexes: np.ndarray, lengths: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sentinel ``top``, table value ``u``, escape payload ``raw``, 0 when not escaped) per symbol."""
    top = lengths[indexes] - 2
    value = symbols - offsets[indexes]
    raw = np.where(value < 0, -2 * value - 1, np.where(value >= top, 2 * (value - top), 0))
    if (raw >= MAX_ESCAPE_RAW).any():
        worst = int(symbols[np.argmax(raw)])
        raise ValueError(f"symbol {worst} is outside the rANS coder's range (its escape needs more than 7 nibbles)")
    return top, value, raw


def check_symbols(symbols: IntSequence, indexes: IntSequence, lengths: IntSequence, offsets: IntSequence) -> None:
    """Raise ``ValueError`` unless every symbol is codable with its table (index in range, escape ≤ 7 nibbles).

    CompressAI's C++ encoder checks neither and loops forever on a larger escape.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    indexes = np.asarray(indexes, dtype=np.int64).reshape(-1)
    if indexes.size and (indexes.min() < 0 or indexes.max() >= lengths.size):
        raise ValueError(f"CDF index outside 0..{lengths.size - 1}")
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    _escape_payloads(symbols, indexes, lengths, np.asarray(offsets, dtype=np.int64).reshape(-1))


def _encode(starts: np.ndarray, freqs: np.ndarray, shifts: np.ndarray) -> bytes:
    """Run rans64's encoder over the operations backwards; returns the stream bytes."""
    # renormalise before an operation when x ≥ x_max = ((L >> bits) << 32) · freq
    limits = (freqs.astype(np.uint64) << (63 - shifts).astype(np.uint64)).tolist()
    words: list[int] = []
    emit = words.append
    x = _STATE_LOW
    for start, freq, bits, limit in zip(
        starts[::-1].tolist(), freqs[::-1].tolist(), shifts[::-1].tolist(), limits[::-1], strict=True
    ):
        if x >= limit:
            emit(x & _WORD_MASK)
            x >>= 32
        x = ((x // freq) << bits) + x % freq + start
    stream = [x & _WORD_MASK, x >> 32, *reversed(words)]
    return np.asarray(stream, dtype="<u4").tobytes()


class RansDecoder:
    """Decodes a stream in runs, like ``compressai.ans.RansDecoder``'s ``set_stream``/``decode_stream``.

    Words past the end of the stream read as zero, so no input makes it read outside its buffer;
    every run of ``decode_stream`` costs O(symbols + escape nibbles) whatever the bytes are.
    """

    def __init__(self) -> None:
        self._words: list[int] = []
        self._position = 0
        self._state = 0

    def set_stream(self, data: bytes) -> None:
        """Start decoding ``data`` (the bytes ``RansEncoder.flush`` returned, or anything else)."""
        whole = len(data) // 4 * 4
        tail = data[whole:] + bytes(4 - len(data) % 4) if len(data) % 4 else b""
        self._words = np.frombuffer(data[:whole] + tail, dtype="<u4").tolist()
        self._position = 0
        self._state = self._read() | self._read() << 32

    def _read(self) -> int:
        position = self._position
        self._position = position + 1
        return self._words[position] if position < len(self._words) else 0

    def decode_stream(
        self,
        indexes: IntSequence,
        cdfs: Sequence[Sequence[int]] | np.ndarray | CdfTableSet,
        cdf_lengths: IntSequence | None = None,
        offsets: IntSequence | None = None,
    ) -> list[int]:
        """The next ``len(indexes)`` symbols, symbol ``i`` decoded with table ``indexes[i]``."""
        tables = cdfs if isinstance(cdfs, CdfTableSet) else CdfTableSet(cdfs, cdf_lengths, offsets)
        index_array = np.asarray(indexes, dtype=np.int64).reshape(-1)
        tables.check_indexes(index_array)
        used = np.unique(index_array).tolist()
        rows: list[list[int] | None] = [None] * tables.lengths.size
        for t in used:
            rows[t] = tables.table[t, : tables.lengths[t]].tolist()
        tops = (tables.lengths - 2).tolist()
        offsets_list = tables.offsets.tolist()

        words, position, x = self._words, self._position, self._state
        available = len(words)
        out: list[int] = []
        emit = out.append
        for t in index_array.tolist():
            row = rows[t]
            cum = x & _CUM_MASK
            s = bisect_right(row, cum) - 1
            start = row[s]
            x = (row[s + 1] - start) * (x >> PRECISION) + cum - start
            if x < _STATE_LOW:
                x = (x << 32) | (words[position] if position < available else 0)
                position += 1
            if s == tops[t]:
                self._state, self._position = x, position
                s = self._escape(s)
                x, position = self._state, self._position
            emit(s + offsets_list[t])
        self._state, self._position = x, position
        return out

    def _get_nibble(self) -> int:
        x = self._state
        nibble = x & _NIBBLE_MASK
        x >>= BYPASS_BITS
        if x < _STATE_LOW:
            x = (x << 32) | self._read()
        self._state = x
        return nibble

    def _escape(self, top: int) -> int:
        """Decode an escaped value (the sentinel ``top`` was just decoded); returns the table value."""
        nibble = self._get_nibble()
        count = nibble
        while nibble == _NIBBLE_MASK:
            nibble = self._get_nibble()
            count += nibble
        raw = 0
        for j in range(count):
            raw |= self._get_nibble() << (BYPASS_BITS * j & 31)
        raw &= _WORD_MASK
        if raw >= 1 << 31:  # int32 in the C++ coder
            raw -= 1 << 32
        half = raw >> 1
        return -half - 1 if raw & 1 else half + top
