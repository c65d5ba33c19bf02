#!/usr/bin/env python3
"""Long fuzz run of the ``.cadc`` reader (``CadcFile.from_bytes`` and ``read_header``).

Inputs are random valid files, then 1-6 stacked mutations (bit flips, byte sets, inserts, deletes,
truncation, splices, forged varints and header lengths); in 70 % of cases both CRCs are recomputed
afterwards so the mutation reaches the field parser instead of stopping at the CRC check. A few
percent are plain random bytes. The only allowed outcomes are a parsed file (which must survive
``to_bytes`` / ``from_bytes`` unchanged) or :class:`CadcFormatError`; anything else, or an input
taking over a second, counts as unexpected. The run is fully determined by ``--seed``.

    python scripts/fuzz_container.py --count 100000 --seed 0

Prints a JSON summary; exit status 1 when anything unexpected happened.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import resource
import struct
import sys
import time
import traceback
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cadc.container import (
    KNOWN_CAPTIONERS,
    PAPER_FIXED_PROMPT,
    CadcFile,
    CadcFormatError,
    CadcHeader,
    DecoderHints,
    read_header,
)

SLOW_SECONDS = 1.0


def random_file(rng: random.Random) -> bytes:
    """A valid file with random sizes, layout, hints, provenance and 1-4 streams."""
    height, width = rng.choice([rng.randint(1, 300), rng.randint(1, 32768)]), rng.randint(1, 2000)
    pad_bottom = -height % 64 + 64 * rng.randint(0, (255 - -height % 64) // 64)
    pad_right = -width % 64
    y = (rng.randint(1, 1024), (height + pad_bottom) // 64, (width + pad_right) // 64)
    z = (rng.randint(1, 1024), -(-y[1] // 4), -(-y[2] // 4))
    hints = DecoderHints(
        captioner_id=rng.choice([None, KNOWN_CAPTIONERS[1], "my/captioner-ü"]),
        fixed_prompt=rng.choice([None, PAPER_FIXED_PROMPT, "", "a photo"]),
        timestep=rng.choice([None, 0, 999, 9999]),
        sd_model_sha256=rng.choice([None, rng.randbytes(32)]),
    )
    provenance = rng.choice([None, {}, {"tool": "cadc", "args": [1, 2.5, None, True], "n": {"x": "é"}}])
    header = CadcHeader(
        model_id=rng.choice(["cadc-sd-turbo", "cadc-tiny", "m"]),
        weights_sha256=rng.randbytes(32),
        rate_tag=rng.choice(["", "lambda=2", "r" * 32]),
        height=height,
        width=width,
        channels=rng.randint(1, 4),
        bit_depth=rng.choice([8, 16]),
        pad_bottom=pad_bottom,
        pad_right=pad_right,
        y_shape=y,
        z_shape=z,
        hints=hints,
        provenance=provenance,
    )
    streams = tuple(rng.randbytes(rng.choice([0, 1, 5, 200, 2000])) for _ in range(rng.choice([1, 1, 2, 4])))
    return CadcFile(header, streams).to_bytes()


def fix_crcs(data: bytearray) -> None:
    """Recompute both CRCs where the (possibly mutated) header length puts them."""
    if len(data) >= 8:
        end = 8 + struct.unpack_from("<H", data, 6)[0]
        if len(data) >= end + 4:
            struct.pack_into("<I", data, end, zlib.crc32(data[:end]))
        if len(data) >= end + 8:
            struct.pack_into("<I", data, len(data) - 4, zlib.crc32(data[:-4]))


def mutate(rng: random.Random, data: bytearray, other: bytes) -> None:
    """Apply one random mutation in place."""
    pos = rng.randrange(len(data) + 1)
    op = rng.randrange(9)
    if op == 0 and pos < len(data):
        data[pos] ^= 1 << rng.randrange(8)
    elif op == 1 and pos < len(data):
        data[pos] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    elif op == 2:
        data[pos:pos] = rng.randbytes(rng.randint(1, 16))
    elif op == 3:
        del data[pos : pos + rng.randint(1, 16)]
    elif op == 4:
        del data[pos:]
    elif op == 5:  # splice in a piece of another valid file
        start = rng.randrange(len(other))
        data[pos : pos + rng.randint(0, 32)] = other[start : start + rng.randint(1, 64)]
    elif op == 6:  # forge a large or overlong varint
        data[pos : pos + rng.randint(0, 4)] = rng.choice(
            [b"\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x01", b"\x81\x00"]
        )
    elif op == 7 and len(data) >= 8:  # forge the header length
        struct.pack_into("<H", data, 6, rng.choice([0, 1, 0xFFFF, rng.randrange(0x10000)]))
    elif op == 8 and len(data) >= 6:  # another version
        data[4 + rng.randrange(2)] = rng.choice([0, 1, 2, 255])


def make_input(rng: random.Random, corpus: list[bytes]) -> tuple[bytes, bool]:
    """(input, whether its CRCs were recomputed)."""
    kind = rng.random()
    if kind < 0.03:
        return rng.randbytes(rng.randint(0, 512)), False
    if kind < 0.06:
        data = bytearray(b"CADC\x01\x00" + rng.randbytes(rng.randint(0, 512)))
        fix_crcs(data)
        return bytes(data), True
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.randint(1, 6)):
        mutate(rng, data, rng.choice(corpus))
    fixed = rng.random() < 0.7
    if fixed:
        fix_crcs(data)
    return bytes(data), fixed


def check(data: bytes) -> str:
    """'ok' or the CadcFormatError message; any other exception propagates."""
    try:
        read_header(data)
        f = CadcFile.from_bytes(data)
    except CadcFormatError as e:
        return re.sub(r"[0-9a-f]{8}|\d+", "N", str(e))[:60]
    if CadcFile.from_bytes(f.to_bytes()) != f:
        raise AssertionError("parsed file changes on re-serialization")
    return "ok"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=int, default=64, help="valid seed files to mutate")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    corpus = [random_file(rng) for _ in range(args.corpus)]
    outcomes: collections.Counter[str] = collections.Counter()
    unexpected = []
    crc_fixed = 0
    slowest = 0.0
    start = time.perf_counter()
    for index in range(args.count):
        data, fixed = make_input(rng, corpus)
        crc_fixed += fixed
        t0 = time.perf_counter()
        try:
            outcome = check(data)
        except Exception as e:  # anything but CadcFormatError is a finding
            outcome = "unexpected"
            if len(unexpected) < 10:
                unexpected.append(
                    {
                        "index": index,
                        "error": repr(e),
                        "input_hex": data[:256].hex(),
                        "traceback": traceback.format_exc(limit=3),
                    }
                )
        elapsed = time.perf_counter() - t0
        slowest = max(slowest, elapsed)
        if elapsed > SLOW_SECONDS:
            outcome = "unexpected"
            unexpected.append(
                {"index": index, "error": f"slow: {elapsed:.2f} s", "input_hex": data[:256].hex()}
            )
        outcomes[outcome] += 1
    errors = {k: v for k, v in outcomes.items() if k not in ("ok", "unexpected")}
    summary = {
        "seed": args.seed,
        "count": args.count,
        "ok": outcomes["ok"],
        "format_errors": sum(errors.values()),
        "unexpected": outcomes["unexpected"],
        "crc_recomputed_inputs": crc_fixed,
        "distinct_error_messages": len(errors),
        "top_errors": dict(collections.Counter(errors).most_common(12)),
        "seconds": round(time.perf_counter() - start, 2),
        "slowest_input_seconds": round(slowest, 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "unexpected_examples": unexpected,
    }
    print(json.dumps(summary, indent=2))
    return 1 if outcomes["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
