"""Both rANS coders on the decoder fuzz corpus: every input gives the same image or the same error.

The inputs are ``scripts/fuzz_decoder.py``'s (valid files, mutated payloads, random headers, byte
mutations with and without fixed CRCs, random bytes), decoded through ``decode_file`` as
``cadc decompress --aux-only`` does, once with compressai's C++ decoder and once with the pure-Python
one. Garbage payloads exercise escapes with nibble counts no encoder writes, reads past the end of
the stream and the stream-length bound.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
import torch

from cadc.codec_io import decode_file
from cadc.container import CadcFile, CadcFormatError
from cadc.entropy import CODER_ENV

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from fuzz_decoder import FUZZ_MAX_PIXELS, Target

CASES = 200


@pytest.fixture(scope="module")
def target() -> Target:
    from cadc._compressai import COMPRESSAI_ERROR

    if COMPRESSAI_ERROR is not None:
        pytest.skip(f"compressai's coder is not importable: {COMPRESSAI_ERROR}")
    return Target()


def outcome(target: Target, data: bytes) -> tuple:
    """("error", message) or ("decoded", ŷ, x̂_aux) for one input with the coder chosen by the environment."""
    try:
        cadc_file = CadcFile.from_bytes(data)
        codec = target.codecs.get(cadc_file.header.weights_sha256) or next(iter(target.codecs.values()))
        decoded = decode_file(codec, cadc_file, max_pixels=FUZZ_MAX_PIXELS)
    except CadcFormatError as error:
        return ("error", str(error))
    return ("decoded", decoded.latent.y_hat, decoded.x_aux)


def test_fuzz_corpus_decodes_the_same_with_both_coders(target, monkeypatch):
    seen = collections.Counter()
    for index in range(CASES):
        kind, data, _ = target.make_input(0, index)
        results = {}
        for coder in ("compressai", "python"):
            monkeypatch.setenv(CODER_ENV, coder)
            results[coder] = outcome(target, data)
        cpp, python = results["compressai"], results["python"]
        assert cpp[0] == python[0], (index, kind, cpp[:2], python[:2])
        if cpp[0] == "error":
            assert cpp[1] == python[1], (index, kind)
        else:
            assert torch.equal(cpp[1], python[1]) and torch.equal(cpp[2], python[2]), (index, kind)
        seen[(kind, cpp[0])] += 1
    assert seen[("payload", "decoded")] >= 20, seen  # garbage really went through both decoders
    assert seen[("bytes", "error")] >= 10, seen  # and so did broken containers
