"""The ``.cadc`` file format (version 1.0): a compact, CRC-checked header followed by the coded streams.

Layout (all multi-byte fixed-width integers little-endian; ``varint`` = unsigned LEB128, 1..4 bytes,
minimal encoding, value < 2**28):

=====================  ==========  =======================================================================
field                  size        meaning
=====================  ==========  =======================================================================
magic                  4           ``b"CADC"``
major, minor           1 + 1       format version; this code writes 1.0, reads major 1 with any minor
header_len             2 (u16)     L: number of header-body bytes that follow
--- header body (L bytes) -----------------------------------------------------------------------------
model_id               1 + n       u8 length n (1..64), printable ASCII
weights_sha256         32          sha256 of the codec weights (see ``cadc.weights``)
rate_tag               1 + n       u8 length n (0..32), printable ASCII, e.g. ``lambda=2``
height, width          varint × 2  original image size in pixels (1..32768 each, height·width ≤ 2**28)
pixel_format           1           bits 0-3: channels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA);
                                   bit 4: 16-bit samples (else 8); bits 5-7: zero
pad_bottom, pad_right  varint × 2  pixels added (replicate) before coding, each 0..255
y_shape                varint × 3  (C, H, W) of ŷ: C 1..1024, H = (height + pad_bottom) / 64, same for W
z_shape                varint × 3  (C, H, W) of ẑ: C 1..1024, H = ceil(y_H / 4), W = ceil(y_W / 4)
stream_count           varint      N, 1..64
stream_lengths         varint × N  bytes of each stream; their sum is exactly the payload size
records                rest of L   optional TLV records: u8 tag, varint length, value (see below);
                                   tags strictly increasing
--- end of header body --------------------------------------------------------------------------------
header_crc             4 (u32)     CRC32 of every byte before it (magic .. records)
payload                Σ lengths   the N streams, concatenated in order
file_crc               4 (u32)     CRC32 of every byte before it (header, header_crc and payload)
=====================  ==========  =======================================================================

TLV records (decoder hints and provenance; a file without them means "use the decoder's defaults"):

====  ==============================  =====================================================================
tag   value                           meaning
====  ==============================  =====================================================================
0x01  UTF-8 text (≤ 255 bytes)        captioner id, free text
0x02  1 byte                          captioner id as a well-known id (``KNOWN_CAPTIONERS``)
0x03  UTF-8 text (≤ 1024 bytes)       fixed prompt, free text
0x04  1 byte                          fixed prompt as a well-known id (``KNOWN_PROMPTS``)
0x05  varint (0..9999)                diffusion timestep
0x06  32 bytes                        sha256 of the SD model the file was tuned for
0x07  UTF-8 JSON object (≤ 16 KiB)    provenance (encoder version, settings, ...); compact, sorted keys
====  ==============================  =====================================================================

Well-known ids are append-only: an id, once assigned, never changes meaning. Writers use the id
when the text is in the table and free text otherwise.

Compatibility: a minor version may only add TLV tags. Readers skip unknown tags below 0x80 and
reject unknown tags from 0x80 up ("required": needs a newer reader). Another major version is
rejected.

Reading order (nothing is trusted before it is checked): magic, major version, header_len against
the data size, header CRC, header fields and their caps (before anything is allocated from them),
payload size against the declared stream lengths, file CRC. Every problem raises
:class:`CadcFormatError` with a message that says what is wrong.

Size: a typical file (model id ``cadc-sd-turbo``, rate tag ``lambda=2``, no hints, one stream of
128..16383 bytes, 320-channel y and z) has 89 non-payload bytes, 32 of them the weights hash; the
codec's default hints (known captioner, paper prompt, timestep 999) add 10.
"""

from __future__ import annotations

import json
import math
import operator
import os
import secrets
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import FIXED_PROMPT

