"""Folders: ``cadc compress DIR -o OUTDIR`` and ``cadc decompress DIR -o OUTDIR``.

The input folder is walked recursively (hidden files and folders skipped, and OUTDIR itself when it
lies inside DIR); each input gets the output at the same relative path with the new extension
(``trip/a.jpg`` → ``OUTDIR/trip/a.cadc``; ``.cadc`` → ``.png``). Rules a user with a folder of
photos expects:

* outputs that already exist are skipped (``--overwrite`` redoes them), so an interrupted run is
  resumed by running the same command again;
* every output is written atomically (temporary file + rename): a failure or Ctrl-C never leaves a
  half-written file, and a skipped output is always a complete one;
* a file that fails prints one line (``cadc: error: PATH: reason``) and the others go on; the
  command exits with status 1 if any failed. Two inputs that would write the same output
  (``a.jpg`` and ``a.png``) both fail rather than overwrite each other;
* ``--jobs N`` works on N files at once in threads that share one copy of every model (the torch
  threads are split between them), with a progress bar on a terminal.

The models are loaded once for the whole folder; for decompression each file's codec is found
from its header (or ``--model``) and cached, and the generative decoder keeps its models loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CADC_SUFFIX = ".cadc"
DECODED_SUFFIX = ".png"


class FolderError(ValueError):
    """A problem with the folders themselves (not with one file): one line, exit status 1."""


@dataclass(frozen=True)
class Job:
    """One file to convert: ``source`` → ``output``; ``name`` is the source relative to the input folder."""

    source: Path
    output: Path
    name: str


@dataclass
class FolderReport:
    """What a folder run did. ``failed``: (relative input path, one-line reason)."""

    inputs: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    pixels: int = 0

    def as_dict(self) -> dict[str, Any]:
        images_per_s = self.done / self.seconds if self.seconds > 0 else None
        return {
            "inputs": self.inputs,
            "done": self.done,
            "skipped": self.skipped,
            "failed": [{"file": name, "error": reason} for name, reason in self.failed],
            "seconds": self.seconds,
            "images_per_s": images_per_s,
            "megapixels_per_s": self.pixels / 1e6 / self.seconds if self.seconds > 0 else None,
        }


def image_suffixes() -> frozenset[str]:
    """Extensions of every format Pillow can open here (``.cadc`` is never one)."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN) - {CADC_SUFFIX}


