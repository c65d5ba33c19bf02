"""The pure-Python rANS coder against CompressAI's C++ coder: same bytes both ways, same symbols.

The reference is compressai's compiled ``BufferedRansEncoder``/``RansDecoder`` (tests that need it
skip when it is hidden or missing). Symbol streams are drawn over the real CDF tables of the
codec (every Gaussian σ table, every bottleneck channel), over hand-made edge tables (a single
symbol, frequency-1 symbols, a sentinel holding almost all the mass) and over every kind of
escape up to the coder's limit. Without compressai the golden files still pin the bytes.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cadc import rans
from cadc.codec_io import decode_file, encode_tensor
from cadc.container import read_cadc
from cadc.entropy import CODER_ENV, CdfTables, StreamDecoder, StreamEncoder, entropy_coder
from cadc.weights import build_tiny_random
from tests.conftest import make_busy, make_photo
from tests.test_reliability import GOLDEN, GOLDEN_FILES, y_hash

DATA = Path(__file__).resolve().parent / "data"
STREAMS = 10_000
"""Random streams compared with the C++ coder in the default run."""
TABLES_PER_STREAM = 4
"""Tables handed to the coder per stream (a window that walks over all of them)."""


def compressai_ans():
    """compressai's compiled coder module, or skip."""
    from cadc._compressai import COMPRESSAI_ERROR

    if COMPRESSAI_ERROR is not None:
        pytest.skip(f"compressai's coder is not importable: {COMPRESSAI_ERROR}")
    from compressai import ans

    return ans


