"""One benchmark phase in a fresh process: ``encode`` or ``decode`` of one preset at one size.

Run by :mod:`benchmarks.run` as ``python -m benchmarks.child SPEC.json OUT.json``; each phase gets
its own process so that its peak RSS (``resource.getrusage`` in this process) and its model
loading are its own, as with ``cadc compress`` and ``cadc decompress``.

``encode``: load the codec, encode the test image twice with ``exact=True`` (the first call also
builds the cached float64 copies of g_a, h_a and f_u; the second is reported), once with
``exact=False`` (fast path), and write the ``.cadc`` file for the decode phase. With
``encode_repeats: 1`` (the large encode-only runs) the float64 copies are built first
(``prepare``) and a 512² crop is encoded both ways (warm-up), then one exact and one fast encode
are timed; ``peak_rss_exact_mib`` is the peak
after the exact encode.

``decode``: load the codec and every generative model up front (timed per model), then decode the
file ``decode_repeats`` times with one :class:`cadc.generative.GenerativeDecoder`; the first
decode is reported, the second checks that nothing is loaded again. With ``low_memory`` the decode
runs as ``cadc decompress`` does: the generative models load on first use (their loading time is
part of their stage) and each is released once its stage is done.

``taesd``: time the TAESD decoder (``GenerativeDecoder.vae_decode`` with ``vae_decoder``, tiled as
the pipeline tiles) on a random latent of the run's size.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ASTRONAUT = Path(__file__).resolve().parents[1] / "cadc" / "assets" / "astronaut.png"


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far.

    Linux: ``VmHWM`` of /proc/self/status. Not ``ru_maxrss``: Linux carries a parent's peak into a
    forked child's ``ru_maxrss`` (even across exec), so a child of a big parent would report the
    parent's peak. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class StagePeaks:
    """Peak RSS of each decode stage, as a ``progress(stage, done, total)`` callback.

    At the end of a stage (``done == total``, and :meth:`mark` for the codec's part) VmHWM is read
    and reset to the current RSS (Linux: ``/proc/self/clear_refs`` 5), so each figure is the peak
    between the previous stage's end and this one's. :attr:`overall` keeps the process peak the
    resets hide. Where VmHWM cannot be reset the figures are cumulative.
    """

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.overall = 0.0

    def mark(self, stage: str) -> None:
        peak = peak_rss_mib()
        self.peaks[stage] = max(self.peaks.get(stage, 0.0), peak)
        self.overall = max(self.overall, peak)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def __call__(self, stage: str, done: int, total: int) -> None:
        if done == total:
            self.mark(stage)


def current_rss_mib() -> float:
    """Resident set size now (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mib()


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock stage times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def test_image(width: int, height: int) -> torch.Tensor:
    """The bundled photo resized (bicubic, antialiased) to ``width`` × ``height``: [1, 3, H, W] in 0..1."""
    from cadc.images import load_image

    x = load_image(ASTRONAUT).tensor
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """(fn(), wall seconds), synchronising the GPU on both ends."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return value, time.perf_counter() - start


def apply_fast_paths(module: torch.nn.Module, spec: dict[str, Any]) -> torch.nn.Module:
    """channels_last / torch.compile on a module when the spec asks for them."""
    if spec.get("channels_last"):
        module = module.to(memory_format=torch.channels_last)
    return module


def run_encode(spec: dict[str, Any]) -> dict[str, Any]:
    """Encode phase (see the module docstring)."""
    from cadc.codec_io import encode_tensor
    from cadc.container import write_cadc
    from cadc.weights import load_codec

    device = torch.device(spec["device"])
    codec, load_s = timed(lambda: load_codec(spec["codec"], device=device), device)
    x = test_image(spec["width"], spec["height"]).to(device)
    if spec.get("encode_repeats", 2) == 1:
        _, first_s = timed(codec.prepare, device)
        warm = x[..., :512, :512]  # first kernel calls and first-touch allocations, kept out of the timing
        encode_tensor(codec, warm, exact=True)
        encode_tensor(codec, warm, exact=False)
        encoded, _ = timed(lambda: encode_tensor(codec, x, exact=True)[0], device)
        peak_exact = peak_rss_mib()
        fast, _ = timed(lambda: encode_tensor(codec, x, exact=False)[0], device)
    else:
        encoded, first_s = timed(lambda: encode_tensor(codec, x, exact=True)[0], device)
        encoded, _ = timed(lambda: encode_tensor(codec, x, exact=True)[0], device)
        peak_exact = peak_rss_mib()
        timed(lambda: encode_tensor(codec, x, exact=False)[0], device)  # warm-up
        fast, _ = timed(lambda: encode_tensor(codec, x, exact=False)[0], device)
    if spec.get("cadc_path"):
        write_cadc(spec["cadc_path"], encoded.file)
    report = encoded.report()
    return {
        "peak_rss_exact_mib": peak_exact,
        "load_s": {"codec": load_s},
        "encode_s": encoded.seconds["total"],
        "encode_first_s": first_s,
        "encode_stages": {k: v for k, v in encoded.seconds.items() if k != "total"},
        "encode_fast_s": fast.seconds["total"],
        "encode_fast_stages": {k: v for k, v in fast.seconds.items() if k != "total"},
        "fast_bytes_identical": fast.file.streams == encoded.file.streams,
        "bits_actual": report["bits_actual"],
        "bits_estimated": report["bits_estimated"],
        "bits_estimated_y": encoded.compressed.bits_estimated_y,
        "bits_estimated_z": encoded.compressed.bits_estimated_z,
        "header_bytes": report["header_bytes"],
        "file_bytes": report["file_bytes"],
        "bpp": report["bpp"],
        "peak_rss_mib": peak_rss_mib(),
        **cuda_peak(device),
    }


def cuda_peak(device: torch.device) -> dict[str, float]:
    """``peak_cuda_mib`` on CUDA, nothing elsewhere."""
    if device.type != "cuda":
        return {}
    return {"peak_cuda_mib": torch.cuda.max_memory_allocated(device) / 2**20}


class LoadCounter:
    """Counts calls of the generative decoder's model loaders (to prove nothing loads twice)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args, **kwargs)

        return counted


def run_decode(spec: dict[str, Any]) -> dict[str, Any]:
    """Decode phase (see the module docstring)."""
    from cadc.codec_io import decode_file
    from cadc.container import read_cadc
    from cadc.generative import GenerativeDecoder
    from cadc.generative import captioner as captioner_module
    from cadc.weights import load_codec

    device = torch.device(spec["device"])
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec["dtype"]]
    load_s: dict[str, float] = {}
    codec, load_s["codec"] = timed(lambda: load_codec(spec["codec"], device=device), device)
    cadc_file = read_cadc(spec["cadc_path"])
    caption = bool(spec["caption"]) and codec.g_aux is not None
    decoder = GenerativeDecoder.from_sources(
        spec["sd_turbo"],
        blip=spec["blip"] if caption else None,
        latent_channels=codec.config.latent_channels,
        caption=caption,
        device=device,
        dtype=dtype,
        tile_latent=spec["tile_latent"],
        tile_overlap=spec["tile_overlap"],
        tile_above=spec["tile_above"],
        low_memory=spec.get("low_memory", False),
    )
    counter = LoadCounter()
    source = decoder.sd_turbo
    for name in ("load_unet", "load_vae", "load_text_encoder", "load_tokenizer"):
        setattr(source, name, counter.wrap(name, getattr(source, name)))
    captioner_cls = captioner_module.Captioner
    original_from_source = captioner_cls.from_source
    captioner_cls.from_source = counter.wrap("load_blip", original_from_source)  # type: ignore[method-assign]
    try:
        models = {"tokenizer": "tokenizer", "text_encoder": "text_encoder", "unet": "denoiser", "vae": "vae"}
        if caption:
            models["blip"] = "captioner"
        if decoder.low_memory:  # as the CLI: every model loads on first use and is released after its stage
            models = {"tokenizer": "tokenizer"}
        rss_by_model = {"codec": current_rss_mib()}
        # The decoder-side float64 copies (h_s, quadtree context) are built on first use; build them
        # here so that the reported decode is a warm one.
        _, load_s["codec_float64_copies"] = timed(lambda: codec.prepare(encoder=False), device)
        rss_by_model["codec_float64_copies"] = current_rss_mib()
        for key, attribute in models.items():
            _, load_s[key] = timed(lambda attribute=attribute: getattr(decoder, attribute), device)
            rss_by_model[key] = current_rss_mib()
        for module in (decoder.denoiser.unet, decoder.vae):
            apply_fast_paths(module, spec)
        rss_loaded = current_rss_mib()
        peak_loaded = peak_rss_mib()
        loads_before = dict(counter.calls)
        decodes = []
        stage_peaks = StagePeaks()
        repeats = max(1, spec["decode_repeats"])
        for index in range(repeats):
            last = index == repeats - 1
            decodes.append(decode_once(codec, cadc_file, decoder, caption, device, decode_file, stage_peaks, last))
        loads_after = dict(counter.calls)
    finally:
        captioner_cls.from_source = original_from_source  # type: ignore[method-assign]
    first = decodes[0]
    return {
        "load_s": load_s,
        "rss_after_load_mib": rss_loaded,
        "peak_rss_after_load_mib": peak_loaded,
        "rss_after_each_load_mib": rss_by_model,
        "decode_s": first["decode_s"],
        "decode_stages": first["stages"],
        "decode_repeat_s": [d["decode_s"] for d in decodes[1:]],
        "decode_repeat_stages": [d["stages"] for d in decodes[1:]],
        "caption": first["caption"],
        "tiled": first["tiled"],
        "loader_calls_before_decoding": loads_before,
        "loader_calls_after_decoding": loads_after,
        "loaded_twice": loads_after != loads_before or any(v > 1 for v in loads_after.values()),
        "low_memory": decoder.low_memory,
        "peak_rss_mib": max(peak_rss_mib(), stage_peaks.overall, peak_loaded),
        "peak_rss_by_stage_mib": stage_peaks.peaks,
        **cuda_peak(device),
    }


def decode_once(
    codec, cadc_file, decoder, caption: bool, device: torch.device, decode_file, stage_peaks: StagePeaks,
    last: bool,
) -> dict[str, Any]:
    """One full decode: .cadc → ŷ → l_T (+ x̂_aux) → caption → text → UNet → VAE → image."""
    sync(device)
    start = time.perf_counter()
    decoded = decode_file(codec, cadc_file, aux=caption)
    if decoder.low_memory:  # as `cadc decompress`: nothing of the codec is kept for another file
        if last:
            codec.release_weights()
        else:
            codec.release_float64_copies()
    sync(device)
    header = cadc_file.header
    stage_peaks.mark("codec_decode")
    result = decoder.decode(
        decoded.latent.l_T, decoded.latent.x_aux, out_hw=(header.height, header.width), progress=stage_peaks
    )
    sync(device)
    total = time.perf_counter() - start
    stages = {k: v for k, v in decoded.seconds.items() if k != "total"}
    stages.update(result.seconds)
    return {"decode_s": total, "stages": stages, "caption": result.captions[0], "tiled": result.tiled}


def run_taesd(spec: dict[str, Any]) -> dict[str, Any]:
    """TAESD phase (see the module docstring): load time, decode time and peak memory."""
    from cadc.generative import GenerativeDecoder

    device = torch.device(spec["device"])
    dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec["dtype"]]
    decoder = GenerativeDecoder.from_sources(
        "tiny-random", latent_channels=4, device=device, dtype=dtype, vae_decoder=spec["taesd"],
        tile_latent=spec["tile_latent"], tile_overlap=spec["tile_overlap"], tile_above=spec["tile_above"],
    )
    _, load_s = timed(lambda: decoder.vae, device)
    h, w = -(-spec["height"] // 64) * 8, -(-spec["width"] // 64) * 8  # the padded image's latent grid
    l_0 = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(0))
    timed(lambda: decoder.vae_decode(l_0[..., :8, :8]), device)  # warm-up
    _, seconds = timed(lambda: decoder.vae_decode(l_0), device)
    return {"load_s": load_s, "taesd_s": seconds, "peak_rss_mib": peak_rss_mib(), **cuda_peak(device)}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.child SPEC.json OUT.json``."""
    spec_path, out_path = argv or sys.argv[1:3]
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    phases = {"encode": run_encode, "decode": run_decode, "taesd": run_taesd}
    result = phases[spec["phase"]](spec)
    result["threads"] = torch.get_num_threads()
    Path(out_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