def _walk(folder: Path, skip: Path | None) -> Iterator[Path]:
    """Files under ``folder`` in sorted order, without hidden entries and without ``skip``'s subtree."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if skip is None or entry.resolve() != skip:
                yield from _walk(entry, skip)
        elif entry.is_file():
            yield entry


def plan_jobs(
    source_dir: Path, output_dir: Path, suffixes: frozenset[str], out_suffix: str
) -> tuple[list[Job], list[tuple[str, str]]]:
    """Jobs for every input under ``source_dir`` whose extension is in ``suffixes``, and collisions.

    Returns (jobs, failures); a failure is (relative input, reason) for inputs sharing an output.
    """
    if not source_dir.is_dir():
        raise FolderError(f"no such folder: {source_dir}")
    if output_dir.exists() and not output_dir.is_dir():
        raise FolderError(f"output {output_dir} exists and is not a folder")
    if output_dir.resolve() == source_dir.resolve():
        raise FolderError("the output folder must differ from the input folder (pass -o OUTDIR)")
    by_output: dict[Path, list[Path]] = {}
    for path in _walk(source_dir, output_dir.resolve()):
        if path.suffix.lower() in suffixes:
            by_output.setdefault(output_dir / path.relative_to(source_dir).with_suffix(out_suffix), []).append(path)
    jobs, failures = [], []
    for output, sources in by_output.items():
        if len(sources) == 1:
            jobs.append(Job(sources[0], output, str(sources[0].relative_to(source_dir))))
            continue
        names = ", ".join(str(s.relative_to(source_dir)) for s in sources)
        failures.extend(
            (str(s.relative_to(source_dir)), f"{names} would all be written to {output}; rename one")
            for s in sources
        )
    return jobs, failures


@contextmanager
def _torch_threads_per_job(jobs: int) -> Iterator[None]:
    """Split torch's intra-op threads between ``jobs`` concurrent files (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // jobs))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_jobs(
    jobs: list[Job],
    work: Callable[[Job], int],
    workers: int,
    overwrite: bool,
    label: str,
    report: FolderReport,
) -> FolderReport:
    """Run ``work`` (which returns the pixels it handled) on every job not already done.

    One line per failure goes to stderr as it happens; a progress bar is shown on a terminal.
    """
    from tqdm import tqdm

    todo = [j for j in jobs if overwrite or not j.output.exists()]
    report.skipped += len(jobs) - len(todo)
    bar = tqdm(total=len(todo), desc=label, unit="image", disable=None, file=sys.stderr)
    started = time.perf_counter()
    lock = threading.Lock()

    def one(job: Job) -> None:
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            pixels = work(job)
            with lock:
                report.done += 1
                report.pixels += pixels
        except Exception as error:  # one bad file must not stop the folder
            reason = _one_line(str(error) or type(error).__name__)
            with lock:
                report.failed.append((job.name, reason))
                bar.write(f"cadc: error: {job.name}: {reason}", file=sys.stderr)
        finally:
            bar.update(1)

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cadc-job")
    pending: set[Future] = set()
    try:
        with _torch_threads_per_job(workers):
            for job in todo:
                pending.add(executor.submit(one, job))
                if len(pending) >= workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # re-raises what ``one`` does not catch (KeyboardInterrupt, SystemExit)
            for future in wait(pending).done:
                future.result()
    except KeyboardInterrupt:
        executor.shutdown(wait=False, cancel_futures=True)
        sys.stderr.write(
            f"cadc: interrupted after {report.done} of {len(todo)} files; the files in progress are finished "
            "first, nothing is left half-written; run the same command again to resume\n"
        )
        raise
    finally:
        executor.shutdown(wait=True)
        bar.close()
        report.seconds += time.perf_counter() - started
    report.failed.sort()
    return report


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _prepare(
    folder: str, args: argparse.Namespace, suffixes: frozenset[str], out_suffix: str
) -> tuple[list[Job], FolderReport]:
    if not args.output:
        raise FolderError(f"{folder} is a folder: pass -o OUTDIR for the outputs")
    if args.jobs < 1:
        raise FolderError(f"--jobs must be at least 1, got {args.jobs}")
    jobs, collisions = plan_jobs(Path(folder), Path(args.output), suffixes, out_suffix)
    report = FolderReport(inputs=len(jobs) + len(collisions), failed=list(collisions))
    for name, reason in collisions:
        sys.stderr.write(f"cadc: error: {name}: {reason}\n")
    return jobs, report


def compress_folder(args: argparse.Namespace) -> dict[str, Any]:
    """``cadc compress DIR -o OUTDIR``: every image under DIR → ``.cadc`` (see the module docstring)."""
    from .codec_io import encode_image
    from .container import write_cadc
    from .images import load_image
    from .weights import load_checkpoint

    jobs, report = _prepare(args.image, args, image_suffixes(), CADC_SUFFIX)
    checkpoint = load_checkpoint(args.model, device=args.device)
    codec = checkpoint.codec
    if not args.fast:
        codec.prepare()  # the exact encoder's float64 copies, built once before the threads start

    def work(job: Job) -> int:
        image = load_image(job.source)
        encoded = encode_image(codec, image, exact=not args.fast)
        write_cadc(job.output, encoded.file)
        return encoded.pixels

    run_jobs(jobs, work, args.jobs, args.overwrite, "compress", report)
    return {"mode": "folder", "input": args.image, "output": args.output, "model": checkpoint.source,
            **report.as_dict()}


