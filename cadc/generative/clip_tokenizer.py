"""SD-Turbo's CLIP BPE tokenizer, built offline from files the user already has.

SD 2.x / SD-Turbo tokenize with OpenAI CLIP's byte-level BPE (49,408 tokens), padding with "!"
(id 0) to 77 tokens. The vocabulary is the same everywhere, so any of these sources works:

* ``vocab.json`` + ``merges.txt`` (a diffusers ``tokenizer/`` folder, or ComfyUI's
  ``comfy/sd1_tokenizer/``), or
* OpenCLIP's ``bpe_simple_vocab_16e6.txt.gz`` shipped inside the ``open_clip_torch`` package; the
  vocabulary is derived from the merges exactly as OpenCLIP does (bytes, bytes + "</w>", merges,
  then the two special tokens).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

from transformers import CLIPTokenizer

MAX_LENGTH = 77
BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "!"
_N_MERGES = 49152 - 256 - 2
"""Merges OpenCLIP reads from its BPE file (the rest of the file is unused)."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    ranges = (("!", "~"), ("¡", "¬"), ("®", "ÿ"))
    printable = [b for lo, hi in ranges for b in range(ord(lo), ord(hi) + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def vocab_from_merges(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP's token → id table implied by its merge list (OpenCLIP's construction)."""
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def make_clip_tokenizer(vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> CLIPTokenizer:
    """An SD-2-style CLIPTokenizer (pad "!", 77 tokens) from an in-memory vocabulary."""
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m) for m in merges],
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        model_max_length=MAX_LENGTH,
    )


def read_vocab_merges(folder: Path) -> CLIPTokenizer:
    """Tokenizer from ``folder/vocab.json`` and ``folder/merges.txt``."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return make_clip_tokenizer(vocab, merges)


def read_open_clip_bpe(path: Path) -> CLIPTokenizer:
    """Tokenizer from OpenCLIP's gzipped BPE merges file."""
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _N_MERGES + 1]]
    return make_clip_tokenizer(vocab_from_merges(merges), merges)


def open_clip_bpe_path() -> Path | None:
    """``bpe_simple_vocab_16e6.txt.gz`` of an installed ``open_clip_torch`` (not imported), or None."""
    spec = importlib.util.find_spec("open_clip")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / "bpe_simple_vocab_16e6.txt.gz"
        if p.is_file():
            return p
    return None


def find_clip_tokenizer(folders: Sequence[Path]) -> CLIPTokenizer | None:
    """The first usable source: a folder with vocab.json + merges.txt, then open_clip's BPE file."""
    for folder in folders:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return read_vocab_merges(folder)
    bpe = open_clip_bpe_path()
    return read_open_clip_bpe(bpe) if bpe else None
