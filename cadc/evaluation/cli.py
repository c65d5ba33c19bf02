"""The ``cadc eval`` subcommand (registered by :func:`cadc.cli.build_parser`).

Heavy imports (torchmetrics, lpips, matplotlib) happen only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

WEIGHTS_ENV = "CADC_EVAL_WEIGHTS"

EPILOG = f"""\
metric backbones (never downloaded) are read from --weights-dir or ${WEIGHTS_ENV}:
  alexnet.safetensors                torchvision AlexNet IMAGENET1K_V1 state dict  -> LPIPS
  vgg16.safetensors                  torchvision VGG16 IMAGENET1K_V1 state dict    -> DISTS
  inception-2015-12-05.safetensors   torch-fidelity InceptionV3 state dict         -> FID/KID
a missing file skips that metric with a note; 'tiny-random' builds random stand-ins (tests only).
See cadc/evaluation/backbones.py for a conversion snippet.

examples:
  cadc eval --data kodak/ --model tiny-random --baselines jpeg,webp --out results/
  cadc eval --data kodak/ --model l2.safetensors --model l4.safetensors --mode aux,generative \\
            --sd-turbo sd-turbo/ --blip blip/ --weights-dir eval-weights/ --out results/
  cadc eval --bd-rate m0/results.json full/results.json      (BD-rate of full vs the anchor m0)
"""


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    if args.bd_rate:
        return _bd_rate(args)
    from .baselines import parse_baselines
    from .runner import EvalConfig, EvalError, Evaluator

    if args.data is None or not args.model:
        raise EvalError("cadc eval needs --data FOLDER and at least one --model (or --bd-rate A.json B.json)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = EvalConfig(
        data=args.data,
        models=args.model,
        out=args.out or "results",
        modes=tuple(m.strip() for m in args.mode.split(",") if m.strip()),
        baselines=tuple(parse_baselines(args.baselines)),
        weights_dir=args.weights_dir or os.environ.get(WEIGHTS_ENV) or None,
        sd_turbo=args.sd_turbo,
        blip=args.blip,
        device=args.device,
        limit=args.limit,
        fid_min_patches=args.fid_min_patches,
        save_images=args.save_images,
        progress=not args.no_progress,
    )
    results = Evaluator(config).run()
    sys.stderr.write(results["summary"] + "\n")
    for note in results["notes"]:
        sys.stderr.write(f"note: {note}\n")
    return {
        **results["files"],
        "images": results["config"]["images"],
        "runs": [{"name": r["name"], **r["mean"], **{k: r["set"][k] for k in ("fid", "kid")}} for r in results["runs"]],
    }


def _bd_rate(args: argparse.Namespace) -> dict[str, Any]:
    from .results import bd_rates, write_json

    anchor, test = args.bd_rate
    report = bd_rates(anchor, test, args.anchor_curve, args.test_curve, rate=args.rate)
    if args.out is not None:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out) / "bd_rate.json", report)
    return report


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` to the ``cadc`` subcommands."""
    p = sub.add_parser(
        "eval",
        help="rate-distortion evaluation: metrics, Pillow baselines at matched bpp, RD plots, BD-rate",
        description="Evaluate CADC models on a folder of images; writes results.json, results.csv and "
        "rd_curves.png to --out. Or, with --bd-rate, compare two results.json files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="folder of images (searched recursively) or one image file")
    p.add_argument(
        "--model", action="append", default=[], help="CADC checkpoint or tiny-random; repeat for several λ points"
    )
    p.add_argument("--mode", default="aux", help="aux, generative or aux,generative (default: aux)")
    p.add_argument("--baselines", default="", help="comma list of jpeg, webp, avif (default: none)")
    p.add_argument("--out", default=None, help="output folder (default: ./results; with --bd-rate: print only)")
    p.add_argument("--weights-dir", default=None, help=f"metric backbone folder (default: ${WEIGHTS_ENV})")
    p.add_argument("--sd-turbo", default=None, help="SD-Turbo folder / .safetensors / tiny-random (generative)")
    p.add_argument("--blip", default=None, help="BLIP folder or tiny-random (default: fixed prompt only)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--fid-min-patches", type=int, default=64, help="fewest 256x256 patches for FID/KID (default: 64)")
    p.add_argument("--save-images", action="store_true", help="also write reconstructions to OUT/images/")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--bd-rate",
        nargs=2,
        metavar=("ANCHOR.json", "TEST.json"),
        help="BD-rate of TEST against ANCHOR (two results.json files; may be the same file)",
    )
    p.add_argument("--anchor-curve", default=None, help="curve of ANCHOR (default: its first CADC curve)")
    p.add_argument("--test-curve", default=None, help="curve of TEST (default: its first CADC curve)")
    p.add_argument(
        "--rate",
        choices=("bpp_file", "bpp_payload"),
        default="bpp_file",
        help="rate for BD-rate: whole files (default) or CADC payload only",
    )
    p.set_defaults(func=cmd_eval, json=True)
