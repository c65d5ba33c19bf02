"""CADC's aux reconstruction vs JPEG and WebP (Pillow) at matched bits per pixel.

For each image: encode with the CADC model (real ``.cadc`` bytes), decode x̂_aux, round to 8 bit;
then sweep JPEG quality 1..95 and WebP quality 0..100 and report (a) the quality whose file size
is closest to the ``.cadc`` file's, and (b) the smallest file that reaches CADC's PSNR; the PSNR of
the image's mean colour (a flat image) is the floor any codec must beat. bpp counts
whole files (headers included) over the original pixels; PSNR is on 8-bit RGB, peak 255.

    python scripts/compare_codecs.py --model models/cadc-photo-3.safetensors \
        data/sample-photos/{chelsea,rocket,grace_hopper}.png
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from cadc.codec_io import decode_file, encode_image
from cadc.images import load_image
from cadc.weights import load_checkpoint

SWEEPS = {"JPEG": (range(1, 96), {"optimize": True}), "WEBP": (range(0, 101), {"method": 6})}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (peak 255)."""
    error = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0**2 / max(error, 1e-12))


def sweep(reference: np.ndarray, fmt: str) -> list[dict]:
    """(quality, bpp, psnr) of every quality setting of ``fmt`` on ``reference``."""
    qualities, options = SWEEPS[fmt]
    pixels = reference.shape[0] * reference.shape[1]
    rows = []
    for quality in qualities:
        buffer = io.BytesIO()
        Image.fromarray(reference).save(buffer, format=fmt, quality=quality, **options)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        rows.append({"quality": quality, "bpp": 8 * buffer.tell() / pixels, "psnr": psnr(decoded, reference)})
    return rows


def compare(model: str, path: Path) -> dict:
    checkpoint = load_checkpoint(model)
    image = load_image(str(path))
    encoded = encode_image(checkpoint.codec, image)
    decoded = decode_file(checkpoint.codec, encoded.file)
    reference = np.asarray(Image.open(path).convert("RGB"))
    x_aux = (decoded.x_aux[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    pixels = reference.shape[0] * reference.shape[1]
    cadc = {
        "bpp_payload": encoded.bits_actual / pixels,
        "bpp": 8 * encoded.total_bytes / pixels,
        "psnr": psnr(x_aux, reference),
    }
    flat = np.broadcast_to(reference.reshape(-1, 3).mean(0).round().astype(np.uint8), reference.shape)
    row = {
        "image": path.name,
        "size": f"{reference.shape[1]}x{reference.shape[0]}",
        "cadc": cadc,
        "flat_psnr": psnr(flat, reference),
    }
    for fmt in SWEEPS:
        rows = sweep(reference, fmt)
        matched = min(rows, key=lambda r: abs(r["bpp"] - cadc["bpp"]))
        reaching = [r for r in rows if r["psnr"] >= cadc["psnr"]]
        row[fmt.lower()] = {
            "matched_bpp": matched,
            "bpp_for_cadc_psnr": min(reaching, key=lambda r: r["bpp"]) if reaching else None,
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--model", default=None, help="CADC checkpoint (default: the shipped model)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = [compare(args.model, path) for path in args.images]
    columns = ("image", "flat PSNR", "CADC bpp (payload)", "CADC PSNR", "JPEG bpp / PSNR (q)", "WebP bpp / PSNR (q)")
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        c, j, w = r["cadc"], r["jpeg"]["matched_bpp"], r["webp"]["matched_bpp"]
        print(
            f"| {r['image']} {r['size']} | {r['flat_psnr']:.2f} "
            f"| {c['bpp']:.4f} ({c['bpp_payload']:.4f}) | {c['psnr']:.2f} "
            f"| {j['bpp']:.4f} / {j['psnr']:.2f} (q{j['quality']}) "
            f"| {w['bpp']:.4f} / {w['psnr']:.2f} (q{w['quality']}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
