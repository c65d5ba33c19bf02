"""The ``cadc train`` subcommand (registered by :func:`cadc.cli.build_parser`).

Heavy imports (transformers, diffusers) happen only when the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from .config import ABLATIONS, STAGES, TrainConfig, load_config, parse_override

OPTION_FIELDS = {
    "steps": "steps",
    "stage": "stage",
    "ablation": "ablation",
    "init": "init",
    "lambda_rate": "lambda_rate",
    "batch_size": "batch_size",
    "crop_size": "crop_size",
    "lr": "lr",
    "grad_accum": "grad_accum",
    "workers": "num_workers",
    "seed": "seed",
    "device": "device",
    "threads": "threads",
    "sd_turbo": "sd_turbo",
}
"""argparse dest → TrainConfig field, for the options that override the config file."""


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: file < the options given < ``--set key=value``."""
    overrides = {field: getattr(args, dest) for dest, field in OPTION_FIELDS.items() if getattr(args, dest) is not None}
    overrides.update(parse_override(item) for item in args.set)
    return load_config(args.config, overrides)


def cmd_train(args: argparse.Namespace) -> dict[str, Any]:
    from .trainer import train

    config = config_from_args(args)
    command = shlex.join(["cadc", *sys.argv[1:]])  # same for `cadc ...`, `python -m cadc.cli ...`, torchrun
    summary = train(config, args.data, args.out, resume=args.resume, command=command)
    held_out = summary["held_out"]
    return {
        "model": summary["model"],
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "final_train": summary["final_train"],
        "held_out_mean": held_out["mean"] if held_out else None,
    }


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``cadc`` subcommands."""
    p = sub.add_parser(
        "train",
        help="train a CADC codec (codec path, Stage I or Stage II); torchrun-compatible",
        description="Train CADC. Precedence: config file < options below < --set key=value.",
    )
    p.add_argument("--config", help="TOML or JSON file with TrainConfig fields (see docs/training.md)")
    p.add_argument("--data", nargs="+", required=True, help="image folders or files (no downloads)")
    p.add_argument("--out", default="runs/cadc", help="run folder (model.safetensors, state, summary)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--stage", choices=STAGES)
    p.add_argument("--ablation", choices=sorted(ABLATIONS))
    p.add_argument("--init", help="checkpoint to start from (Stage II: Stage I's model.safetensors)")
    p.add_argument("--lambda", dest="lambda_rate", type=float, help="rate weight λ (R in bpp)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--workers", type=int, help="DataLoader worker processes per rank")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--sd-turbo", help="SD-Turbo source for Stage I/II (folder, .safetensors, tiny-random)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrainConfig field")
    p.set_defaults(func=cmd_train, json=True)
