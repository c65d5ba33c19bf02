"""CADC benchmark: per-stage time, FLOPs and peak memory at paper size (random weights).

Usage (from the repository root)::

    python benchmarks/run.py --quick            # 256², CADC and M0, < 2 min on a 2-core CPU
    python benchmarks/run.py                    # 256², 512², 768×512, 1024², 2048×1365
    python benchmarks/run.py --sizes 768x512 --presets cadc --device cuda
    python benchmarks/run.py --no-decode --encode-sizes 1728x1152 4032x3024 6000x4000   # large photos
    python benchmarks/run.py --no-decode --folder 8 --folder-generative 2               # folder throughput

For every preset (``cadc`` = full CADC; ``m0`` = no UGAQ and no caption, the paper's base model)
and size, an *encode* and a *decode* phase each run in a fresh subprocess
(:mod:`benchmarks.child`), so peak RSS and model loading are per phase and per run. FLOPs are
counted on the meta device (:mod:`benchmarks.flops`). The JSON report (``machine``, ``runs``,
``targets``) and a PNG plot go to ``--out`` (default ``results/bench/``); the report is rewritten
after every run, so an interrupted full run keeps what it measured.

Besides ``runs``: ``encode_runs`` (``--encode-sizes``: encode-only runs of large photos, exact and
fast path once each, peak RSS of the exact encode), ``folder`` (``--folder N``: images/s of
``cadc compress DIR`` and ``cadc decompress DIR``, see :mod:`benchmarks.throughput`) and
``vae_decoders`` (``--taesd``: FLOPs and seconds of SD's VAE decoder against TAESD at each decode
size; the SD VAE seconds come from the decode run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # ``python benchmarks/run.py`` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import assets, flops, report, throughput  # noqa: E402

FULL_SIZES = ["256x256", "512x512", "768x512", "1024x1024", "2048x1365"]
QUICK_SIZES = ["256x256"]
PRESETS = ["cadc", "m0"]
CAPTION = {"cadc": True, "m0": False}


def parse_size(text: str) -> tuple[int, int]:
    """``"768x512"`` → (768, 512) as (width, height)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def padded(width: int, height: int) -> tuple[int, int]:
    """The codec's padded size (multiples of 64)."""
    return -(-width // 64) * 64, -(-height // 64) * 64


def run_child(spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; its JSON result, or ``{"error": ...}``."""
    tag = f"{spec['preset']}-{spec['width']}x{spec['height']}-{spec['phase']}"
    spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.child", str(spec_path), str(out_path)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"{tag}: timed out after {timeout:.0f} s", "process_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        return {"error": f"{tag}: exit {proc.returncode}: {tail}", "process_s": wall}
    result = json.loads(out_path.read_text())
    result["process_s"] = wall
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every run finished (targets may still fail)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}, same schema")
    parser.add_argument("--sizes", nargs="+", help=f"WxH list (default {FULL_SIZES})")
    parser.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="generative decoder dtype (default float16 on CUDA, float32 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per child (0: torch default)")
    parser.add_argument("--decode-repeats", type=int, default=None,
                        help="decodes per run (default 2 up to 768x512, else 1); the 2nd checks reloading")
    parser.add_argument("--tile-latent", type=int, default=96)
    parser.add_argument("--tile-overlap", type=int, default=32)
    parser.add_argument("--tile-above", type=int, default=128)
    parser.add_argument("--channels-last", action="store_true", help="UNet and VAE in channels_last")
    parser.add_argument(
        "--low-memory", action="store_true",
        help="decode as the CLI does: models load on first use, BLIP and the text encoder are released "
        "before the UNet runs (one decode per process; the loaded-twice check does not apply)",
    )
    parser.add_argument("--no-decode", action="store_true", help="skip the encode+decode runs of --sizes")
    parser.add_argument("--encode-sizes", nargs="+", default=[], metavar="WxH",
                        help="encode-only runs of large photos (cadc preset), e.g. 1728x1152 4032x3024 6000x4000")
    parser.add_argument("--folder", type=int, default=0, metavar="N", help="folder throughput with N images")
    parser.add_argument("--folder-size", default="768x512", metavar="WxH")
    parser.add_argument("--folder-jobs", type=int, nargs="+", default=[1, 2], metavar="J")
    parser.add_argument("--folder-generative", type=int, default=0, metavar="M",
                        help="also decode M of the folder's files generatively (no caption)")
    parser.add_argument("--taesd", action="store_true", help="time the TAESD decoder at each decode size")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--cache", type=Path, default=assets.DEFAULT_CACHE, help="random-weights cache folder")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float16" if device == "cuda" else "float32")
    requested = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    sizes = [] if args.no_decode else [parse_size(s) for s in requested]
    sizes.sort(key=lambda wh: wh[0] * wh[1])
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = args.out / f"bench-{'quick-' if args.quick else ''}{stamp}.json"

    start = time.perf_counter()
    paths = assets.ensure_all(args.presets, args.cache)
    threads = args.threads or torch.get_num_threads()
    result: dict[str, Any] = {
        "schema": 1,
        "machine": report.machine(device, threads),
        "settings": {
            "quick": args.quick, "device": device, "dtype": dtype, "threads": threads,
            "tile_latent": args.tile_latent, "tile_overlap": args.tile_overlap, "tile_above": args.tile_above,
            "channels_last": args.channels_last, "low_memory": args.low_memory,
            "weights": "seeded random, paper-size (benchmarks/assets.py)",
            "image": "cadc/assets/astronaut.png resized", "load_average_start": os.getloadavg(),
        },
        "runs": [],
        "encode_runs": [],
    }

    def save() -> None:
        result["targets"] = {**report.targets(result["runs"], device), **report.encode_targets(result["encode_runs"])}
        result["settings"]["wall_s"] = time.perf_counter() - start
        result["settings"]["load_average_end"] = os.getloadavg()
        json_path.write_text(json.dumps(result, indent=1))

    with tempfile.TemporaryDirectory(prefix="cadc-bench-") as tmp:
        workdir = Path(tmp)
        for width, height in sizes:
            pw, ph = padded(width, height)
            generative = flops.generative_flops(
                ph, pw, 320, args.tile_latent, args.tile_overlap, args.tile_above
            )
            for preset in args.presets:
                caption = CAPTION[preset]
                repeats = args.decode_repeats or (
                    (2 if preset == args.presets[0] else 1) if args.quick else (2 if width * height <= 768 * 512 else 1)
                )
                common = {
                    "preset": preset, "width": width, "height": height, "device": device, "dtype": dtype,
                    "threads": args.threads, "codec": paths[f"codec_{preset}"],
                    "cadc_path": str(workdir / f"{preset}-{width}x{height}.cadc"),
                }
                print(f"[bench] {preset} {width}x{height}: encode", flush=True)
                encode = run_child({**common, "phase": "encode"}, workdir, args.timeout)
                decode: dict[str, Any] = {"error": "encode failed"}
                if "error" not in encode:
                    print(f"[bench] {preset} {width}x{height}: decode", flush=True)
                    decode = run_child(
                        {
                            **common, "phase": "decode", "caption": caption, "sd_turbo": paths["sd_turbo"],
                            "blip": paths["blip"], "decode_repeats": repeats, "tile_latent": args.tile_latent,
                            "tile_overlap": args.tile_overlap, "tile_above": args.tile_above,
                            "channels_last": args.channels_last, "low_memory": args.low_memory,
                        },
                        workdir, args.timeout,
                    )
                stage_flops = {
                    **flops.codec_flops(assets.codec_config(preset), ph, pw, aux=caption), **generative
                }
                run = report.build_run(preset, width, height, encode, decode, stage_flops)
                result["runs"].append(run)
                print(
                    f"[bench]   encode {run['encode_s'] or float('nan'):.2f} s, decode "
                    f"{run['decode_s'] or float('nan'):.2f} s, peak RSS {run['peak_rss_mib']:.0f} MiB"
                    + (f"  ERRORS: {run['errors']}" if run["errors"] else ""),
                    flush=True,
                )
                save()
        for text in args.encode_sizes:
            width, height = parse_size(text)
            print(f"[bench] cadc {width}x{height}: encode only", flush=True)
            spec = {"preset": "cadc", "width": width, "height": height, "device": device, "dtype": dtype,
                    "threads": args.threads, "codec": paths["codec_cadc"], "cadc_path": None, "phase": "encode",
                    "encode_repeats": 1}
            run = report.build_encode_run("cadc", width, height, run_child(spec, workdir, args.timeout))
            result["encode_runs"].append(run)
            nan = float("nan")
            print(f"[bench]   exact {run['encode_s'] or nan:.1f} s, fast {run['encode_fast_s'] or nan:.1f} s, "
                  f"peak RSS {run['peak_rss_exact_mib'] or nan:.0f} MiB"
                  + (f"  ERRORS: {run['errors']}" if run["errors"] else ""), flush=True)
            save()
        if args.taesd:
            result["vae_decoders"] = {}
            for width, height in sizes or [parse_size(s) for s in args.sizes or ()]:
                pw, ph = padded(width, height)
                print(f"[bench] TAESD {width}x{height}", flush=True)
                spec = {"preset": "taesd", "width": width, "height": height, "device": device, "dtype": dtype,
                        "threads": args.threads, "phase": "taesd", "taesd": paths["taesd"],
                        "tile_latent": args.tile_latent, "tile_overlap": args.tile_overlap,
                        "tile_above": args.tile_above}
                taesd = run_child(spec, workdir, args.timeout)
                sd_runs = [r for r in result["runs"] if (r["width"], r["height"]) == (width, height)]
                result["vae_decoders"][f"{width}x{height}"] = {
                    "sd_vae_flops": flops.generative_flops(ph, pw, 320, args.tile_latent, args.tile_overlap,
                                                           args.tile_above)["vae_decode"],
                    "taesd_flops": flops.taesd_flops(ph, pw, args.tile_latent, args.tile_overlap, args.tile_above),
                    "sd_vae_s": sd_runs[0]["stages"].get("vae_decode") if sd_runs else None,
                    "taesd_s": taesd.get("taesd_s"),
                    "taesd_load_s": taesd.get("load_s"),
                    "taesd_peak_rss_mib": taesd.get("peak_rss_mib"),
                    "errors": [taesd["error"]] if taesd.get("error") else [],
                }
                save()
        if args.folder:
            print(f"[bench] folder of {args.folder} images at {args.folder_size}", flush=True)
            result["folder"] = throughput.folder_throughput(
                workdir / "folder", paths[f"codec_{args.presets[0]}"], paths["sd_turbo"], parse_size(args.folder_size),
                args.folder, args.folder_jobs, args.folder_generative, device, args.timeout,
            )
            print(f"[bench]   {json.dumps(result['folder'])}", flush=True)
        save()
    latest = args.out / ("latest-quick.json" if args.quick else "latest.json")
    latest.write_text(json.dumps(result, indent=1))
    if not args.no_plot:
        png = report.plot(result, json_path.with_suffix(".png"))
        if png is not None:
            (args.out / latest.with_suffix(".png").name).write_bytes(png.read_bytes())
    print(json.dumps({k: v["status"] for k, v in result["targets"].items()}, indent=1))
    print(f"[bench] report {json_path} ({time.perf_counter() - start:.0f} s)")
    return 0 if all(not r["errors"] for r in (*result["runs"], *result["encode_runs"])) else 1


if __name__ == "__main__":
    sys.exit(main())