def edge_tables() -> CdfTables:
    """Hand-made tables: tiny, freq-1 heavy, a near-certain symbol, an almost-all-mass sentinel."""
    full = 1 << rans.PRECISION
    rows = [
        [0, full - 1, full],  # one symbol, a frequency-1 sentinel
        [0, 1, full],  # only the sentinel is likely: almost everything escapes cheaply
        [0, 1, 2, 3, 4, full - 2, full - 1, full],  # frequency-1 symbols around a huge one
        [0, *range(2, 2 * 300, 2), full],  # 300 near-uniform small frequencies and a big sentinel
        [0, full // 2, full],
    ]
    width = max(map(len, rows))
    return CdfTables([r + [0] * (width - len(r)) for r in rows], [len(r) for r in rows], [-1, 0, -3, -150, 7])


def model_tables() -> dict[str, CdfTables]:
    codec = build_tiny_random()
    return {
        "gaussian": CdfTables.of(codec.gaussian_conditional),
        "bottleneck": CdfTables.of(codec.entropy_bottleneck),
        "edge": edge_tables(),
    }


def window(tables: CdfTables, first: int) -> CdfTables:
    """``TABLES_PER_STREAM`` consecutive tables starting at ``first`` (wrapping)."""
    picks = [(first + k) % len(tables.lengths) for k in range(TABLES_PER_STREAM)]
    return CdfTables([tables.cdfs[t] for t in picks], [tables.lengths[t] for t in picks],
                     [tables.offsets[t] for t in picks])


def draw_symbols(rng: np.random.Generator, tables: CdfTables, indexes: np.ndarray, kind: int) -> np.ndarray:
    """Symbols for ``indexes``: 0 drawn from the tables' own probabilities, 1 uniform around the
    tables' range (near escapes), 2 escapes of every size up to the coder's limit, 3 a mix."""
    lengths = np.asarray(tables.lengths)[indexes]
    offsets = np.asarray(tables.offsets)[indexes]
    top = lengths - 2
    if kind == 0:  # the value whose CDF range holds a uniform cum (the sentinel ``top`` = an escape of 0)
        cum = rng.integers(0, 1 << rans.PRECISION, indexes.size)
        values = np.empty(indexes.size, dtype=np.int64)
        for t in np.unique(indexes):
            where = indexes == t
            values[where] = np.searchsorted(tables.cdfs[t][: tables.lengths[t]], cum[where], side="right") - 1
        return offsets + values
    if kind == 1:
        return offsets + rng.integers(-20, top + 20)
    limit = rans.MAX_ESCAPE_RAW // 2  # u in [−limit, top + limit) is codable
    bits = rng.integers(0, 28, indexes.size)
    magnitude = np.minimum(rng.integers(0, 1 << 27, indexes.size) >> (27 - bits), limit - 1)
    escaped = np.where(rng.random(indexes.size) < 0.5, -1 - magnitude, top + magnitude)
    edges = rng.random(indexes.size)
    escaped = np.where(edges < 0.05, -limit, np.where(edges > 0.95, top + limit - 1, escaped))
    if kind == 2:
        return offsets + escaped
    return np.where(rng.random(indexes.size) < 0.1, offsets + escaped, draw_symbols(rng, tables, indexes, 0))


def cpp_encode(ans, symbols: np.ndarray, indexes: np.ndarray, tables: CdfTables) -> bytes:
    encoder = ans.BufferedRansEncoder()
    encoder.encode_with_indexes(symbols.tolist(), indexes.tolist(), tables.cdfs, tables.lengths, tables.offsets)
    return encoder.flush()


def python_encode(symbols: np.ndarray, indexes: np.ndarray, tables: CdfTables) -> bytes:
    encoder = rans.RansEncoder()
    encoder.encode_with_indexes(symbols, indexes, tables.table_set)
    return encoder.flush()


def cpp_decode(ans, data: bytes, indexes: np.ndarray, tables: CdfTables, padding: int = 0) -> list[int]:
    decoder = ans.RansDecoder()
    decoder.set_stream(data + bytes(padding))
    return decoder.decode_stream(indexes.tolist(), tables.cdfs, tables.lengths, tables.offsets)


def python_decode(data: bytes, indexes: np.ndarray, tables: CdfTables) -> list[int]:
    decoder = rans.RansDecoder()
    decoder.set_stream(data)
    return decoder.decode_stream(indexes, tables.table_set)


def test_random_streams_match_compressai_both_ways():
    """10⁴ streams over every table: identical bytes, and each coder decodes the other's stream."""
    ans = compressai_ans()
    rng = np.random.default_rng(2026)
    families = model_tables()
    used = {name: set() for name in families}
    windows: dict[tuple[str, int], CdfTables] = {}
    escapes = 0
    for stream in range(STREAMS):
        name = ("gaussian", "bottleneck", "edge")[stream % 3]
        first = stream // 3 * TABLES_PER_STREAM % len(families[name].lengths)
        tables = windows.setdefault((name, first), window(families[name], first))
        count = int(rng.integers(8, 60))  # ≥ 8: the C++ flush writes before its buffer for shorter streams
        indexes = rng.integers(0, TABLES_PER_STREAM, count)
        symbols = draw_symbols(rng, tables, indexes, kind=stream % 4)
        top = np.asarray(tables.lengths)[indexes] - 2
        value = symbols - np.asarray(tables.offsets)[indexes]
        escapes += int(((value < 0) | (value >= top)).sum())
        used[name].update((first + indexes) % len(families[name].lengths))

        expected = cpp_encode(ans, symbols, indexes, tables)
        assert python_encode(symbols, indexes, tables) == expected, f"stream {stream}"
        assert python_decode(expected, indexes, tables) == symbols.tolist(), f"stream {stream}"
        assert cpp_decode(ans, expected, indexes, tables) == symbols.tolist(), f"stream {stream}"
    for name, tables in families.items():
        assert used[name] == set(range(len(tables.lengths))), f"{name}: not every CDF table was coded"
    assert escapes > STREAMS  # escapes of every size were coded, not just in-table values


def test_garbage_streams_decode_like_compressai():
    """Any bytes (random, 0xFF runs that make huge escape counts) give the C++ decoder's symbols.

    The C++ decoder gets a 1 MiB zero padding here, so it never reads outside its buffer; the
    Python decoder reads zeros past the end. Escapes with more than 8 nibbles (never written by an
    encoder) must reproduce the C++ build's 32-bit wrap-around.
    """
    ans = compressai_ans()
    rng = np.random.default_rng(7)
    families = model_tables()
    huge = 0
    for case in range(600):
        tables = families[("gaussian", "bottleneck", "edge")[case % 3]]
        count = int(rng.integers(1, 300))
        indexes = rng.integers(0, len(tables.lengths), count)
        size = int(rng.integers(0, 200))
        data = [rng.bytes(size), b"\xff" * size, bytes(rng.choice([0, 0xFF, 0xF7, 0x7F, 0xFE], size).astype(np.uint8))]
        data = data[case % 3]
        expected = cpp_decode(ans, data, indexes, tables, padding=1 << 20)
        assert python_decode(data, indexes, tables) == expected, f"case {case}"
        huge += max(map(abs, expected)) >= rans.MAX_ESCAPE_RAW // 2
    assert huge > 50  # the wrap-around path really ran


def test_stream_coders_agree_on_codec_streams(busy_codec, monkeypatch):
    """StreamEncoder/StreamDecoder with each coder: the same payload for a busy image, decoded either way."""
    compressai_ans()
    payloads = {}
    for coder in ("compressai", "python"):
        monkeypatch.setenv(CODER_ENV, coder)
        assert entropy_coder() == coder
        payloads[coder] = busy_codec.compress(make_photo(192, 256, seed=3))[0]
    assert payloads["python"].payload == payloads["compressai"].payload
    compressed = payloads["python"]
    for coder in ("compressai", "python"):
        monkeypatch.setenv(CODER_ENV, coder)
        decoded = busy_codec.decompress(compressed.payload, compressed.y_shape, compressed.z_shape)
        assert torch.equal(decoded.y_hat.float(), compressed.y_hat)


@pytest.mark.parametrize("coder", ["compressai", "python"])
def test_golden_files_with_each_coder(coder, monkeypatch):
    """Both coders decode the golden files to the golden ŷ and re-encode them to the same bytes."""
    if coder == "compressai":
        compressai_ans()
    monkeypatch.setenv(CODER_ENV, coder)
    tiny, busy = build_tiny_random(), build_tiny_random()
    make_busy(busy)
    codecs = {"tiny": tiny, "busy": busy.eval()}
    for filename, key in GOLDEN_FILES.items():
        data = (DATA / filename).read_bytes()
        assert y_hash(decode_file(codecs[key[0]], read_cadc(DATA / filename))) == GOLDEN[key][1]
        name, height, width, seed = key
        encoded = encode_tensor(codecs[name], make_photo(height, width, seed=seed))[0]
        assert encoded.file.to_bytes() == data
        assert hashlib.sha256(data).hexdigest() == GOLDEN[key][0]


def test_coder_choice_from_environment(monkeypatch):
    monkeypatch.setenv(CODER_ENV, "python")
    assert entropy_coder() == "python"
    assert StreamEncoder().coder == "python"
    monkeypatch.setenv(CODER_ENV, "rust")
    with pytest.raises(ValueError, match="CADC_ENTROPY_CODER='rust'"):
        entropy_coder()
    monkeypatch.delenv(CODER_ENV)
    from cadc._compressai import COMPRESSAI_ERROR

    assert entropy_coder() == ("python" if COMPRESSAI_ERROR else "compressai")


def test_out_of_range_symbols_refused_by_both_coders(monkeypatch):
    """An escape over 7 nibbles would hang the C++ encoder: both coders raise instead."""
    tables = edge_tables()
    for coder in ("python", *(() if entropy_coder() == "python" else ("compressai",))):
        monkeypatch.setenv(CODER_ENV, coder)
        for symbol in (rans.MAX_ESCAPE_RAW // 2 + 10, -rans.MAX_ESCAPE_RAW // 2 - 2):
            encoder = StreamEncoder()
            with pytest.raises(ValueError, match="outside the rANS coder's range"):
                encoder.encode(torch.tensor([symbol] * 8), torch.zeros(8, dtype=torch.int64), tables)


def test_bad_tables_and_indexes_refused():
    with pytest.raises(ValueError, match="rise strictly"):
        rans.CdfTableSet([[0, 5, 5, 1 << 16]], [4], [0])
    with pytest.raises(ValueError, match="rise strictly"):
        rans.CdfTableSet([[0, 5, 1 << 15]], [3], [0])
    tables = rans.CdfTableSet([[0, 5, 1 << 16]], [3], [0])
    with pytest.raises(ValueError, match="CDF index"):
        rans.RansEncoder().encode_with_indexes([0], [1], tables)
    decoder = rans.RansDecoder()
    decoder.set_stream(b"")
    with pytest.raises(ValueError, match="CDF index"):
        decoder.decode_stream([-1], tables)


def test_decoder_stops_reading_garbage_at_the_stream_bound():
    """Bytes past the longest possible stream are ignored, so a huge payload costs no more work."""
    tables = model_tables()["gaussian"]
    symbols = 64
    indexes = torch.zeros(symbols, dtype=torch.int64)
    short = b"\xff" * (7 * symbols + 64)
    expected = StreamDecoder(short, symbols, coder="python").decode(indexes, tables)
    assert torch.equal(StreamDecoder(short + b"\x12" * 10**6, symbols, coder="python").decode(indexes, tables),
                       expected)


@pytest.mark.slow
def test_longest_stream_the_decode_cap_allows():
    """A paper-size image at the CLI's decode cap (2**25 pixels): ~2.8 M symbols, both coders, one stream."""
    ans = compressai_ans()
    from cadc.codec_io import MAX_DECODE_PIXELS

    symbols_y = MAX_DECODE_PIXELS // 64**2 * 320
    count = symbols_y + math.ceil(symbols_y / 16)
    rng = np.random.default_rng(11)
    tables = model_tables()["gaussian"]
    indexes = rng.integers(0, len(tables.lengths), count)
    symbols = draw_symbols(rng, tables, indexes, kind=3)
    expected = cpp_encode(ans, symbols, indexes, tables)
    assert python_encode(symbols, indexes, tables) == expected
    assert python_decode(expected, indexes, tables) == symbols.tolist()
