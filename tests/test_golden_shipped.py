"""The shipped models: golden files that must keep decoding to their pinned image, and the fast
(``exact=False`` / ``cadc compress --fast``) encoder.

Golden files are made by ``scripts/make_golden.py`` (one per ``models/*.safetensors``; rerun it
after a model changes). For each model the test decodes the stored file with the CLI and compares
the 8-bit pixels and ŷ with the pinned sha256, and re-encodes the source image: the exact encoder
must give the stored bytes again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cadc.cli import main
from cadc.codec_io import decode_file, encode_image
from cadc.container import read_cadc
from cadc.images import load_image
from cadc.weights import load_codec, weights_hash

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted((ROOT / "models").glob("*.safetensors"))
REMAKE = ".venv/bin/python scripts/make_golden.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_golden = _load_script()


def test_there_is_a_shipped_model():
    assert MODELS, "models/ holds no .safetensors checkpoint"


@pytest.fixture(scope="module", params=MODELS, ids=[m.stem for m in MODELS])
def model(request) -> Path:
    return request.param


@pytest.fixture(scope="module")
def golden(model: Path) -> dict:
    cadc_path, json_path = make_golden.golden_paths(model)
    assert cadc_path.is_file() and json_path.is_file(), f"no golden file for {model.name}: run {REMAKE}"
    facts = json.loads(json_path.read_text())
    assert facts["weights_sha256"] == weights_hash(load_codec(model)).hex(), (
        f"{model.name} changed since its golden file was made: run {REMAKE}"
    )
    return {**facts, "path": cadc_path}


def test_golden_file_decodes_to_its_pinned_image(model, golden, tmp_path):
    assert hashlib.sha256(golden["path"].read_bytes()).hexdigest() == golden["file_sha256"]
    aux = tmp_path / "aux.png"
    make_golden.run_cli("decompress", str(golden["path"]), "-o", str(aux), "--aux-only", "--model", str(model))
    assert make_golden.pixels_sha256(aux) == (golden["aux_pixels_sha256"], golden["aux_size"])
    assert make_golden.y_hat_sha256(model, golden["path"]) == golden["y_hat_sha256"]


def test_exact_encoder_reproduces_the_golden_bytes(model, golden, tmp_path):
    source = make_golden.write_source(tmp_path / "source.png")
    encoded = tmp_path / "again.cadc"
    assert main(["compress", str(source), "-o", str(encoded), "--model", str(model)]) == 0
    assert encoded.read_bytes() == golden["path"].read_bytes()


def test_fast_encoder_round_trips_and_its_files_decode_on_the_exact_path(model, tmp_path):
    """``exact=False`` runs g_a, h_a and f_u in float32: its ŷ may differ from the exact encoder's at
    rounding boundaries only, and its files decode (the decoder has one path) to exactly its ŷ."""
    codec = load_codec(model)
    image = load_image(make_golden.write_source(tmp_path / "source.png"))
    fast = encode_image(codec, image, exact=False)
    exact = encode_image(codec, image, exact=True)
    decoded = decode_file(codec, fast.file)
    assert torch.equal(decoded.latent.y_hat, fast.compressed.y_hat)
    differ = (fast.compressed.y_hat != exact.compressed.y_hat).float().mean().item()
    assert differ <= 0.01, f"fast and exact ŷ differ in {differ:.2%} of elements"
    assert abs(fast.file.payload_bytes - exact.file.payload_bytes) <= 0.02 * exact.file.payload_bytes + 8

    fast_path, aux = tmp_path / "fast.cadc", tmp_path / "fast.png"
    source = tmp_path / "source.png"
    assert main(["compress", str(source), "-o", str(fast_path), "--fast", "--model", str(model)]) == 0
    assert torch.equal(decode_file(codec, read_cadc(fast_path)).latent.y_hat, fast.compressed.y_hat)
    assert main(["decompress", str(fast_path), "-o", str(aux), "--aux-only", "--model", str(model)]) == 0
    assert make_golden.pixels_sha256(aux)[1] == [250, 333]
