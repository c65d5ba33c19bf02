"""Single-stage commands for A/B timing of fast paths with an external whole-process timer.

Each command loads only what it needs from the random-weights cache (:mod:`benchmarks.assets`),
runs the stage ``--repeat`` times and prints the in-process seconds as JSON. Compare two variants
with ``/usr/bin/time`` or a paired A/B harness, e.g. (repository root)::

    python -m benchmarks.micro encode --size 768x512 --exact
    python -m benchmarks.micro encode --size 768x512 --exact --grouped-depthwise
    python -m benchmarks.micro vae --size 512x512 [--channels-last]
    python -m benchmarks.micro unet --size 512x512 [--channels-last]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import assets  # noqa: E402
from benchmarks.child import test_image  # noqa: E402


def encode(args: argparse.Namespace) -> dict[str, float]:
    """Encode the test image; ``--grouped-depthwise`` disables the exact encoder's shift depthwise conv."""
    import cadc.model
    from cadc.codec_io import encode_tensor
    from cadc.weights import load_codec

    if args.grouped_depthwise:
        cadc.model._use_shift_depthwise = lambda module: None  # the pre-change float64 g_a
    codec = load_codec(assets.codec_checkpoint(args.preset, args.cache))
    x = test_image(args.width, args.height)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        encode_tensor(codec, x, exact=args.exact)
        times.append(time.perf_counter() - start)
    return {"seconds": times}


def generative(args: argparse.Namespace) -> dict[str, float]:
    """One UNet or VAE-decoder pass at the size's latent, untiled."""
    from cadc.generative import SDTurboSource

    source = SDTurboSource(assets.sd_turbo_folder(args.cache))
    h, w = args.height // 8, args.width // 8
    with torch.inference_mode():
        if args.command == "vae":
            model = torch.nn.Module.to(source.load_vae(), dtype=torch.float32)
            x = torch.randn(1, 4, h, w)

            def step() -> object:
                return model.decode(x, return_dict=False)[0]
        else:
            model = torch.nn.Module.to(source.load_unet(), dtype=torch.float32)
            x, text = torch.randn(1, 4, h, w), torch.randn(1, 77, 1024)
            t = torch.full((1,), 999)

            def step() -> object:
                return model(x, t, encoder_hidden_states=text, return_dict=False)[0]

        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.to(memory_format=torch.channels_last)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {"seconds": times}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["encode", "vae", "unet"])
    parser.add_argument("--size", default="768x512")
    parser.add_argument("--preset", default="cadc", choices=sorted(assets.PRESETS))
    parser.add_argument("--exact", action="store_true", help="encode with exact=True (float64)")
    parser.add_argument("--grouped-depthwise", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=assets.DEFAULT_CACHE)
    args = parser.parse_args(argv)
    args.width, _, height = args.size.partition("x")
    args.width, args.height = int(args.width), int(height)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = encode(args) if args.command == "encode" else generative(args)
    print(json.dumps({"command": args.command, "size": args.size, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
