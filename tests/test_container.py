"""The ``.cadc`` container: spec conformance, round trips, every error case, fuzzing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cadc.container as container
from cadc.container import (
    KNOWN_CAPTIONERS,
    PAPER_FIXED_PROMPT,
    CadcFile,
    CadcFormatError,
    CadcHeader,
    DecoderHints,
    check_model,
    header_to_json,
    read_cadc,
    read_header,
    write_cadc,
)

ROOT = Path(__file__).resolve().parents[1]
SHA = hashlib.sha256(b"codec weights").digest()


def make_header(**changes) -> CadcHeader:
    """A typical 512x768 RGB header (paper sizes: y 320 channels, z 320 channels)."""
    fields = dict(
        model_id="cadc-sd-turbo",
        weights_sha256=SHA,
        rate_tag="lambda=2",
        height=512,
        width=768,
        channels=3,
        bit_depth=8,
        pad_bottom=0,
        pad_right=0,
        y_shape=(320, 8, 12),
        z_shape=(320, 2, 3),
    )
    fields.update(changes)
    return CadcHeader(**fields)


def rich_file() -> CadcFile:
    """Odd size, 16-bit RGBA, every hint, provenance and three streams (one empty)."""
    header = make_header(
        height=97,
        width=131,
        channels=4,
        bit_depth=16,
        pad_bottom=31,
        pad_right=61,
        y_shape=(320, 2, 3),
        z_shape=(320, 1, 1),
        hints=DecoderHints(KNOWN_CAPTIONERS[2], PAPER_FIXED_PROMPT, 999, hashlib.sha256(b"sd").digest()),
        provenance={"encoder": "cadc 0.1.0", "exact": True, "note": "ünïcode"},
    )
    return CadcFile(header, (bytes(range(200)), b"", b"\xff" * 7))


# ---------------------------------------------------------------- an independent writer from the spec


def uvarint(v: int) -> bytes:
    out = b""
    while v >= 0x80:
        out += bytes([v & 0x7F | 0x80])
        v >>= 7
    return out + bytes([v])


def frame(body: bytes, payload: bytes, version=(1, 0), magic=b"CADC") -> bytes:
    """Magic, version, header length, ``body``, header CRC, ``payload``, file CRC (as documented)."""
    head = magic + bytes(version) + struct.pack("<H", len(body)) + body
    data = head + struct.pack("<I", zlib.crc32(head)) + payload
    return data + struct.pack("<I", zlib.crc32(data))


def spec_file(body_fields: list[bytes], streams: list[bytes], records: bytes = b"", version=(1, 0)) -> bytes:
    """Build a file byte by byte following the module docstring (no validation: for forging)."""
    table = uvarint(len(streams)) + b"".join(uvarint(len(s)) for s in streams)
    return frame(b"".join(body_fields) + table + records, b"".join(streams), version)


def spec_fields(h=512, w=768, fmt=3, pads=(0, 0), y=(320, 8, 12), z=(320, 2, 3)) -> list[bytes]:
    return [
        b"\x0dcadc-sd-turbo",
        SHA,
        b"\x08lambda=2",
        uvarint(h),
        uvarint(w),
        bytes([fmt]),
        *map(uvarint, pads),
        *map(uvarint, (*y, *z)),
    ]


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + uvarint(len(value)) + value


def test_writer_matches_the_documented_layout():
    f = CadcFile(make_header(), (b"payload",))
    assert f.to_bytes() == spec_file(spec_fields(), [b"payload"])
    assert f.header_bytes == len(f.to_bytes()) - len(b"payload")


def test_typical_header_is_89_bytes_and_known_hints_cost_one_byte_each():
    payload = (b"x" * 300,)  # 128..16383 payload bytes take a 2-byte length
    assert CadcFile(make_header(), payload).header_bytes == 89
    hints = DecoderHints(captioner_id=KNOWN_CAPTIONERS[2], fixed_prompt=PAPER_FIXED_PROMPT, timestep=999)
    f = CadcFile(make_header(hints=hints), payload)
    assert f.header_bytes == 89 + 3 + 3 + 4
    assert tlv(0x02, b"\x02") + tlv(0x04, b"\x01") + tlv(0x05, uvarint(999)) in f.to_bytes()


def test_golden_file_stays_readable():
    """``data/golden-1.0.cadc`` was written by format 1.0: later versions must read it unchanged."""
    data = (ROOT / "tests" / "data" / "golden-1.0.cadc").read_bytes()
    assert (
        hashlib.sha256(data).hexdigest() == "80d30ac7b28055e213910b3f1da742d40ec9cba529561e2e2211857b4891e3f0"
    )
    assert read_cadc(ROOT / "tests" / "data" / "golden-1.0.cadc") == rich_file()
    assert rich_file().to_bytes() == data  # the 1.0 writer is byte-stable


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "f",
    [
        CadcFile(make_header(), (b"x" * 300,)),
        rich_file(),
        CadcFile(make_header(hints=DecoderHints(captioner_id="my/captioner", fixed_prompt="")), (b"",)),
        CadcFile(
            make_header(height=1, width=1, pad_bottom=63, pad_right=63, y_shape=(8, 1, 1), z_shape=(4, 1, 1)),
            (b"a",),
        ),
        CadcFile(make_header(channels=1, bit_depth=16, provenance={}), tuple(bytes([i]) for i in range(64))),
    ],
)
def test_round_trip(f):
    data = f.to_bytes()
    back = CadcFile.from_bytes(data)
    assert back == f
    assert back.to_bytes() == data
    assert read_header(data) == f.header
    assert read_header(data[: f.header_bytes - 4]) == f.header  # header only, no payload needed
    json.dumps(header_to_json(f.header))


def test_provenance_is_stored_as_a_reader_will_see_it():
    assert make_header(provenance={3: "three"}).provenance == {"3": "three"}
    h = make_header(provenance={"args": (1, 2)})
    assert h.provenance == {"args": [1, 2]}
    assert CadcFile.from_bytes(CadcFile(h, (b"",)).to_bytes()).header == h


def test_header_accepts_numpy_ints_and_lists():
    h = make_header(height=np.int64(512), y_shape=[320, 8, 12], z_shape=np.array([320, 2, 3]))
    assert h == make_header() and type(h.height) is int and h.y_shape == (320, 8, 12)


def test_write_and_read_file(tmp_path):
    f = rich_file()
    path = tmp_path / "a.cadc"
    assert write_cadc(path, f) == len(f.to_bytes()) == path.stat().st_size
    assert read_cadc(path) == f
    assert os.listdir(tmp_path) == ["a.cadc"]


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "a.cadc"
    write_cadc(path, CadcFile(make_header(), (b"old",)))

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_cadc(path, CadcFile(make_header(), (b"new",)))
    assert read_cadc(path).streams == (b"old",)
    assert os.listdir(tmp_path) == ["a.cadc"]


def test_read_refuses_oversized_file_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.cadc"
    path.write_bytes(CadcFile(make_header(), (b"x" * 1000,)).to_bytes())
    monkeypatch.setattr(container, "MAX_FILE_BYTES", 500)
    with pytest.raises(CadcFormatError, match="exceeds the cap"):
        read_cadc(path)


# ---------------------------------------------------------------- error cases


def test_bad_magic():
    data = bytearray(CadcFile(make_header(), (b"p",)).to_bytes())
    data[:4] = b"\x89PNG"
    with pytest.raises(CadcFormatError, match="bad magic"):
        CadcFile.from_bytes(bytes(data))


def test_unknown_major_version():
    with pytest.raises(CadcFormatError, match=r"unknown major version 2\.0"):
        CadcFile.from_bytes(spec_file(spec_fields(), [b"p"], version=(2, 0)))


def test_newer_minor_version_is_read_and_unknown_optional_records_skipped():
    records = tlv(0x05, uvarint(999)) + tlv(0x30, b"future field") + tlv(0x7F, b"")
    f = CadcFile.from_bytes(spec_file(spec_fields(), [b"p"], records, version=(1, 7)))
    assert f.header == make_header(hints=DecoderHints(timestep=999)) and f.streams == (b"p",)


def test_unknown_required_record_is_rejected():
    with pytest.raises(CadcFormatError, match="newer CADC version"):
        CadcFile.from_bytes(spec_file(spec_fields(), [b"p"], tlv(0x80, b""), version=(1, 3)))


def test_every_truncation_is_rejected():
    data = rich_file().to_bytes()
    for n in range(len(data)):
        with pytest.raises(CadcFormatError):
            CadcFile.from_bytes(data[:n])
    with pytest.raises(CadcFormatError, match="truncated"):
        CadcFile.from_bytes(data[:-1])


def test_trailing_data_is_rejected():
    with pytest.raises(CadcFormatError, match="trailing data"):
        CadcFile.from_bytes(rich_file().to_bytes() + b"\0")


def test_every_single_bit_flip_is_rejected():
    data = rich_file().to_bytes()
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CadcFormatError):
            CadcFile.from_bytes(bytes(flipped))


def test_crc_mismatches_are_named():
    data = bytearray(CadcFile(make_header(), (b"payload",)).to_bytes())
    data[20] ^= 1  # inside the weights hash
    with pytest.raises(CadcFormatError, match="header CRC mismatch"):
        CadcFile.from_bytes(bytes(data))
    data[20] ^= 1
    data[-6] ^= 1  # inside the payload
    with pytest.raises(CadcFormatError, match="file CRC mismatch"):
        CadcFile.from_bytes(bytes(data))
    assert read_header(bytes(data)) == make_header()  # `cadc info` still works on the header


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(h=40000, w=64, y=(320, 625, 1), z=(320, 157, 1)), "height = 40000 is outside"),
        (dict(h=32768, w=32768, y=(320, 512, 512), z=(320, 128, 128)), "exceeds the cap of 268435456 pixels"),
        (dict(h=2**27, w=2**27), "height"),
        (dict(y=(320, 9, 12)), "y_shape .* does not match"),
        (dict(z=(320, 2, 4)), "z_shape .* does not match"),
        (dict(y=(5000, 8, 12)), r"y_shape\[C\] = 5000"),
        (dict(h=448, pads=(300, 0)), "pad_bottom = 300"),
        (dict(h=500, pads=(4, 0)), "not a multiple of 64"),
        (dict(fmt=5), "channels = 5"),
        (dict(fmt=0), "channels = 0"),
        (dict(fmt=0x23), "reserved bits"),
    ],
)
def test_inconsistent_or_huge_headers_are_refused_without_allocation(kwargs, message):
    data = spec_file(spec_fields(**kwargs), [b"tiny"])
    tracemalloc.start()
    try:
        with pytest.raises(CadcFormatError, match=message):
            CadcFile.from_bytes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (uvarint(1) + uvarint(2**27 - 1), "truncated: header declares 134217727 payload bytes, file has 3"),
        (uvarint(2) + uvarint(1) + uvarint(1), "trailing data: header declares 2 payload bytes, file has 3"),
        (uvarint(65) + b"\0" * 65, "stream count 65"),
        (uvarint(0), "stream count 0"),
    ],
)
def test_stream_table_is_checked_against_the_file(table, message):
    with pytest.raises(CadcFormatError, match=message):
        CadcFile.from_bytes(frame(b"".join(spec_fields()) + table, b"abc"))


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (tlv(0x05, b"\xe7\x07") + tlv(0x05, b"\x01"), "out of order or repeated"),
        (tlv(0x04, b"\x09"), "unknown well-known id 9"),
        (tlv(0x03, b"text") + tlv(0x04, b"\x01"), "already given as text"),
        (tlv(0x05, b"\x90\x4e"), "timestep = 10000"),
        (tlv(0x06, b"short"), "sd_model_sha256 must be 32 bytes"),
        (tlv(0x07, b"[1, 2]"), "must be a JSON object"),
        (tlv(0x07, b"{bad json"), "not valid JSON"),
        (tlv(0x07, b"[" * 16000), "not valid JSON"),
        (tlv(0x07, b" " * 17000), "JSON exceeds 16384 bytes"),
        (tlv(0x03, b"\xff\xfe"), "not valid utf-8"),
        (b"\x05\x05\x01", "header ends inside record 0x05"),
        (b"\x05\x80\x80\x80\x80\x01", "varint longer than 4 bytes"),
        (b"\x05\x81\x00\x00", "non-minimal varint"),
    ],
)
def test_bad_records(records, message):
    with pytest.raises(CadcFormatError, match=message):
        CadcFile.from_bytes(spec_file(spec_fields(), [b"p"], records))


@pytest.mark.parametrize(
    "changes",
    [
        dict(model_id=""),
        dict(model_id="x" * 65),
        dict(model_id="naïve"),
        dict(model_id="tab\there"),
        dict(weights_sha256=SHA.hex()),
        dict(rate_tag="r" * 33),
        dict(bit_depth=12),
        dict(height=0),
        dict(height=True),
        dict(y_shape=(320, 8)),
        dict(provenance={"x": object()}),
        dict(provenance={"x": float("nan")}),
        dict(provenance={"x": "y" * 20000}),
    ],
)
def test_invalid_headers_cannot_be_built(changes):
    with pytest.raises(CadcFormatError):
        dataclasses.replace(make_header(), **changes)


def test_invalid_hints_and_streams_cannot_be_built():
    for kwargs in (
        dict(captioner_id=""),
        dict(fixed_prompt="\ud800"),
        dict(sd_model_sha256=b"x"),
        dict(timestep=-1),
    ):
        with pytest.raises(CadcFormatError):
            DecoderHints(**kwargs)
    for streams in ((), ("text",), (b"",) * 65):
        with pytest.raises(CadcFormatError):
            CadcFile(make_header(), streams)


def test_check_model_names_both_models():
    h = make_header()
    check_model(h, "cadc-sd-turbo", SHA)
    check_model(h, "cadc-sd-turbo", SHA.hex().upper())
    other = hashlib.sha256(b"other").digest()
    with pytest.raises(CadcFormatError) as e:
        check_model(h, "cadc-tiny", other)
    for part in ("'cadc-sd-turbo'", "'cadc-tiny'", SHA.hex(), other.hex()):
        assert part in str(e.value)
    with pytest.raises(CadcFormatError, match="model mismatch"):
        check_model(h, "cadc-sd-turbo", other)


# ---------------------------------------------------------------- fuzzing (fast subset)

VALID = [
    rich_file().to_bytes(),
    CadcFile(make_header(), (b"x" * 40,)).to_bytes(),
    spec_file(spec_fields(), [b"p"], tlv(0x30, b"future") + tlv(0x80, b""), version=(1, 9)),
]


def fix_crcs(data: bytearray) -> bytes:
    """Recompute both CRCs where the (possibly mutated) layout puts them, so the parser is reached."""
    if len(data) >= 8:
        end = 8 + struct.unpack_from("<H", data, 6)[0]
        if len(data) >= end + 4:
            struct.pack_into("<I", data, end, zlib.crc32(data[:end]))
        if len(data) >= end + 8:
            struct.pack_into("<I", data, len(data) - 4, zlib.crc32(data[:-4]))
    return bytes(data)


@st.composite
def mutated_files(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            del data[pos:]
    return fix_crcs(data) if draw(st.booleans()) else bytes(data)


def _only_format_errors(data: bytes) -> None:
    try:
        f = CadcFile.from_bytes(data)
    except CadcFormatError:
        return
    assert CadcFile.from_bytes(f.to_bytes()) == f


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated_files())
def test_fuzz_mutated_files(data):
    _only_format_errors(data)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=300).map(lambda b: b"CADC\x01" + b))
def test_fuzz_random_bytes(data):
    _only_format_errors(data)


def test_fuzz_script_runs_and_reports(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fuzz_container.py"), "--count", "2000", "--seed", "1"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        timeout=120,
    )
    summary = json.loads(out.stdout)
    assert summary["count"] == 2000 and summary["unexpected"] == 0 and summary["ok"] > 0