class _FolderDecoder:
    """Decodes ``.cadc`` files with models loaded once and shared by the worker threads."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._lock = threading.Lock()
        self._checkpoints: dict[str, Any] = {}
        self._decoders: dict[tuple, Any] = {}

    def _checkpoint(self, header) -> Any:
        from .model_lookup import cli_model_folders, cli_put_it, find_model
        from .weights import load_checkpoint

        with self._lock:
            source = self.args.model
            if source is None:
                source = find_model(header.model_id, header.weights_sha256, cli_model_folders(), cli_put_it()).source
            if source not in self._checkpoints:
                self._checkpoints[source] = load_checkpoint(source, device=self.args.device)
            return self._checkpoints[source]

    def _generative(self, checkpoint, plan) -> Any:
        from .generative import GenerativeDecoder

        key = (checkpoint.source, plan.caption, plan.fixed_prompt, plan.tiling)
        with self._lock:
            if key not in self._decoders:
                self._decoders[key] = GenerativeDecoder.from_sources(
                    sd_turbo=self.args.sd_turbo,
                    blip=self.args.blip if plan.caption else None,
                    latent_channels=checkpoint.codec.config.latent_channels,
                    adapter_state=checkpoint.adapter_state or None,
                    adapter_config=checkpoint.adapter_config,
                    caption=plan.caption,
                    device=self.args.device,
                    tile_latent=plan.tiling.tile,
                    tile_overlap=plan.tiling.overlap,
                    tile_above=plan.tiling.above,
                    fixed_prompt=plan.fixed_prompt,
                    vae_decoder=getattr(self.args, "vae_decoder", None),
                )
            return self._decoders[key]

    def __call__(self, job: Job) -> int:
        from .codec_io import check_decode_size, decode_file
        from .container import read_cadc
        from .images import save_image

        args = self.args
        cadc_file = read_cadc(job.source)
        header = cadc_file.header
        check_decode_size(header, args.max_pixels)
        checkpoint = self._checkpoint(header)
        codec = checkpoint.codec
        if args.aux_only:
            decoded = decode_file(codec, cadc_file, max_pixels=args.max_pixels)
            if decoded.x_aux is None:
                raise FolderError("this model has no aux decoder (trained with aux=False); drop --aux-only")
            save_image(decoded.x_aux, job.output, channels=header.channels, bit_depth=header.bit_depth)
            return header.height * header.width
        from .generative.decode_plan import plan_decode

        plan = plan_decode(
            header.hints, codec.config, captioner=args.blip is not None, opt_out=args.no_caption,
            how_to_caption="pass --blip PATH, or --no-caption to silence this",
        )
        if plan.warning:
            warnings.warn(plan.warning, stacklevel=1)
        decoded = decode_file(codec, cadc_file, aux=plan.caption, max_pixels=args.max_pixels)
        decoder = self._generative(checkpoint, plan)
        result = decoder.decode(decoded.latent.l_T, decoded.x_aux, out_hw=(header.height, header.width))
        save_image(result.image, job.output, channels=header.channels, bit_depth=header.bit_depth)
        return header.height * header.width


def decompress_folder(args: argparse.Namespace) -> dict[str, Any]:
    """``cadc decompress DIR -o OUTDIR``: every ``.cadc`` under DIR → PNG (see the module docstring)."""
    if not args.aux_only and args.sd_turbo is None:
        raise FolderError(
            "the generative decoder needs SD-Turbo: pass --sd-turbo PATH (a diffusers folder or "
            "sd_turbo.safetensors) or --sd-turbo tiny-random; use --aux-only for the light preview decoder"
        )
    jobs, report = _prepare(args.input, args, frozenset({CADC_SUFFIX}), DECODED_SUFFIX)
    run_jobs(jobs, _FolderDecoder(args), args.jobs, args.overwrite, "decompress", report)
    return {"mode": "folder", "input": args.input, "output": args.output,
            "aux_only": bool(args.aux_only), **report.as_dict()}


def add_folder_options(parser: argparse.ArgumentParser) -> None:
    """``--jobs`` and ``--overwrite`` (folder inputs only)."""
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N",
        help="folder input: files worked on at once (threads sharing one copy of the models; default 1)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="folder input: redo outputs that already exist (default: skip them)"
    )


def is_folder(path: str | os.PathLike) -> bool:
    """Whether a compress/decompress input names a folder."""
    return Path(path).is_dir()


def summary(command: str, report: dict[str, Any]) -> str:
    """The one-line summary of a folder run."""
    rate = f", {report['images_per_s']:.2f} images/s" if report["images_per_s"] else ""
    failed = len(report["failed"])
    return (
        f"{command}: {report['done']} written, {report['skipped']} skipped (already there), {failed} failed, "
        f"in {report['seconds']:.1f} s{rate} → {report['output']}"
    )
