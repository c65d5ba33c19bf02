"""Stage I at the paper's shapes on one accelerator: it/s and peak memory of N optimizer steps.

    python scripts/gpu/stage1_smoke.py --out DIR [--steps 50] [--tiny]

Writes random-weight, paper-size sources (``paper_sources.py``: SD-Turbo as a float16 single file,
LPIPS-VGG16, CLIP ViT-L/14), then runs ``cadc train``'s Stage I exactly as
``configs/training/stage1.toml`` sets it up — bf16 autocast, frozen networks in bf16, gradient
checkpointing, EMA, 512² crops, batch 1 — for ``--steps`` steps, with one final tiled validation
of a 2048×1536 image. ``--tiny`` runs the same flow with the tiny test stand-ins (a CPU dry run).

Writes ``DIR/stage1_smoke.json``: it/s over the steps after the first 5 (warm-up: allocator,
cuDNN autotuning), the peak CUDA memory allocated / reserved, per-step times, the validation's
time, and the versions used. The losses mean nothing (random weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for `cadc`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # paper_sources

WARMUP = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--work", type=Path, help="folder for the sources and the run (GBs; default OUT/work)")
    parser.add_argument("--tiny", action="store_true", help="tiny stand-ins (CPU dry run of this script)")
    args = parser.parse_args()

    import paper_sources

    from cadc.training.config import load_config
    from cadc.training.records import METRICS_FILE, VALIDATION_FILE, read_jsonl
    from cadc.training.trainer import train

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    started = time.perf_counter()
    if args.tiny:
        sources = {"sd_turbo": "tiny-random", "lpips": "tiny-random", "clip": "tiny-random"}
        sources["data"] = str(paper_sources.write_photos(work / "photos", 2, 320, 384))
        crop, preset, val_size = 128, "tiny", (448, 576)
    else:
        sources = paper_sources.write_all(work, stage2=False)
        crop, preset, val_size = 512, "sd-turbo", (1536, 2048)
    val = paper_sources.write_photos(work / "val", 1, *val_size)
    sources_seconds = time.perf_counter() - started
    repository = Path(__file__).resolve().parents[2]
    data = sources.pop("data")
    overrides = {
        **sources, "preset": preset, "crop_size": crop, "steps": args.steps, "holdout": 0,
        "val_data": [str(val)], "num_workers": 2, "checkpoint_every": 0, "log_every": 10, "eval_every": 0,
    }  # fmt: skip
    stage1 = load_config(repository / "configs" / "training" / "stage1.toml", overrides)
    config = stage1.replace(val_metrics_weights=None)  # no LPIPS-Alex/DISTS backbones on that machine
    run_dir = work / "run"
    started = time.perf_counter()
    summary = train(config, [data], run_dir, command="scripts/gpu/stage1_smoke.py")
    total_seconds = time.perf_counter() - started
    rows = read_jsonl(run_dir / METRICS_FILE)
    timed = [r["step_seconds"] for r in rows[WARMUP:]] or [r["step_seconds"] for r in rows]
    validation = read_jsonl(run_dir / VALIDATION_FILE)
    cuda = torch.cuda.is_available() and not args.tiny
    report = {
        "steps": args.steps,
        "crop": crop,
        "preset": preset,
        "it_per_s": len(timed) / sum(timed),
        "mean_step_seconds": sum(timed) / len(timed),
        "step_seconds": [r["step_seconds"] for r in rows],
        "peak_step_memory_mib": max(r.get("cuda_peak_mib", r.get("rss_peak_mib", 0.0)) for r in rows),
        "cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "cuda_max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "sources_seconds": sources_seconds,
        "train_and_validate_seconds": total_seconds,
        "validation": {"size": val_size, "mean": validation[-1]["mean"] if validation else None},
        "final_train": summary["final_train"],
        "tensorboard": summary["tensorboard"],
        "versions": {
            name: __import__(name).__version__
            for name in ("torch", "diffusers", "transformers", "peft", "compressai")
        },
    }
    (args.out / "stage1_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "step_seconds"}, indent=2))


if __name__ == "__main__":
    main()
