"""Write the golden files of the shipped models (``tests/test_golden_shipped.py`` checks them).

For every ``models/*.safetensors`` (or the checkpoints named on the command line):

* ``tests/data/golden_<model stem>.cadc`` — :data:`SOURCE_BOX` of ``cadc/assets/astronaut.png``
  (333×250 px: padding is exercised) compressed by ``cadc compress`` (exact path);
* ``tests/data/golden_<model stem>.json`` — the model file name, its weights hash, the sha256 of
  the .cadc file, of the decoded ŷ (float32 bytes) and of the 8-bit RGB pixels that
  ``cadc decompress --aux-only`` writes, with the image size.

Golden files of models that are no longer in ``models/`` are removed. Rerun after a model changes:

    .venv/bin/python scripts/make_golden.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cadc.cli import main as cadc_main  # noqa: E402
from cadc.codec_io import decode_file  # noqa: E402
from cadc.container import read_cadc  # noqa: E402
from cadc.weights import load_codec, weights_hash  # noqa: E402

MODELS = ROOT / "models"
DATA = ROOT / "tests" / "data"
SOURCE = ROOT / "cadc" / "assets" / "astronaut.png"
SOURCE_BOX = (100, 40, 433, 290)
"""(left, top, right, bottom) of the golden image inside SOURCE: 333 × 250, not multiples of 64."""


def golden_paths(model: Path) -> tuple[Path, Path]:
    """(.cadc, .json) golden files of a checkpoint."""
    return DATA / f"golden_{model.stem}.cadc", DATA / f"golden_{model.stem}.json"


def write_source(path: Path) -> Path:
    """The golden source image as a PNG at ``path``."""
    with Image.open(SOURCE) as image:
        image.convert("RGB").crop(SOURCE_BOX).save(path)
    return path


def pixels_sha256(path: Path) -> tuple[str, list[int]]:
    """sha256 of an image file's decoded pixels (mode and size included) and its [height, width]."""
    with Image.open(path) as image:
        pixels = np.asarray(image)
        digest = hashlib.sha256(f"{image.mode}|{pixels.shape}|".encode() + pixels.tobytes())
    return digest.hexdigest(), list(pixels.shape[:2])


def y_hat_sha256(model: Path, cadc_path: Path) -> str:
    """sha256 of the ŷ that ``cadc_path`` decodes to (float32 bytes)."""
    decoded = decode_file(load_codec(model), read_cadc(cadc_path))
    return hashlib.sha256(decoded.latent.y_hat.float().contiguous().numpy().tobytes()).hexdigest()


DECODE_THREADS = 1
"""Torch threads of the pinned aux decode: the bitstream and ŷ are identical for any thread count,
but float32 convolutions of g_s/g_aux round differently with another count (a few 8-bit pixels
move by one level), so the pixel hash is pinned for this count (on x86-64 CPUs like CI's)."""


def run_cli(*argv: str) -> None:
    """``cadc ARGV`` in this process, on :data:`DECODE_THREADS` torch threads (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(DECODE_THREADS)
    try:
        code = cadc_main(list(argv))
    finally:
        torch.set_num_threads(threads)
    if code != 0:
        raise SystemExit(f"cadc {' '.join(argv)} failed with exit status {code}")


def describe(model: Path, cadc_path: Path, work: Path) -> dict:
    """The pinned facts of ``cadc_path``: decode it with the CLI and hash what comes out."""
    aux = work / "aux.png"
    aux.unlink(missing_ok=True)
    run_cli("decompress", str(cadc_path), "-o", str(aux), "--aux-only", "--model", str(model))
    aux_sha, size = pixels_sha256(aux)
    return {
        "model": model.name,
        "weights_sha256": weights_hash(load_codec(model)).hex(),
        "source": f"{SOURCE.relative_to(ROOT).as_posix()} crop {list(SOURCE_BOX)}",
        "file_sha256": hashlib.sha256(cadc_path.read_bytes()).hexdigest(),
        "y_hat_sha256": y_hat_sha256(model, cadc_path),
        "aux_pixels_sha256": aux_sha,
        "aux_size": size,
    }


def make(model: Path) -> dict:
    """Write both golden files of ``model``; returns the JSON written."""
    cadc_path, json_path = golden_paths(model)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        encoded = work / "golden.cadc"
        run_cli("compress", str(write_source(work / "source.png")), "-o", str(encoded), "--model", str(model))
        facts = describe(model, encoded, work)
        cadc_path.write_bytes(encoded.read_bytes())
    json_path.write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, help="checkpoints (default: every models/*.safetensors)")
    args = parser.parse_args(argv)
    models = [m.resolve() for m in args.models] or sorted(MODELS.glob("*.safetensors"))
    for model in models:
        facts = make(model)
        print(f"{golden_paths(model)[0].relative_to(ROOT)}: {facts['file_sha256'][:16]}… aux {facts['aux_size']}")
    if not args.models:
        present = {m.stem for m in models}
        for stale in sorted(DATA.glob("golden_*.*")):
            if stale.suffix in (".cadc", ".json") and stale.stem.removeprefix("golden_") not in present:
                stale.unlink()
                print(f"removed {stale.relative_to(ROOT)} (its model is gone)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
