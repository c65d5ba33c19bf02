"""The ``cadc`` command: compress, decompress, info, demo, train.

Every error is one line on stderr and a non-zero exit status; outputs are written atomically
(temporary file + rename), so a failure or Ctrl-C never leaves a half-written file behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from . import __version__, batch
from .codec_io import MAX_DECODE_PIXELS, check_decode_size, decode_file, encode_image
from .container import CadcFormatError, CadcHeader, header_to_json, read_cadc, write_cadc
from .entropy import entropy_coder_description
from .evaluation.cli import register as register_eval
from .images import ImageError, load_image, save_image
from .model_lookup import ModelMatch, ModelNotFoundError, cli_model_folders, cli_put_it, find_model
from .training.cli import register as register_train
from .weights import TINY_RANDOM, CheckpointError, default_model_path, load_checkpoint

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_IMAGE = ASSETS_DIR / "astronaut.png"


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows: no peak-RSS query in the standard library
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def cmd_compress(args: argparse.Namespace) -> dict[str, Any]:
    if batch.is_folder(args.image):
        return batch.compress_folder(args)
    output = Path(args.output) if args.output else Path(Path(args.image).stem + ".cadc")
    if output.resolve() == Path(args.image).resolve():
        raise CliError(f"refusing to overwrite the input image {args.image}")
    checkpoint = load_checkpoint(args.model, device=args.device)
    image = load_image(args.image)
    encoded = encode_image(checkpoint.codec, image, exact=not args.fast)
    write_cadc(output, encoded.file)
    report = encoded.report()
    report.update(output=str(output), model=checkpoint.source, peak_rss_mib=_peak_rss_mib())
    return report


def cmd_decompress(args: argparse.Namespace) -> dict[str, Any]:
    if batch.is_folder(args.input):
        return batch.decompress_folder(args)
    output = Path(args.output) if args.output else Path(Path(args.input).stem + ".png")
    if output.resolve() == Path(args.input).resolve():
        raise CliError(f"refusing to overwrite the input file {args.input}")
    cadc_file = read_cadc(args.input)
    header = cadc_file.header
    max_pixels = getattr(args, "max_pixels", MAX_DECODE_PIXELS)
    check_decode_size(header, max_pixels)  # before the model is even loaded
    model = args.model if args.model is not None else _find_file_model(header).source
    checkpoint = load_checkpoint(model, device=args.device)
    report: dict[str, Any] = {
        "output": str(output),
        "width": header.width,
        "height": header.height,
        "model": checkpoint.source,
    }
    if args.aux_only:
        decoded = decode_file(checkpoint.codec, cadc_file, max_pixels=max_pixels)
        if decoded.x_aux is None:
            raise CliError("this model has no aux decoder (trained with aux=False); drop --aux-only")
        save_image(decoded.x_aux, output, channels=header.channels, bit_depth=header.bit_depth)
        report.update(mode="aux", seconds=decoded.seconds)
    else:
        report.update(_decode_generative(args, checkpoint, cadc_file, output))
    report["peak_rss_mib"] = _peak_rss_mib()
    return report


def _find_file_model(header: CadcHeader) -> ModelMatch:
    """The checkpoint (or tiny-random) whose model id and weights hash the header names."""
    return find_model(header.model_id, header.weights_sha256, cli_model_folders(), cli_put_it())


def _decode_generative(args: argparse.Namespace, checkpoint, cadc_file, output: Path) -> dict[str, Any]:
    """ŷ → l_T → (caption, one-step SD-Turbo, VAE) → image, as :func:`plan_decode` decides."""
    from .generative import GenerativeDecoder  # diffusers/transformers load only when needed
    from .generative.decode_plan import plan_decode

    if args.sd_turbo is None:
        raise CliError(
            "the generative decoder needs SD-Turbo: pass --sd-turbo PATH (a diffusers folder or "
            "sd_turbo.safetensors) or --sd-turbo tiny-random; use --aux-only for the light preview decoder"
        )
    header = cadc_file.header
    codec = checkpoint.codec
    plan = plan_decode(
        header.hints,
        codec.config,
        captioner=args.blip is not None,
        opt_out=args.no_caption,
        how_to_caption="pass --blip PATH, or --no-caption to silence this",
    )
    if plan.warning:
        warnings.warn(plan.warning, stacklevel=1)
    decoded = decode_file(codec, cadc_file, aux=plan.caption, max_pixels=getattr(args, "max_pixels", MAX_DECODE_PIXELS))
    codec.release_weights()  # one decode per process: the codec's memory goes to the generative models
    decoder = GenerativeDecoder.from_sources(
        sd_turbo=args.sd_turbo,
        blip=args.blip if plan.caption else None,
        latent_channels=codec.config.latent_channels,
        adapter_state=checkpoint.adapter_state or None,
        adapter_config=checkpoint.adapter_config,
        caption=plan.caption,
        device=args.device,
        tile_latent=plan.tiling.tile,
        tile_overlap=plan.tiling.overlap,
        tile_above=plan.tiling.above,
        fixed_prompt=plan.fixed_prompt,
        low_memory=True,  # one decode per process: each model is released once its stage is done
        vae_decoder=getattr(args, "vae_decoder", None),
    )
    # BLIP describes x̂_aux cropped to the original size, as the CADC Caption node does
    result = decoder.decode(decoded.latent.l_T, decoded.x_aux, out_hw=(header.height, header.width))
    save_image(result.image, output, channels=header.channels, bit_depth=header.bit_depth)
    return {
        "mode": "generative",
        "caption": result.captions[0] if result.captions else None,
        "prompt": result.prompts[0] if result.prompts else None,
        "seconds": {**{f"codec_{k}": v for k, v in decoded.seconds.items()}, **result.seconds},
        "peak_memory_mib": result.peak_memory_mib,
    }


def cmd_info(args: argparse.Namespace) -> dict[str, Any]:
    cadc_file = read_cadc(args.input)
    info = header_to_json(cadc_file.header)
    info.update(
        file_bytes=cadc_file.header_bytes + cadc_file.payload_bytes,
        header_bytes=cadc_file.header_bytes,
        payload_bytes=cadc_file.payload_bytes,
        bpp=cadc_file.bpp,
        entropy_coder=entropy_coder_description(),
    )
    try:  # the model `cadc decompress` would use without --model
        info["model"] = _find_file_model(cadc_file.header).source
    except ModelNotFoundError as error:
        info["model"] = None
        info["model_error"] = str(error)
    return info


def cmd_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Compress the bundled photo, decode it with the aux decoder and the full generative path."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model if args.model else (None if default_model_path().is_file() else TINY_RANDOM)
    base = dict(model=model, device=args.device, fast=False, no_caption=False)
    started = time.perf_counter()
    compress = cmd_compress(argparse.Namespace(image=str(DEMO_IMAGE), output=str(out / "astronaut.cadc"), **base))
    aux = cmd_decompress(
        argparse.Namespace(
            input=str(out / "astronaut.cadc"),
            output=str(out / "astronaut_aux.png"),
            aux_only=True,
            sd_turbo=None,
            blip=None,
            **base,
        )
    )
    generative = cmd_decompress(
        argparse.Namespace(
            input=str(out / "astronaut.cadc"),
            output=str(out / "astronaut_generative.png"),
            aux_only=False,
            sd_turbo=args.sd_turbo,
            blip=args.blip,
            **base,
        )
    )
    return {
        "image": str(DEMO_IMAGE),
        "model": compress["model"],
        "compress": compress,
        "decompress_aux": aux,
        "decompress_generative": generative,
        "seconds_total": time.perf_counter() - started,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cadc", description="CADC generative image codec")
    parser.add_argument(
        "--version", action="version", version=f"cadc {__version__}; entropy coder: {entropy_coder_description()}"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            default=None,
            help=f"CADC checkpoint (.safetensors) or '{TINY_RANDOM}'; default: compress uses the shipped "
            "model, decompress the checkpoint whose weights hash the file names (shipped models/, "
            "ComfyUI's models/cadc, tiny-random)",
        )
        p.add_argument("--device", default="cpu", help="torch device for the networks (default: cpu)")
        p.add_argument("--json", action="store_true", help="print a JSON report on stdout")

    p = sub.add_parser("compress", help="image → .cadc (or a folder of images → a folder of .cadc)")
    p.add_argument("image", help="an image, or a folder of images (then -o OUTDIR; see --jobs)")
    p.add_argument("-o", "--output", help="output .cadc path (default: <image stem>.cadc), or OUTDIR for a folder")
    p.add_argument(
        "--fast",
        action="store_true",
        help="run the encoder networks on --device in its dtype; files stay decodable everywhere, "
        "but are no longer byte-identical across devices/thread counts",
    )
    model_options(p)
    batch.add_folder_options(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("decompress", help=".cadc → image (or a folder of .cadc → a folder of PNGs)")
    p.add_argument("input", help="a .cadc file, or a folder of them (then -o OUTDIR; see --jobs)")
    p.add_argument("-o", "--output", help="output image path (default: <input stem>.png), or OUTDIR for a folder")
    p.add_argument("--aux-only", action="store_true", help="only the light aux decoder (no SD-Turbo)")
    p.add_argument("--sd-turbo", default=None, help="SD-Turbo: diffusers folder, .safetensors file or tiny-random")
    p.add_argument("--blip", default=None, help="BLIP captioner folder or tiny-random (default: no caption)")
    p.add_argument("--no-caption", action="store_true", help="condition on the fixed prompt only")
    p.add_argument(
        "--vae-decoder",
        default=None,
        metavar="PATH",
        help="fast preview: TAESD instead of SD's VAE decoder (taesd_decoder.safetensors/.pth, ComfyUI's "
        "models/vae_approx folder, or a diffusers AutoencoderTiny folder)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_DECODE_PIXELS,
        metavar="N",
        help=f"refuse files whose image is larger than N pixels (default {MAX_DECODE_PIXELS}; 0 = no limit)",
    )
    model_options(p)
    batch.add_folder_options(p)
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="print a .cadc header as JSON")
    p.add_argument("input")
    p.set_defaults(func=cmd_info, json=True)

    p = sub.add_parser("demo", help="compress and decode the bundled sample photo")
    p.add_argument("--out", default="out", help="output folder (default: ./out)")
    p.add_argument("--sd-turbo", default=TINY_RANDOM, help="SD-Turbo source (default: tiny-random)")
    p.add_argument("--blip", default=TINY_RANDOM, help="BLIP source (default: tiny-random)")
    p.add_argument("--model", default=None, help="CADC checkpoint (default: shipped model, else tiny-random)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_demo, json=True)

    register_train(sub)
    register_eval(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="cadc: %(message)s")
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        report = args.func(args)  # warnings print as "cadc: warning: image x.gif is animated; ..."
    except KeyboardInterrupt:
        sys.stderr.write("cadc: interrupted; nothing was written\n")
        return 130
    except (
        CliError,
        CadcFormatError,
        CheckpointError,
        ImageError,
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
        ValueError,
    ) as error:
        sys.stderr.write(f"cadc: error: {_one_line(error)}\n")
        return 1
    finally:
        warnings.formatwarning = formatwarning
    if args.json:
        _print_json(report)
    else:
        sys.stderr.write(_summary(args.command, report) + "\n")
    return 1 if report.get("mode") == "folder" and report["failed"] else 0


def _one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings as one line, like errors (no source file and code line)."""
    return f"cadc: warning: {' '.join(str(message).split())}\n"


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, FileNotFoundError) and error.filename:
        text = f"no such file: {error.filename}"
    return " ".join(text.split())


def _summary(command: str, report: dict[str, Any]) -> str:
    if report.get("mode") == "folder":
        return batch.summary(command, report)
    if command == "compress":
        return (
            f"wrote {report['output']}: {report['file_bytes']} bytes, {report['bpp']:.5f} bpp "
            f"({report['width']}x{report['height']})"
        )
    if command == "decompress":
        return f"wrote {report['output']} ({report['width']}x{report['height']}, {report['mode']})"
    return json.dumps(report)


if __name__ == "__main__":
    raise SystemExit(main())
