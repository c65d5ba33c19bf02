"""Entropy-coder benchmark: the pure-Python rANS coder (and compressai's C++ one when it imports) in the
encode and decode of the paper-size codec (``sd-turbo`` preset, seeded random weights).

For each size the codec compresses one image (``exact=False``) and decompresses it with g_aux, with
its per-stage timings; every ``StreamEncoder``/``StreamDecoder`` call is recorded, then replayed
with each coder alone, so the coder's seconds are measured without the networks around them.
Reported per coder: symbols, seconds, symbols/s, and the coder's share of the whole encode and
decode (the measured total with that coder's time in place of the recorded one).

At 24 MP the analysis transform and g_s need more memory and time than a benchmark should (tens
of GiB, minutes): there ŷ and ẑ are synthetic (rounded Gaussians, σ = 0.6: mostly zeros), the
entropy stages (parameter networks + coder) run for real, and the networks' seconds are scaled per
pixel from the largest real size (``networks_scaled_from`` says which). Coder seconds are given
as wall time (for the shares) and as the thread's CPU time (symbols/s; not inflated by other load
on the machine). Prints one JSON report on stdout.

    python benchmarks/entropy_coder.py                    # 768x512, 2048x1365, 6000x4000 (24 MP)
    python benchmarks/entropy_coder.py --sizes 768x512 --real-up-to 0
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from cadc import entropy  # noqa: E402
from cadc._compressai import COMPRESSAI_ERROR  # noqa: E402
from cadc.config import get_preset  # noqa: E402
from cadc.images import pad_to_multiple  # noqa: E402
from cadc.weights import build_tiny_random  # noqa: E402

SIZES = ("768x512", "2048x1365", "6000x4000")
ENCODER_NETWORKS = ("g_a", "hyperprior", "ugaq")
DECODER_NETWORKS = ("g_s", "g_aux")


@dataclass
class Recording:
    """What the codec handed the coder during one encode and one decode, and how long the coder took."""

    encode_runs: list = field(default_factory=list)  # (symbols, indexes, tables)
    decode_runs: list = field(default_factory=list)  # (indexes, tables)
    payload: bytes = b""
    symbol_count: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0


class Recorder:
    """Wraps StreamEncoder/StreamDecoder methods to record their inputs and time them."""

    def __init__(self) -> None:
        self.recording = Recording()
        self._originals = {}

    def __enter__(self) -> Recording:
        rec = self.recording
        enc, dec = entropy.StreamEncoder, entropy.StreamDecoder
        self._originals = {
            (enc, "encode"): enc.encode, (enc, "finish"): enc.finish,
            (dec, "__init__"): dec.__init__, (dec, "decode"): dec.decode,
        }
        originals = self._originals

        def timed(key, record):
            def wrapper(obj, *args, **kwargs):
                start = time.perf_counter()
                result = originals[key](obj, *args, **kwargs)
                seconds = time.perf_counter() - start
                record((*args, *kwargs.values()), result, seconds)
                return result
            return wrapper

        def on_encode(args, _, s):
            rec.encode_runs.append((args[0].clone(), args[1].clone(), args[2]))
            rec.encode_seconds += s

        def on_finish(_, payload, s):
            rec.payload, rec.encode_seconds = payload, rec.encode_seconds + s

        def on_init(args, _, s):
            rec.symbol_count, rec.decode_seconds = args[1], rec.decode_seconds + s

        def on_decode(args, _, s):
            rec.decode_runs.append((args[0].clone(), args[1]))
            rec.decode_seconds += s

        enc.encode = timed((enc, "encode"), on_encode)
        enc.finish = timed((enc, "finish"), on_finish)
        dec.__init__ = timed((dec, "__init__"), on_init)
        dec.decode = timed((dec, "decode"), on_decode)
        return rec

    def __exit__(self, *exc) -> None:
        for (cls, name), function in self._originals.items():
            setattr(cls, name, function)


def fresh(tables: entropy.CdfTables) -> entropy.CdfTables:
    """The same tables without the cached coder-side copy (its build is part of the coder's time)."""
    return entropy.CdfTables(tables.cdfs, tables.lengths, tables.offsets)


def replay(rec: Recording, coder: str) -> dict:
    """Run the recorded symbols through ``coder`` alone, both ways.

    ``*_s`` are wall seconds (comparable with the stage timings); ``*_cpu_s`` the thread's CPU
    seconds, which a loaded machine does not inflate; symbols/s are per CPU second.
    """
    start, cpu = time.perf_counter(), time.thread_time()
    encoder = entropy.StreamEncoder(coder)
    for symbols, indexes, tables in rec.encode_runs:
        encoder.encode(symbols, indexes, fresh(tables))
    payload = encoder.finish()
    encode_s, encode_cpu = time.perf_counter() - start, time.thread_time() - cpu
    if payload != rec.payload:
        raise RuntimeError(f"the {coder} coder wrote other bytes than the recorded run")
    start, cpu = time.perf_counter(), time.thread_time()
    decoder = entropy.StreamDecoder(payload, rec.symbol_count, coder)
    for indexes, tables in rec.decode_runs:
        decoder.decode(indexes, fresh(tables))
    decode_s, decode_cpu = time.perf_counter() - start, time.thread_time() - cpu
    return {
        "encode_s": round(encode_s, 4),
        "decode_s": round(decode_s, 4),
        "encode_cpu_s": round(encode_cpu, 4),
        "decode_cpu_s": round(decode_cpu, 4),
        "encode_symbols_per_s": round(rec.symbol_count / encode_cpu),
        "decode_symbols_per_s": round(rec.symbol_count / decode_cpu),
    }


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def run_size(codec, width: int, height: int, real: bool, per_pixel: dict[str, float] | None) -> dict:
    """One size: encode + decode (real or synthetic latents), coder replays, shares."""
    generator = torch.Generator().manual_seed(width * height)
    image = torch.rand(1, 3, height, width, generator=generator)
    padded, _ = pad_to_multiple(image, 64)
    pixels = padded.shape[-2] * padded.shape[-1]
    enc_t: dict[str, float] = {}
    dec_t: dict[str, float] = {}
    with Recorder() as rec, torch.inference_mode():
        if real:
            compressed = codec.compress(padded, exact=False, timings=enc_t)[0]
            codec.decompress(compressed.payload, compressed.y_shape, compressed.z_shape, timings=dec_t)
        else:
            y_shape = (codec.config.y_channels, padded.shape[-2] // 64, padded.shape[-1] // 64)
            z_shape = (codec.config.z_channels, math.ceil(y_shape[1] / 4), math.ceil(y_shape[2] / 4))
            # mostly zeros with some ±1, like the real latents of the smaller sizes (~0.03 bits/symbol)
            z_symbols = torch.round(torch.randn(1, *z_shape, generator=generator) * 0.6).long()
            y_hat = torch.round(torch.randn(1, *y_shape, generator=generator, dtype=torch.float64) * 0.6)
            start = time.perf_counter()
            compressed = codec._code_one(z_symbols, y_hat)
            enc_t["entropy_encode"] = time.perf_counter() - start
            start = time.perf_counter()
            codec._decode_y_hat(compressed.payload, compressed.y_shape, compressed.z_shape)
            dec_t["entropy_decode"] = time.perf_counter() - start
            for name in (*ENCODER_NETWORKS, *DECODER_NETWORKS):
                (enc_t if name in ENCODER_NETWORKS else dec_t)[name] = per_pixel[name] * pixels
    encode_total, decode_total = sum(enc_t.values()), sum(dec_t.values())
    coders = {}
    for coder in ("python", *(() if COMPRESSAI_ERROR else ("compressai",))):
        timing = replay(rec, coder)
        timing["encode_share"] = round(
            timing["encode_s"] / (encode_total - rec.encode_seconds + timing["encode_s"]), 4
        )
        timing["decode_share"] = round(
            timing["decode_s"] / (decode_total - rec.decode_seconds + timing["decode_s"]), 4
        )
        coders[coder] = timing
    return {
        "size": f"{width}x{height}",
        "padded": f"{padded.shape[-1]}x{padded.shape[-2]}",
        "symbols": rec.symbol_count,
        "payload_bytes": len(rec.payload),
        "latents": "real" if real else "synthetic",
        "encode_stages_s": {k: round(v, 3) for k, v in enc_t.items()},
        "decode_stages_s": {k: round(v, 3) for k, v in dec_t.items()},
        "coders": coders,
        "_per_pixel": {k: v / pixels for k, v in (enc_t | dec_t).items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="WIDTHxHEIGHT ...")
    parser.add_argument("--real-up-to", type=int, default=2048 * 1408,
                        help="largest padded pixel count encoded/decoded for real (larger: synthetic latents)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    codec = build_tiny_random(get_preset("sd-turbo"))
    codec.prepare(encoder=False)  # h_s and the context networks in float64 (exact=False encodes in float32)
    results, per_pixel, scaled_from = [], None, None
    for text in args.sizes:
        width, height = parse_size(text)
        real = math.ceil(width / 64) * math.ceil(height / 64) * 64**2 <= args.real_up_to
        if not real and per_pixel is None:
            raise SystemExit(f"{text}: synthetic latents need a smaller real size first (--real-up-to)")
        result = run_size(codec, width, height, real, per_pixel)
        if real:
            per_pixel, scaled_from = result["_per_pixel"], result["size"]
        else:
            result["networks_scaled_from"] = scaled_from
        del result["_per_pixel"]
        results.append(result)
        print(f"{text}: {json.dumps(result['coders'])}", file=sys.stderr)
    report = {
        "benchmark": "entropy_coder",
        "codec": "sd-turbo preset, seeded random weights (build_tiny_random)",
        "coder_default": entropy.entropy_coder(),
        "compressai": COMPRESSAI_ERROR or "available",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": args.threads,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