MAGIC = b"CADC"
VERSION = (1, 0)
Y_STRIDE = 64  # image pixels per ŷ element along each axis
Z_STRIDE = 4  # ŷ elements per ẑ element along each axis
MAX_SIDE = 32768
MAX_PIXELS = 2**28
MAX_PAD = 255
MAX_LATENT_CHANNELS = 1024
MAX_STREAMS = 64
MAX_FILE_BYTES = 2**28
MAX_TIMESTEP = 9999
MAX_PROVENANCE_BYTES = 16 * 1024
_VARINT_LIMIT = 2**28  # 4 LEB128 bytes

PAPER_FIXED_PROMPT = FIXED_PROMPT
KNOWN_PROMPTS = {1: PAPER_FIXED_PROMPT}
KNOWN_CAPTIONERS = {
    1: "Salesforce/blip-image-captioning-large",
    2: "Salesforce/blip-image-captioning-base",
}

_TAG_CAPTIONER, _TAG_CAPTIONER_ID, _TAG_PROMPT, _TAG_PROMPT_ID = 0x01, 0x02, 0x03, 0x04
_TAG_TIMESTEP, _TAG_SD_SHA, _TAG_PROVENANCE = 0x05, 0x06, 0x07
_TAG_REQUIRED = 0x80
_FIXED_PREFIX = 8  # magic, major, minor, header_len


