"""Folder throughput: ``cadc compress DIR`` / ``cadc decompress DIR`` in images per second.

Each measurement is one ``cadc`` command in a fresh process (``python -m cadc.cli ... --json``), as a
user runs it, on a folder of test images (the bundled photo resized and shifted, so no two are
equal); the command's own report gives ``images_per_s`` (its clock starts after the codec is
loaded; a generative decode loads SD-Turbo during the first file, inside the clock) and the
process's wall time (``process_s``, imports and loading included) is recorded too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int, width: int, height: int) -> Path:
    """``count`` PNGs of ``width`` × ``height`` in ``folder`` (the test photo, rolled by a few pixels each)."""
    from benchmarks.child import test_image
    from cadc.images import save_image

    folder.mkdir(parents=True, exist_ok=True)
    base = test_image(width, height)
    for i in range(count):
        save_image(torch.roll(base, shifts=(7 * i, 11 * i), dims=(2, 3)), folder / f"img{i:03d}.png")
    return folder


def _cadc(args: list[str], timeout: float) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cadc.cli", *args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - start
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"cadc {args[0]}: exit {proc.returncode}: {tail}", "process_s": wall}
    keep = ("inputs", "done", "skipped", "failed", "seconds", "images_per_s", "megapixels_per_s")
    return {**{k: report.get(k) for k in keep}, "process_s": wall, "exit": proc.returncode}


def folder_throughput(
    workdir: Path,
    codec: str,
    sd_turbo: str,
    size: tuple[int, int],
    count: int,
    jobs: list[int],
    generative_count: int,
    device: str,
    timeout: float,
) -> dict[str, Any]:
    """Compress and decompress (aux-only, and generative for ``generative_count`` files) a folder.

    Returns ``{"size", "images", "compress": {jobs: result}, "decompress_aux": {...},
    "decompress_generative": {...}}``; each result holds ``images_per_s`` and ``process_s``.
    """
    width, height = size
    images = write_images(workdir / "images", count, width, height)
    result: dict[str, Any] = {"size": f"{width}x{height}", "images": count, "device": device}
    model = ["--model", codec, "--device", device]
    for key in ("compress", "decompress_aux"):
        result[key] = {}
    for j in jobs:
        cadc_dir = workdir / f"cadc-j{j}"
        result["compress"][str(j)] = _cadc(["compress", str(images), "-o", str(cadc_dir), "--jobs", str(j), *model],
                                           timeout)
        result["decompress_aux"][str(j)] = _cadc(
            ["decompress", str(cadc_dir), "-o", str(workdir / f"aux-j{j}"), "--aux-only", "--jobs", str(j), *model],
            timeout,
        )
    if generative_count:
        subset = workdir / "cadc-generative"
        subset.mkdir()
        for path in sorted((workdir / f"cadc-j{jobs[0]}").glob("*.cadc"))[:generative_count]:
            (subset / path.name).write_bytes(path.read_bytes())
        result["decompress_generative"] = {
            "1": _cadc(
                ["decompress", str(subset), "-o", str(workdir / "generative"), "--sd-turbo", sd_turbo, "--no-caption",
                 "--jobs", "1", *model],
                timeout,
            ),
            "files": generative_count,
        }
    return result
