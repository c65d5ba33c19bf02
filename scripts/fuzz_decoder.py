#!/usr/bin/env python3
"""Long fuzz run of the whole read + decode path: ``CadcFile.from_bytes`` → ``decode_file``.

Every input goes through what ``cadc decompress --aux-only`` does with a file's bytes: parse and
check the container, check the decode size and the model (weights hash), entropy-decode ẑ and
the four quadtree steps of ŷ with CompressAI's C++ rANS decoder, run g_s and g_aux. The models
are ``tiny-random`` and its seeded "busy" variant (``tests/conftest.py``: many non-zero symbols);
the input's weights hash picks the model, so files of one model sent to the other are exercised
too.

Inputs (each determined by ``--seed`` and its index alone, so any one can be replayed with
``--only INDEX``):

* ``payload`` (22 %): a valid file whose streams are mutated (bit flips, random/zero/0xff bytes,
  cuts, extensions, splices from other files, split into several streams), the file rebuilt with
  valid CRCs — so the rANS decoder and the networks really see the garbage;
* ``header`` (6 %): a well-formed header with random image size (1 px .. the format's cap),
  padding, pixel format, latent shapes (mostly the model's, sometimes not), model id / hash, and
  a random or foreign payload;
* ``bytes`` (65 %): byte-level mutations of whole files (``scripts/fuzz_container.py``'s
  mutator), both CRCs recomputed in 70 % of cases;
* ``random`` (5 %): random bytes, half of them behind a ``CADC`` magic;
* ``valid`` (2 %): an unmutated file, which must decode to exactly the encoder's ŷ.

Allowed outcomes: :class:`CadcFormatError` (the codec's own error for a bad file, a wrong model,
a size over the decode limit), or a decode whose ŷ / l_T / x̂_aux have the header's shapes, are
finite, and whose x̂_aux lies in 0..1. Anything else is *unexpected*: another exception, a crash
of the process (inputs run in a worker subprocess; a segfault is recorded and the worker
restarted after that input), an input running over ``--timeout`` seconds, or the worker's peak
RSS over ``--max-rss-mib``.

    python scripts/fuzz_decoder.py --count 100000 --seed 0 --workers 2

Prints a JSON summary; exit status 1 when anything unexpected happened.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import random
import re
import resource
import select
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

FUZZ_MAX_PIXELS = 2**20
"""Decode limit during the run (the CLI's default is 2**25); larger headers must be refused."""
KINDS = (("payload", 0.22), ("header", 0.06), ("bytes", 0.65), ("random", 0.05), ("valid", 0.02))
CORPUS_SIZES = ((64, 64), (50, 70), (130, 200), (64, 192), (257, 129), (1, 1))


# ------------------------------------------------------------------ worker side (imports torch)


class Target:
    """The two codecs and a corpus of valid files (with the ŷ the encoder coded) for each."""

    def __init__(self) -> None:
        import torch

        from cadc.codec_io import encode_tensor
        from cadc.weights import build_tiny_random, weights_hash
        from tests.conftest import make_busy, make_photo

        torch.set_num_threads(1)
        tiny = build_tiny_random()
        busy = build_tiny_random()
        make_busy(busy)
        busy.eval()
        self.codecs = {weights_hash(tiny): tiny, weights_hash(busy): busy}
        self.corpus: list[tuple[bytes, torch.Tensor]] = []
        for index, (height, width) in enumerate(CORPUS_SIZES):
            for codec in (tiny, busy):
                encoded = encode_tensor(codec, make_photo(height, width, seed=index))[0]
                self.corpus.append((encoded.file.to_bytes(), encoded.compressed.y_hat))

    def make_input(self, seed: int, index: int) -> tuple[str, bytes, int | None]:
        """(kind, input bytes, corpus index whose ŷ an exact decode must give, or None)."""
        from fuzz_container import fix_crcs, mutate

        rng = random.Random(f"cadc-decoder-fuzz:{seed}:{index}")
        kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        pick = rng.randrange(len(self.corpus))
        data = self.corpus[pick][0]
        if kind == "valid":
            return kind, data, pick
        if kind == "payload":
            return kind, self._mutate_payload(rng, data), None
        if kind == "header":
            return kind, self._random_header_file(rng, data), None
        if kind == "random":
            raw = rng.randbytes(rng.randint(0, 400))
            return kind, (b"CADC\x01\x00" + raw if rng.random() < 0.5 else raw), None
        mutable = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            mutate(rng, mutable, rng.choice(self.corpus)[0])
        if rng.random() < 0.7:
            fix_crcs(mutable)
        return kind, bytes(mutable), None

    def _mutate_payload(self, rng: random.Random, data: bytes) -> bytes:
        from cadc.container import CadcFile

        f = CadcFile.from_bytes(data)
        payload = bytearray(b"".join(f.streams))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(8)
            pos = rng.randrange(len(payload) + 1)
            if op == 0 and payload:
                for _ in range(rng.randint(1, 8)):
                    payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
            elif op == 1 and pos < len(payload):
                payload[pos] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)])
            elif op == 2:
                del payload[pos:]
            elif op == 3:
                payload[pos:pos] = rng.randbytes(rng.randint(1, 64))
            elif op == 4:
                fill = rng.choice([b"\x00", b"\xff", b"\x80", b"\x7f", None])
                size = rng.choice([0, 1, 3, 4, 8, 32, 300, 4000])
                payload = bytearray(fill * size if fill else rng.randbytes(size))
            elif op == 5:
                other = b"".join(CadcFile.from_bytes(rng.choice(self.corpus)[0]).streams)
                payload[pos : pos + rng.randint(0, 16)] = other[rng.randrange(len(other) + 1) :]
            elif op == 6 and payload:  # overwrite a run with one repeated byte
                payload[pos : pos + rng.randint(1, 32)] = bytes([rng.randrange(256)]) * rng.randint(1, 32)
            elif op == 7:  # the rANS state words come first: scramble them
                payload[:4] = rng.randbytes(4)
        cuts = sorted(rng.randint(0, len(payload)) for _ in range(rng.choice([0, 0, 0, 1, 3])))
        bounds = [0, *cuts, len(payload)]
        streams = tuple(bytes(payload[a:b]) for a, b in itertools.pairwise(bounds))
        return CadcFile(f.header, streams).to_bytes()

    def _random_header_file(self, rng: random.Random, data: bytes) -> bytes:
        from cadc.container import MAX_PIXELS, MAX_SIDE, CadcFile, CadcHeader

        f = CadcFile.from_bytes(data)
        side = rng.choice([lambda: rng.randint(1, 300), lambda: rng.randint(1, 1100), lambda: rng.randint(1, MAX_SIDE)])
        height, width = side(), side()
        while height * width > MAX_PIXELS:
            width = max(1, width // 2)
        pad_bottom = -height % 64 + 64 * rng.choice([0, 0, 0, 1, 3])
        pad_right = -width % 64 + 64 * rng.choice([0, 0, 0, 1])
        y_hw = ((height + pad_bottom) // 64, (width + pad_right) // 64)
        y_c = rng.choice([f.header.y_shape[0]] * 8 + [4, 320, rng.randint(1, 1024)])
        z_c = rng.choice([f.header.z_shape[0]] * 8 + [320, rng.randint(1, 1024)])
        z_hw = (-(-y_hw[0] // 4), -(-y_hw[1] // 4))
        codec_hashes = list(self.codecs)
        header = CadcHeader(
            model_id=rng.choice([f.header.model_id] * 9 + ["cadc-sd-turbo"]),
            weights_sha256=rng.choice([*codec_hashes, *codec_hashes, *codec_hashes, rng.randbytes(32)]),
            rate_tag=f.header.rate_tag,
            height=height,
            width=width,
            channels=rng.randint(1, 4),
            bit_depth=rng.choice([8, 16]),
            pad_bottom=pad_bottom,
            pad_right=pad_right,
            y_shape=(y_c, *y_hw),
            z_shape=(z_c, *z_hw),
            hints=f.header.hints if rng.random() < 0.5 else type(f.header.hints)(),
        )
        payload = rng.choice([b"".join(f.streams), rng.randbytes(rng.randint(0, 600)), b"", b"\xff" * 64])
        return CadcFile(header, (payload,)).to_bytes()

    def run_one(self, data: bytes, exact: int | None) -> str:
        """'decoded' / 'exact' or 'format: <message>'; raises on anything unexpected."""
        import torch

        from cadc.codec_io import decode_file
        from cadc.container import CadcFile, CadcFormatError

        try:
            f = CadcFile.from_bytes(data)
            codec = self.codecs.get(f.header.weights_sha256) or next(iter(self.codecs.values()))
            decoded = decode_file(codec, f, max_pixels=FUZZ_MAX_PIXELS)
        except CadcFormatError as e:
            return "format: " + re.sub(r"[0-9a-f]{8,}|\d+(\.\d+)?", "N", str(e))[:70]
        h = f.header
        latent = decoded.latent
        padded = (h.height + h.pad_bottom, h.width + h.pad_right)
        if tuple(latent.y_hat.shape) != (1, *h.y_shape):
            raise AssertionError(f"y_hat shape {tuple(latent.y_hat.shape)} != {h.y_shape}")
        if tuple(latent.l_T.shape[-2:]) != (padded[0] // 8, padded[1] // 8):
            raise AssertionError(f"l_T shape {tuple(latent.l_T.shape)} for padded size {padded}")
        if tuple(decoded.x_aux.shape) != (1, 3, h.height, h.width):
            raise AssertionError(f"x_aux shape {tuple(decoded.x_aux.shape)} != {(h.height, h.width)}")
        for name, t in (("y_hat", latent.y_hat), ("l_T", latent.l_T), ("x_aux", decoded.x_aux)):
            if not bool(torch.isfinite(t).all()):
                raise AssertionError(f"{name} has NaN/inf")
        if float(decoded.x_aux.min()) < 0.0 or float(decoded.x_aux.max()) > 1.0:
            raise AssertionError("x_aux outside 0..1")
        if exact is not None:
            if not torch.equal(latent.y_hat, self.corpus[exact][1]):
                raise AssertionError("valid file decoded to another y_hat")
            return "exact"
        return "decoded"


def worker(seed: int, start: int, stop: int) -> None:
    """Run inputs start..stop-1; one line per input on stdout: index, outcome, seconds, RSS MiB, detail."""
    target = Target()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for index in range(start, stop):
        kind, data, exact = target.make_input(seed, index)
        t0 = time.perf_counter()
        try:
            outcome, detail = "ok", target.run_one(data, exact)
        except Exception as e:  # anything but CadcFormatError is a finding
            outcome, detail = "unexpected", f"{e!r} | {traceback.format_exc(limit=4)!r}"
        elapsed = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out.write(f"{index}\t{kind}\t{outcome}\t{elapsed:.4f}\t{rss:.1f}\t{detail}\n")
        out.flush()


# ------------------------------------------------------------------ parent side (no torch)


class _LineReader:
    """Lines from a pipe with a timeout (select on the raw fd, so nothing hides in a buffer)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.closed = fd, b"", False

    def next(self, timeout: float) -> str | None:
        """The next line without its newline; "" at end of stream; None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            if self.closed:
                return ""
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            self.closed = not chunk
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


class Run:
    """Drives worker subprocesses over an index range and collects their lines."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.unexpected: list[dict] = []
        self.unexpected_count = 0
        self.slowest = 0.0
        self.peak_rss = 0.0
        self.restarts = 0

    def finding(self, index: int, error: str) -> None:
        self.unexpected_count += 1
        self.outcomes["unexpected"] += 1
        if len(self.unexpected) < 20:
            self.unexpected.append(
                {"index": index, "error": error[:2000], "replay": f"--seed {self.args.seed} --only {index}"}
            )

    def drive(self, start: int, stop: int) -> None:
        """Run start..stop-1 in one worker, restarting it after a crash or a hang."""
        next_index = start
        while next_index < stop:
            with tempfile.TemporaryFile() as stderr:
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--worker", "--seed", str(self.args.seed),
                     "--start", str(next_index), "--stop", str(stop)],
                    stdout=subprocess.PIPE, stderr=stderr,
                )
                assert proc.stdout is not None
                lines = _LineReader(proc.stdout.fileno())
                timeout = self.args.startup_timeout
                while next_index < stop:
                    line = lines.next(timeout)
                    if line == "ready":
                        timeout = self.args.timeout
                        continue
                    if line is None or line == "":  # hang (None) or the worker died ("")
                        if line is None:
                            proc.kill()
                        proc.wait()
                        stderr.seek(0)
                        tail = stderr.read()[-1500:].decode(errors="replace")
                        what = (
                            f"hang: no result within {timeout} s" if line is None
                            else f"crash: worker exit status {proc.returncode}"
                        )
                        self.finding(next_index, f"{what}; stderr tail: {tail}")
                        next_index += 1
                        self.restarts += 1
                        break
                    self.record(line)
                    next_index = int(line.split("\t", 1)[0]) + 1
                else:
                    proc.wait()
                proc.stdout.close()

    def record(self, line: str) -> None:
        index, kind, outcome, elapsed, rss, detail = line.split("\t", 5)
        seconds, rss_mib = float(elapsed), float(rss)
        self.kinds[kind] += 1
        done = sum(self.kinds.values())
        if self.args.progress and done % self.args.progress == 0:
            sys.stderr.write(f"{done} inputs, {self.unexpected_count} unexpected, peak RSS {self.peak_rss:.0f} MiB\n")
        self.slowest = max(self.slowest, seconds)
        self.peak_rss = max(self.peak_rss, rss_mib)
        if outcome == "unexpected":
            self.finding(int(index), f"[{kind}] {detail}")
        elif seconds > self.args.timeout:
            self.finding(int(index), f"[{kind}] slow: {seconds:.2f} s")
        elif rss_mib > self.args.max_rss_mib:
            self.finding(int(index), f"[{kind}] peak RSS {rss_mib:.0f} MiB over {self.args.max_rss_mib}")
        else:
            self.outcomes[detail if detail in ("decoded", "exact") else "format_error"] += 1
            if detail.startswith("format: "):
                self.errors[detail[8:]] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (the range is split)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds one input may take")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds a worker may take to start")
    parser.add_argument("--max-rss-mib", type=float, default=3072.0, help="peak RSS a worker may reach")
    parser.add_argument("--progress", type=int, default=0, metavar="N", help="report on stderr every N inputs")
    parser.add_argument("--only", type=int, help="replay one input in this process and print its traceback")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker(args.seed, args.start, args.stop)
        return 0
    if args.only is not None:
        target = Target()
        kind, data, exact = target.make_input(args.seed, args.only)
        print(json.dumps({"index": args.only, "kind": kind, "input_hex": data.hex()}))
        print(target.run_one(data, exact))
        return 0

    import threading

    run = Run(args)
    started = time.perf_counter()
    bounds = [args.count * i // args.workers for i in range(args.workers + 1)]
    threads = [threading.Thread(target=run.drive, args=(a, b)) for a, b in itertools.pairwise(bounds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    done = sum(run.outcomes.values())
    summary = {
        "seed": args.seed,
        "count": done,
        "requested": args.count,
        "inputs_by_kind": dict(run.kinds),
        "decoded": run.outcomes["decoded"],
        "decoded_exactly": run.outcomes["exact"],
        "format_errors": run.outcomes["format_error"],
        "unexpected": run.unexpected_count,
        "worker_restarts": run.restarts,
        "distinct_error_messages": len(run.errors),
        "top_errors": dict(run.errors.most_common(15)),
        "seconds": round(time.perf_counter() - started, 1),
        "slowest_input_seconds": round(run.slowest, 3),
        "peak_rss_mib": round(max(run.peak_rss, children_rss), 1),
        "decode_max_pixels": FUZZ_MAX_PIXELS,
        "unexpected_examples": run.unexpected,
    }
    print(json.dumps(summary, indent=2))
    return 1 if run.unexpected_count or done != args.count else 0


if __name__ == "__main__":
    sys.exit(main())