class CadcFormatError(ValueError):
    """Any problem with a ``.cadc`` file or with the model it is decoded with."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise CadcFormatError(msg)


def _check_text(value: object, name: str, lo: int, hi: int, *, ascii_only: bool) -> None:
    if not isinstance(value, str):
        raise CadcFormatError(f"{name} must be a string, got {type(value).__name__}")
    if ascii_only:
        _check(value.isascii() and value.isprintable(), f"{name} {value!r} must be printable ASCII")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise CadcFormatError(f"{name} is not encodable as UTF-8") from e
    _check(lo <= size <= hi, f"{name} must be {lo}..{hi} bytes, got {size}")


def _check_sha(value: object, name: str) -> None:
    _check(isinstance(value, bytes) and len(value) == 32, f"{name} must be 32 bytes (a raw sha256 digest)")


def _as_int(value: object, name: str) -> int:
    _check(not isinstance(value, bool), f"{name} must be an int")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError as e:
        raise CadcFormatError(f"{name} must be an int, got {type(value).__name__}") from e


def _check_int(value: object, name: str, lo: int, hi: int) -> None:
    _check(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an int")
    _check(lo <= value <= hi, f"{name} = {value} is outside {lo}..{hi}")  # type: ignore[operator]


@dataclass(frozen=True)
class DecoderHints:
    """Settings for the generative decoder; ``None`` means "use the decoder's default"."""

    captioner_id: str | None = None
    fixed_prompt: str | None = None
    timestep: int | None = None
    sd_model_sha256: bytes | None = None

    def __post_init__(self) -> None:
        if self.captioner_id is not None:
            _check_text(self.captioner_id, "captioner_id", 1, 255, ascii_only=False)
        if self.fixed_prompt is not None:
            _check_text(self.fixed_prompt, "fixed_prompt", 0, 1024, ascii_only=False)
        if self.timestep is not None:
            _check_int(self.timestep, "timestep", 0, MAX_TIMESTEP)
        if self.sd_model_sha256 is not None:
            _check_sha(self.sd_model_sha256, "sd_model_sha256")


@dataclass(frozen=True)
class CadcHeader:
    """Everything in a ``.cadc`` file except the streams; validated on construction.

    ``height``/``width`` are the original image size in pixels, ``pad_bottom``/``pad_right`` the
    pixels added before coding; ``y_shape``/``z_shape`` are (C, H, W) of ŷ and ẑ without the batch.
    """

    model_id: str
    weights_sha256: bytes
    rate_tag: str
    height: int
    width: int
    channels: int
    bit_depth: int
    pad_bottom: int
    pad_right: int
    y_shape: tuple[int, int, int]
    z_shape: tuple[int, int, int]
    hints: DecoderHints = DecoderHints()
    provenance: dict | None = None

    def __post_init__(self) -> None:
        for name in ("y_shape", "z_shape"):  # accept lists, torch.Size, numpy arrays and ints
            value = getattr(self, name)
            _check(isinstance(value, Iterable) and not isinstance(value, str), f"{name} must be (C, H, W)")
            value = tuple(_as_int(v, name) for v in value)
            _check(len(value) == 3, f"{name} must be (C, H, W)")
            object.__setattr__(self, name, value)
        for name in ("height", "width", "channels", "bit_depth", "pad_bottom", "pad_right"):
            object.__setattr__(self, name, _as_int(getattr(self, name), name))
        _check_text(self.model_id, "model_id", 1, 64, ascii_only=True)
        _check_sha(self.weights_sha256, "weights_sha256")
        _check_text(self.rate_tag, "rate_tag", 0, 32, ascii_only=True)
        _check_int(self.height, "height", 1, MAX_SIDE)
        _check_int(self.width, "width", 1, MAX_SIDE)
        _check(
            self.height * self.width <= MAX_PIXELS,
            f"image of {self.height}x{self.width} pixels exceeds the cap of {MAX_PIXELS} pixels",
        )
        _check_int(self.channels, "channels", 1, 4)
        _check(self.bit_depth in (8, 16), f"bit_depth must be 8 or 16, got {self.bit_depth}")
        _check_int(self.pad_bottom, "pad_bottom", 0, MAX_PAD)
        _check_int(self.pad_right, "pad_right", 0, MAX_PAD)
        for name in ("y_shape", "z_shape"):
            for axis, v in zip("CHW", getattr(self, name), strict=True):
                _check_int(v, f"{name}[{axis}]", 1, MAX_LATENT_CHANNELS if axis == "C" else MAX_SIDE)
        padded = (self.height + self.pad_bottom, self.width + self.pad_right)
        _check(
            padded[0] % Y_STRIDE == 0 and padded[1] % Y_STRIDE == 0,
            f"padded size {padded[0]}x{padded[1]} is not a multiple of {Y_STRIDE}",
        )
        expect_y = (padded[0] // Y_STRIDE, padded[1] // Y_STRIDE)
        _check(
            self.y_shape[1:] == expect_y,
            f"y_shape {self.y_shape} does not match the padded image {padded[0]}x{padded[1]} "
            f"(expected spatial size {expect_y})",
        )
        expect_z = tuple(math.ceil(v / Z_STRIDE) for v in expect_y)
        _check(
            self.z_shape[1:] == expect_z,
            f"z_shape {self.z_shape} does not match y_shape {self.y_shape} "
            f"(expected spatial size {expect_z})",
        )
        _check(isinstance(self.hints, DecoderHints), "hints must be a DecoderHints")
        if self.provenance is not None:
            _check(isinstance(self.provenance, dict), "provenance must be a dict")
            encoded = _provenance_bytes(self.provenance)
            _check(len(encoded) <= MAX_PROVENANCE_BYTES, f"provenance exceeds {MAX_PROVENANCE_BYTES} bytes")
            object.__setattr__(self, "provenance", json.loads(encoded))  # as a reader will see it


def _provenance_bytes(provenance: dict) -> bytes:
    try:
        text = json.dumps(provenance, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CadcFormatError(f"provenance is not JSON-serializable: {e}") from e
    return text.encode("utf-8")


def _varint(value: int) -> bytes:
    _check(0 <= value < _VARINT_LIMIT, f"value {value} does not fit a CADC varint")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _short_text(text: str) -> bytes:
    data = text.encode("ascii")
    return bytes([len(data)]) + data


def _records(h: CadcHeader) -> bytes:
    """TLV records for the hints and provenance, in increasing tag order."""
    rec: list[tuple[int, bytes]] = []
    hints = h.hints
    for text, table, tag_text, tag_id in (
        (hints.captioner_id, KNOWN_CAPTIONERS, _TAG_CAPTIONER, _TAG_CAPTIONER_ID),
        (hints.fixed_prompt, KNOWN_PROMPTS, _TAG_PROMPT, _TAG_PROMPT_ID),
    ):
        if text is not None:
            known = [k for k, v in table.items() if v == text]
            rec.append((tag_id, bytes(known[:1])) if known else (tag_text, text.encode("utf-8")))
    if hints.timestep is not None:
        rec.append((_TAG_TIMESTEP, _varint(hints.timestep)))
    if hints.sd_model_sha256 is not None:
        rec.append((_TAG_SD_SHA, hints.sd_model_sha256))
    if h.provenance is not None:
        rec.append((_TAG_PROVENANCE, _provenance_bytes(h.provenance)))
    return b"".join(bytes([tag]) + _varint(len(v)) + v for tag, v in rec)


def _pack_header(h: CadcHeader, lengths: Sequence[int]) -> bytes:
    """Magic through header CRC (everything before the payload)."""
    fmt = h.channels | (0x10 if h.bit_depth == 16 else 0)
    body = b"".join(
        [
            _short_text(h.model_id),
            h.weights_sha256,
            _short_text(h.rate_tag),
            _varint(h.height),
            _varint(h.width),
            bytes([fmt]),
            _varint(h.pad_bottom),
            _varint(h.pad_right),
            *(_varint(v) for v in (*h.y_shape, *h.z_shape)),
            _varint(len(lengths)),
            *(_varint(n) for n in lengths),
            _records(h),
        ]
    )
    _check(len(body) <= 0xFFFF, f"header of {len(body)} bytes exceeds 65535")
    head = MAGIC + bytes(VERSION) + struct.pack("<H", len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


class _Reader:
    """Bounds-checked cursor over the header body; every overrun is a CadcFormatError."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int, what: str) -> bytes:
        _check(self.pos + n <= self.end, f"header ends inside {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str) -> int:
        value = 0
        for i in range(4):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                _check(byte or i == 0, f"{what}: non-minimal varint")
                return value
        raise CadcFormatError(f"{what}: varint longer than 4 bytes")

    def text(self, n: int, what: str, encoding: str) -> str:
        raw = self.take(n, what)
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError as e:
            raise CadcFormatError(f"{what} is not valid {encoding}") from e


def _parse_records(r: _Reader) -> tuple[DecoderHints, dict | None]:
    fields: dict[int, object] = {}
    last = -1
    while r.pos < r.end:
        tag = r.u8("record tag")
        _check(tag > last, f"record tag 0x{tag:02x} out of order or repeated")
        last = tag
        n = r.varint(f"record 0x{tag:02x} length")
        sub = _Reader(r.data, r.pos, r.pos + n)
        r.take(n, f"record 0x{tag:02x}")
        if tag in (_TAG_CAPTIONER, _TAG_PROMPT):
            fields[tag] = sub.text(n, f"record 0x{tag:02x}", "utf-8")
        elif tag in (_TAG_CAPTIONER_ID, _TAG_PROMPT_ID):
            table = KNOWN_CAPTIONERS if tag == _TAG_CAPTIONER_ID else KNOWN_PROMPTS
            _check(n == 1, f"record 0x{tag:02x} must be 1 byte")
            key = sub.u8("well-known id")
            _check(key in table, f"unknown well-known id {key} in record 0x{tag:02x}")
            _check(tag - 1 not in fields, f"record 0x{tag:02x} repeats a hint already given as text")
            fields[tag - 1] = table[key]
        elif tag == _TAG_TIMESTEP:
            fields[tag] = sub.varint("timestep")
            _check(sub.pos == sub.end, "timestep record has trailing bytes")
        elif tag == _TAG_SD_SHA:
            fields[tag] = sub.take(n, "sd_model_sha256")
        elif tag == _TAG_PROVENANCE:
            _check(n <= MAX_PROVENANCE_BYTES, f"provenance JSON exceeds {MAX_PROVENANCE_BYTES} bytes")
            text = sub.text(n, "provenance", "utf-8")
            try:
                prov = json.loads(text)
            except (ValueError, RecursionError) as e:
                raise CadcFormatError(f"provenance is not valid JSON: {e}") from e
            _check(isinstance(prov, dict), "provenance must be a JSON object")
            fields[tag] = prov
        else:
            _check(
                tag < _TAG_REQUIRED,
                f"required field 0x{tag:02x} is unknown to this reader; a newer CADC version is needed",
            )
    hints = DecoderHints(
        captioner_id=fields.get(_TAG_CAPTIONER),  # type: ignore[arg-type]
        fixed_prompt=fields.get(_TAG_PROMPT),  # type: ignore[arg-type]
        timestep=fields.get(_TAG_TIMESTEP),  # type: ignore[arg-type]
        sd_model_sha256=fields.get(_TAG_SD_SHA),  # type: ignore[arg-type]
    )
    return hints, fields.get(_TAG_PROVENANCE)  # type: ignore[return-value]


def _parse_header(data: bytes) -> tuple[CadcHeader, tuple[int, ...], int]:
    """Check and parse the header; returns (header, stream lengths, offset of the payload)."""
    _check(len(data) >= 4, f"truncated: {len(data)} bytes is too short for a CADC file")
    _check(data[:4] == MAGIC, f"bad magic {data[:4]!r}: not a CADC file")
    _check(len(data) >= _FIXED_PREFIX, "truncated inside the version / header length")
    major, minor = data[4], data[5]
    _check(
        major == VERSION[0],
        f"unknown major version {major}.{minor}; this reader supports {VERSION[0]}.x",
    )
    (body_len,) = struct.unpack_from("<H", data, 6)
    end = _FIXED_PREFIX + body_len
    _check(len(data) >= end + 4, f"truncated: header needs {end + 4} bytes, only {len(data)} present")
    (stored,) = struct.unpack_from("<I", data, end)
    actual = zlib.crc32(data[:end])
    _check(stored == actual, f"header CRC mismatch (stored {stored:08x}, computed {actual:08x})")
    r = _Reader(data, _FIXED_PREFIX, end)
    model_id = r.text(r.u8("model_id length"), "model_id", "ascii")
    weights_sha = r.take(32, "weights_sha256")
    rate_tag = r.text(r.u8("rate_tag length"), "rate_tag", "ascii")
    height, width = r.varint("height"), r.varint("width")
    fmt = r.u8("pixel_format")
    _check(fmt & ~0x1F == 0, f"pixel_format 0x{fmt:02x} has reserved bits set")
    pad_bottom, pad_right = r.varint("pad_bottom"), r.varint("pad_right")
    shapes = [r.varint("latent shape") for _ in range(6)]
    count = r.varint("stream_count")
    _check(1 <= count <= MAX_STREAMS, f"stream count {count} is outside 1..{MAX_STREAMS}")
    lengths = tuple(r.varint("stream length") for _ in range(count))
    hints, provenance = _parse_records(r)
    header = CadcHeader(
        model_id=model_id,
        weights_sha256=weights_sha,
        rate_tag=rate_tag,
        height=height,
        width=width,
        channels=fmt & 0x0F,
        bit_depth=16 if fmt & 0x10 else 8,
        pad_bottom=pad_bottom,
        pad_right=pad_right,
        y_shape=tuple(shapes[:3]),  # type: ignore[arg-type]
        z_shape=tuple(shapes[3:]),  # type: ignore[arg-type]
        hints=hints,
        provenance=provenance,
    )
    return header, lengths, end + 4


@dataclass(frozen=True)
class CadcFile:
    """A header and its coded streams (normally one rANS stream holding ẑ then ŷ)."""

    header: CadcHeader
    streams: tuple[bytes, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "streams", tuple(self.streams))
        _check(isinstance(self.header, CadcHeader), "header must be a CadcHeader")
        _check(1 <= len(self.streams) <= MAX_STREAMS, f"stream count must be 1..{MAX_STREAMS}")
        _check(all(isinstance(s, bytes) for s in self.streams), "streams must be bytes")
        total = sum(map(len, self.streams))
        _check(total < MAX_FILE_BYTES, f"payload of {total} bytes exceeds {MAX_FILE_BYTES}")

    @property
    def payload_bytes(self) -> int:
        """Bytes of the coded streams (what the paper's bpp counts)."""
        return sum(map(len, self.streams))

    @property
    def bpp(self) -> float:
        """Payload bits per pixel of the original image (header excluded)."""
        return 8 * self.payload_bytes / (self.header.height * self.header.width)

    @property
    def header_bytes(self) -> int:
        """Bytes of the file that are not stream payload (header, both CRCs)."""
        return len(_pack_header(self.header, [len(s) for s in self.streams])) + 4

    def to_bytes(self) -> bytes:
        """Serialize as format version 1.0."""
        head = _pack_header(self.header, [len(s) for s in self.streams])
        body = head + b"".join(self.streams)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> CadcFile:
        """Parse and fully check a file; any problem raises :class:`CadcFormatError`."""
        data = bytes(data)
        _check(len(data) <= MAX_FILE_BYTES, f"file of {len(data)} bytes exceeds the cap of {MAX_FILE_BYTES}")
        header, lengths, pos = _parse_header(data)
        payload = sum(lengths)
        _check(
            len(data) == pos + payload + 4,
            f"{'truncated' if len(data) < pos + payload + 4 else 'trailing data'}: header declares "
            f"{payload} payload bytes, file has {len(data) - pos - 4}",
        )
        (stored,) = struct.unpack_from("<I", data, len(data) - 4)
        actual = zlib.crc32(memoryview(data)[:-4])
        _check(stored == actual, f"file CRC mismatch (stored {stored:08x}, computed {actual:08x})")
        streams = []
        for n in lengths:
            streams.append(data[pos : pos + n])
            pos += n
        return cls(header, tuple(streams))


def read_header(data: bytes) -> CadcHeader:
    """Parse only the header (checks its CRC, not the payload's); ``data`` may be just a file prefix."""
    return _parse_header(bytes(data[: _FIXED_PREFIX + 0xFFFF + 4]))[0]


def read_cadc(path: str | os.PathLike) -> CadcFile:
    """Read and check a ``.cadc`` file; files over ``MAX_FILE_BYTES`` are refused before reading."""
    size = os.stat(path).st_size
    _check(size <= MAX_FILE_BYTES, f"{path}: {size} bytes exceeds the cap of {MAX_FILE_BYTES}")
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    try:
        return CadcFile.from_bytes(data)
    except CadcFormatError as e:
        raise CadcFormatError(f"{path}: {e}") from e


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file in the target's folder, fsync it and rename it over ``path``.

    A crash or interrupt leaves either the old file or the new one, never a partial one. The file
    gets the usual permissions (0o666 minus umask).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_cadc(path: str | os.PathLike, f: CadcFile) -> int:
    """Write ``f`` atomically; returns the number of bytes written."""
    data = f.to_bytes()
    atomic_write_bytes(path, data)
    return len(data)


def check_model(header: CadcHeader, model_id: str, weights_sha256: bytes | str) -> None:
    """Raise :class:`CadcFormatError` naming both models when the file was coded with another one.

    ``weights_sha256`` may be the raw 32-byte digest or its hex string.
    """
    theirs = weights_sha256 if isinstance(weights_sha256, str) else weights_sha256.hex()
    ours = header.weights_sha256.hex()
    if theirs.lower() != ours or model_id != header.model_id:
        raise CadcFormatError(
            f"model mismatch: the file was encoded with model {header.model_id!r} (weights sha256 {ours}) "
            f"but the loaded model is {model_id!r} (weights sha256 {theirs.lower()}); "
            "load the checkpoint the file was made with"
        )


def header_to_json(h: CadcHeader) -> dict:
    """JSON-ready dict of the header (hashes as hex), e.g. for ``cadc info``."""
    hints = h.hints
    return {
        "model_id": h.model_id,
        "weights_sha256": h.weights_sha256.hex(),
        "rate_tag": h.rate_tag,
        "height": h.height,
        "width": h.width,
        "channels": h.channels,
        "bit_depth": h.bit_depth,
        "pad_bottom": h.pad_bottom,
        "pad_right": h.pad_right,
        "y_shape": list(h.y_shape),
        "z_shape": list(h.z_shape),
        "hints": {
            "captioner_id": hints.captioner_id,
            "fixed_prompt": hints.fixed_prompt,
            "timestep": hints.timestep,
            "sd_model_sha256": hints.sd_model_sha256.hex() if hints.sd_model_sha256 else None,
        },
        "provenance": h.provenance,
    }
