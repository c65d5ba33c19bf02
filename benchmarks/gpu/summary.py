"""Print a table of GPU benchmark reports: ``python benchmarks/gpu/summary.py OUTDIR [OUTDIR ...]``.

Each OUTDIR is a ``benchmarks/run.py --out`` folder; its ``latest.json`` is read, or the newest
``bench-*.json`` when the run was cut short.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def newest_report(folder: Path) -> dict | None:
    candidates = [folder / "latest.json"] if (folder / "latest.json").is_file() else sorted(folder.glob("bench-*.json"))
    return json.loads(candidates[-1].read_text()) if candidates else None


def main(folders: list[str]) -> int:
    header = ("dtype", "size", "enc exact s", "enc fast s", "dec 1st s", "dec warm s", "UNet %", "VAE %",
              "caption %", "TAESD s", "SD VAE s", "peak CUDA MiB")
    print(" | ".join(header))
    for folder in map(Path, folders):
        result = newest_report(folder)
        if result is None:
            print(f"{folder}: no report")
            continue
        dtype = result["settings"]["dtype"]
        vae = result.get("vae_decoders", {})
        for run in result["runs"]:
            size = f"{run['width']}x{run['height']}"
            shares = run.get("decode_shares") or {}
            taesd = vae.get(size, {})
            row = (dtype, size, run["encode_s"], run["encode_fast_s"], run["decode_s"], run.get("decode_warm_s"),
                   100 * shares.get("unet", 0), 100 * shares.get("vae_decode", 0), 100 * shares.get("caption", 0),
                   taesd.get("taesd_s"), taesd.get("sd_vae_s"), run.get("peak_cuda_mib"))
            print(" | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
            for error in run["errors"]:
                print(f"   error: {error}")
        print(f"{dtype} on {result['machine'].get('gpu')}: targets "
              + json.dumps({k: v["status"] for k, v in result.get("targets", {}).items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
