"""The ``cadc eval`` subcommand (registered by :func:`cadc.cli.build_parser`).

Heavy imports (torchmetrics, lpips, matplotlib) happen only when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .defaults import BD_ANCHOR, SWEEP_BPP

WEIGHTS_ENV = "CADC_EVAL_WEIGHTS"

EPILOG = f"""\
metric backbones (never downloaded) are read from --weights-dir or ${WEIGHTS_ENV}:
  alexnet.safetensors                torchvision AlexNet IMAGENET1K_V1 state dict  -> LPIPS
  vgg16.safetensors                  torchvision VGG16 IMAGENET1K_V1 state dict    -> DISTS
  inception-2015-12-05.safetensors   torch-fidelity InceptionV3 state dict         -> FID/KID
a missing file skips that metric with a note; 'tiny-random' builds random stand-ins (tests only).
See cadc/evaluation/backbones.py for a conversion snippet.

baselines (Pillow): jpeg, webp, avif (full size) and jpeg-rs, webp-rs, avif-rs (Lanczos-downscaled by
1, 2, 3, 4, 6 or 8, coded, upscaled back); per image the best PSNR whose whole file is <= the target.
  --baselines LIST   coded at each image's .cadc file size, next to every model point
  --sweep LIST       whole RD curves at the --sweep-bpp targets (cached in OUT/baseline_cache/)

examples:
  cadc eval --data kodak/ --sweep avif-rs,webp-rs,jpeg-rs,avif,webp,jpeg --out kodak-rd/
  cadc eval --data kodak/ --model a.safetensors --model b.safetensors --model c.safetensors \\
            --sweep avif-rs,webp-rs,jpeg-rs,avif,webp,jpeg --baselines avif-rs \\
            --published docs/published_kodak.csv --out kodak-rd/     (BD-rate vs avif-rs included)
  cadc eval --data kodak/ --family m0=m0a.st,m0b.st,m0c.st --family ugaq=ua.st,ub.st,uc.st --out abl/
  cadc eval --data kodak/ --model l2.safetensors --mode aux,generative \\
            --sd-turbo sd-turbo/ --blip blip/ --weights-dir eval-weights/ --out results/
  cadc eval --bd-rate m0/results.json full/results.json      (BD-rate of full vs the anchor m0)
  cadc eval --bd-rate r.json r.json --anchor-curve avif-rs --test-curve cadc-aux:ugaq --rate bpp_payload
"""


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    if args.bd_rate:
        return _bd_rate(args)
    from .baselines import parse_baselines
    from .results import bd_rate_lines
    from .runner import EvalConfig, EvalError, Evaluator

    if args.data is None or not (args.model or args.family or args.sweep):
        raise EvalError("cadc eval needs --data FOLDER and a --model, --family or --sweep (or --bd-rate A.json B.json)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = EvalConfig(
        data=args.data,
        models=args.model,
        families=_parse_families(args.family),
        out=args.out or "results",
        modes=tuple(m.strip() for m in args.mode.split(",") if m.strip()),
        baselines=tuple(parse_baselines(args.baselines)),
        sweep=tuple(parse_baselines(args.sweep)),
        sweep_bpp=_parse_bpp(args.sweep_bpp),
        published=args.published,
        bd_anchor=args.bd_anchor,
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
    for line in bd_rate_lines(results["bd_rate"]):
        sys.stderr.write(line + "\n")
    return {
        **results["files"],
        "bd_rate": results["bd_rate"],
        "images": results["config"]["images"],
        "runs": [{"name": r["name"], **r["mean"], **{k: r["set"][k] for k in ("fid", "kid")}} for r in results["runs"]],
    }


def _parse_families(items: list[str]) -> dict[str, list[str]]:
    """``["m0=a.st,b.st", ...]`` → ``{"m0": ["a.st", "b.st"]}``."""
    families: dict[str, list[str]] = {}
    for item in items:
        name, sep, models = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--family {item!r}: write NAME=CHECKPOINT,CHECKPOINT,...")
        if name.strip() in families:
            raise ValueError(f"--family {name.strip()}: given twice")
        families[name.strip()] = [m.strip() for m in models.split(",") if m.strip()]
    return families


def _parse_bpp(text: str) -> tuple[float, ...]:
    """``"0.01,0.02"`` → ``(0.01, 0.02)``; anything that is not a number raises ValueError in one line."""
    try:
        return tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise ValueError(f"--sweep-bpp {text!r}: give comma-separated numbers, e.g. 0.01,0.02,0.05") from None


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
        description="Evaluate CADC models and classical baselines on a folder of images; writes results.json, "
        "results.csv, rd_curves.png (and bd_rate.json) to --out. Or, with --bd-rate, compare two results.json files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="folder of images (searched recursively) or one image file")
    p.add_argument(
        "--model", action="append", default=[], help="CADC checkpoint or tiny-random; repeat for several λ points"
    )
    p.add_argument(
        "--family",
        action="append",
        default=[],
        metavar="NAME=A,B,...",
        help="a named family of checkpoints (one RD curve cadc-aux:NAME); repeat for several families",
    )
    p.add_argument("--mode", default="aux", help="aux, generative or aux,generative (default: aux)")
    p.add_argument(
        "--baselines",
        default="",
        help="baselines coded at each image's .cadc size: jpeg, webp, avif, jpeg-rs, webp-rs, avif-rs (default: none)",
    )
    p.add_argument("--sweep", default="", help="baselines whose whole RD curve is swept (same names; default: none)")
    p.add_argument(
        "--sweep-bpp",
        default=",".join(f"{t:g}" for t in SWEEP_BPP),
        help="target bpp of the sweep (whole file, original pixels; default: %(default)s)",
    )
    p.add_argument(
        "--published", default=None, metavar="CSV", help="overlay published RD points (e.g. docs/published_kodak.csv)"
    )
    p.add_argument(
        "--bd-anchor",
        default=None,
        metavar="CURVE",
        help=f"swept baseline to compute each CADC curve's BD-rate against (default: {BD_ANCHOR} when swept)",
    )
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
