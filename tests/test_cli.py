"""The ``cadc`` command as a user runs it: one-line errors, JSON reports, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cadc.cli import main

TINY = ("--model", "tiny-random")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def photo(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:97, 0:131]
    pixels = np.stack([(xx * 2) % 256, (yy * 3) % 256, (xx + yy) % 256], -1) + rng.integers(0, 20, (97, 131, 3))
    path = tmp_path / "photo.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def test_compress_info_decompress_round_trip(capsys, tmp_path, photo):
    cadc_path, png_path = tmp_path / "a.cadc", tmp_path / "b.png"
    code, out, _ = run_cli(capsys, "compress", str(photo), "-o", str(cadc_path), *TINY, "--json")
    assert code == 0
    report = json.loads(out)
    for key in ("bpp", "bits_actual", "bits_estimated", "header_bytes", "seconds"):
        assert key in report
    assert report["bits_actual"] <= 1.01 * report["bits_estimated"] + 96
    assert cadc_path.stat().st_size == report["file_bytes"]

    code, out, _ = run_cli(capsys, "info", str(cadc_path))
    info = json.loads(out)
    assert code == 0 and (info["width"], info["height"]) == (131, 97)
    assert info["model_id"] == "cadc-tiny-random" and info["model"] == "tiny-random"

    code, _, _ = run_cli(capsys, "decompress", str(cadc_path), "-o", str(png_path), "--aux-only", *TINY)
    assert code == 0
    with Image.open(png_path) as image:
        assert image.size == (131, 97) and image.mode == "RGB"


def test_same_image_gives_identical_files(capsys, tmp_path, photo):
    for name in ("1.cadc", "2.cadc"):
        assert run_cli(capsys, "compress", str(photo), "-o", str(tmp_path / name), *TINY)[0] == 0
    assert (tmp_path / "1.cadc").read_bytes() == (tmp_path / "2.cadc").read_bytes()


def test_generative_decode_without_sd_turbo_explains_what_to_pass(capsys, tmp_path, photo):
    cadc_path = tmp_path / "a.cadc"
    run_cli(capsys, "compress", str(photo), "-o", str(cadc_path), *TINY)
    code, _, err = run_cli(capsys, "decompress", str(cadc_path), "-o", str(tmp_path / "x.png"), *TINY)
    assert code == 1
    assert "--sd-turbo" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[: len(b) // 2], lambda b: b"XXXX" + b[4:], lambda b: b[:-1] + bytes([b[-1] ^ 1])],
    ids=["truncated", "bad-magic", "bit-flip"],
)
def test_damaged_file_is_one_line_error_and_writes_nothing(capsys, tmp_path, photo, damage):
    cadc_path = tmp_path / "a.cadc"
    run_cli(capsys, "compress", str(photo), "-o", str(cadc_path), *TINY)
    cadc_path.write_bytes(damage(cadc_path.read_bytes()))
    output = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "decompress", str(cadc_path), "-o", str(output), "--aux-only", *TINY)
    assert code == 1 and err.startswith("cadc: error:") and err.count("\n") == 1
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_wrong_model_names_both(capsys, tmp_path, photo):
    from cadc.config import get_preset
    from cadc.weights import build_tiny_random, save_codec

    other = tmp_path / "other.safetensors"
    save_codec(other, build_tiny_random(get_preset("tiny").replace(name="tiny-b"), seed=1))
    cadc_path = tmp_path / "a.cadc"
    run_cli(capsys, "compress", str(photo), "-o", str(cadc_path), *TINY)
    code, _, err = run_cli(
        capsys, "decompress", str(cadc_path), "--aux-only", "--model", str(other), "-o", str(tmp_path / "o.png")
    )
    assert code == 1
    assert "cadc-tiny" in err and "cadc-tiny-b" in err


def test_without_model_decompress_and_info_find_the_files_model_by_its_hash(capsys, tmp_path, photo):
    """A tiny-random file and one made with the shipped model decode without --model; a file from
    a model nowhere to be found is one line naming its id, its hash and where to put it."""
    from cadc.config import get_preset
    from cadc.model_lookup import DEFAULT_MODEL_FILE, PACKAGE_MODELS_DIR
    from cadc.weights import build_tiny_random, save_codec, weights_hash

    for model, expected in ((TINY[1], "tiny-random"), (None, str(PACKAGE_MODELS_DIR / DEFAULT_MODEL_FILE))):
        cadc_path = tmp_path / "a.cadc"
        run_cli(capsys, "compress", str(photo), "-o", str(cadc_path), *(("--model", model) if model else ()))
        aux_only = ("-o", str(tmp_path / "a.png"), "--aux-only", "--json")
        code, out, _ = run_cli(capsys, "decompress", str(cadc_path), *aux_only)
        assert code == 0 and json.loads(out)["model"] == expected
        assert json.loads(run_cli(capsys, "info", str(cadc_path))[1])["model"] == expected

    unknown = build_tiny_random(get_preset("tiny").replace(name="elsewhere"), seed=3)
    save_codec(tmp_path / "elsewhere.safetensors", unknown)
    elsewhere = ("--model", str(tmp_path / "elsewhere.safetensors"))
    run_cli(capsys, "compress", str(photo), "-o", str(tmp_path / "u.cadc"), *elsewhere)
    code, _, err = run_cli(capsys, "decompress", str(tmp_path / "u.cadc"), "-o", str(tmp_path / "u.png"), "--aux-only")
    assert code == 1 and err.count("\n") == 1 and not (tmp_path / "u.png").exists()
    for part in ("'cadc-elsewhere'", weights_hash(unknown).hex(), str(PACKAGE_MODELS_DIR), "--model PATH"):
        assert part in err
    info = json.loads(run_cli(capsys, "info", str(tmp_path / "u.cadc"))[1])
    assert info["model"] is None and weights_hash(unknown).hex() in info["model_error"]


def test_generative_decode_warns_once_when_the_file_wants_captions_and_no_captioner_is_given(capsys, tmp_path, photo):
    cadc_path = tmp_path / "a.cadc"
    run_cli(capsys, "compress", str(photo), "-o", str(cadc_path), *TINY)
    generative = ("decompress", str(cadc_path), "-o", str(tmp_path / "g.png"), "--sd-turbo", "tiny-random", "--json")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # shown as the CLI shows them, even when repeated in this process
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line)
        )
        code, out, err = run_cli(capsys, *generative)
        assert code == 0 and json.loads(out)["caption"] == ""
        (line,) = [line for line in err.splitlines() if line.startswith("cadc: warning:")]
        assert "Salesforce/blip-image-captioning-base" in line and "--blip" in line
        for extra in (("--no-caption",), ("--blip", "tiny-random")):
            code, out, err = run_cli(capsys, *generative, *extra)
            assert code == 0 and "cadc: warning:" not in err, extra
        assert json.loads(out)["caption"] and json.loads(out)["prompt"].startswith(json.loads(out)["caption"])


def test_missing_inputs_are_one_line_errors(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compress", str(tmp_path / "nope.png"), *TINY)
    assert code == 1 and "nope.png" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "compress", str(tmp_path / "nope.png"), "--model", str(tmp_path / "m.safetensors"))
    assert code == 1 and "checkpoint not found" in err


def test_console_script_runs_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cadc.cli", "info", str(tmp_path / "missing.cadc")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "missing.cadc" in result.stderr
