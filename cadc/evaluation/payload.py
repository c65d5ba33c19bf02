"""The coded bitstream inside a Pillow-written file, without its container.

Papers plot a learned codec's bpp from its entropy-coded bitstream alone (CADC's ``bpp_payload``:
the rANS bytes, not the ``.cadc`` header). For a like-for-like "payload" bpp of the classical
baselines, :func:`payload_size` strips what only the file format adds:

* AVIF (ISOBMFF / HEIF): the payloads of the top-level ``mdat`` boxes, i.e. the AV1 OBUs (sequence
  header included); ``ftyp``, ``meta`` (item info, properties, locations) are container.
* WebP (RIFF): the data of the ``VP8 ``, ``VP8L`` and ``ALPH`` chunks, i.e. the VP8/VP8L bitstream
  (its 10-byte frame header included); the RIFF header, chunk headers, padding and ``VP8X`` /
  metadata chunks are container.
* JPEG: everything but the ``APPn`` (JFIF, EXIF, ICC) and ``COM`` segments; quantisation and
  Huffman tables, frame and scan headers stay, since the decoder needs them.

The whole-file size remains the primary rate (``bpp_file``): it is what a user stores.
"""

from __future__ import annotations

import struct


class PayloadError(ValueError):
    """The bytes are not a well-formed file of the claimed format."""


def payload_size(data: bytes, file_format: str) -> int:
    """Bytes of the coded bitstream in ``data`` (a whole ``AVIF``, ``WEBP`` or ``JPEG`` file)."""
    readers = {"AVIF": _avif_payload, "WEBP": _webp_payload, "JPEG": _jpeg_payload}
    if file_format not in readers:
        raise ValueError(f"no payload reader for {file_format!r}; choose from {', '.join(readers)}")
    return readers[file_format](data)


def _avif_payload(data: bytes) -> int:
    """Sum of the top-level ``mdat`` box payloads (ISO/IEC 14496-12 box headers)."""
    total, position = 0, 0
    while position < len(data):
        if position + 8 > len(data):
            raise PayloadError(f"truncated box header at byte {position}")
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        header = 8
        if size == 1:  # 64-bit largesize follows the type
            if position + 16 > len(data):
                raise PayloadError(f"truncated largesize at byte {position}")
            (size,) = struct.unpack(">Q", data[position + 8 : position + 16])
            header = 16
        elif size == 0:  # box extends to the end of the file
            size = len(data) - position
        if size < header or position + size > len(data):
            raise PayloadError(f"box {kind!r} at byte {position} has an impossible size {size}")
        if kind == b"mdat":
            total += size - header
        position += size
    return total


def _webp_payload(data: bytes) -> int:
    """Sum of the ``VP8 ``/``VP8L``/``ALPH`` chunk data sizes (RIFF chunks are padded to even sizes)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise PayloadError("not a RIFF/WEBP file")
    total, position = 0, 12
    while position < len(data):
        if position + 8 > len(data):
            raise PayloadError(f"truncated chunk header at byte {position}")
        kind, size = struct.unpack("<4sI", data[position : position + 8])
        if position + 8 + size > len(data):
            raise PayloadError(f"chunk {kind!r} at byte {position} runs past the end")
        if kind in (b"VP8 ", b"VP8L", b"ALPH"):
            total += size
        position += 8 + size + (size & 1)
    return total


def _jpeg_payload(data: bytes) -> int:
    """File size minus the ``APPn``/``COM`` segments that precede the first scan."""
    if data[:2] != b"\xff\xd8":
        raise PayloadError("not a JPEG file (no SOI marker)")
    overhead, position = 0, 2
    while True:
        if position + 4 > len(data) or data[position] != 0xFF:
            raise PayloadError(f"no marker segment at byte {position}")
        marker = data[position + 1]
        if marker == 0xDA:  # start of scan: entropy-coded data follows, no APPn after this in Pillow's files
            return len(data) - overhead
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if length < 2:
            raise PayloadError(f"segment at byte {position} has length {length}")
        if 0xE0 <= marker <= 0xEF or marker == 0xFE:
            overhead += 2 + length
        position += 2 + length
