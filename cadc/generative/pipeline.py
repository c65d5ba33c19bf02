"""GenerativeDecoder: l_T (+ x̂_aux) → image, as in the paper.

    x̂_aux ─ BLIP ─► caption ─ join_prompt ─► SD-Turbo text encoder ─► text [B, 77, 1024]
    l_T [B, 320, h, w] ─ OneStepDenoiser(t = 999, text) ─► ε [B, 4, h, w]
    l_0 = predict_x0(l_T[:, :4], ε)  ─ VAE decoder(l_0 / 0.18215) ─► image [B, 3, 8h, 8w] → crop

Models load lazily on first use (one thread at a time), stay cached, and
:meth:`GenerativeDecoder.free` releases them; with ``low_memory`` each model is released as soon as
its stage is done. The UNet and the VAE decoder run over latent tiles when the latent's longer side
exceeds ``tile_above``.

Memory on the CPU: the text encoder and the UNet keep their weights in the file's dtype (float16 for
SD-Turbo's usual files, memory-mapped) and compute in float32 layer by layer (:mod:`.layer_cast`;
bit-identical to casting them up front; the LoRA is merged once in float32 and rounded to the file's
dtype, as on a GPU). The VAE decoder (small) is cast up front, its encoder dropped and its SiLUs
made in-place (each acts on a fresh GroupNorm output; the same numbers, ~0.6 GB less at 2048x1365).
 ``vae_decoder`` swaps the SD VAE
decoder for TAESD (fast preview, :func:`.sd_turbo.load_taesd_decoder`).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

from ..timing import stage_timer
from .adapter import AdapterConfig, AdapterError, AdapterWeights
from .captioner import FIXED_PROMPT, TINY, Captioner, check_blip_folder, join_prompt
from .denoiser import OneStepDenoiser
from .errors import SourceError
from .layer_cast import compute_in, merge_lora
from .schedule import predict_x0
from .sd_turbo import SDTurboSource, load_taesd_decoder
from .tiling import tiled

log = logging.getLogger(__name__)

M = TypeVar("M", bound=torch.nn.Module)
Progress = Callable[[str, int, int], None]
"""progress(stage, done, total); stages: caption, text_encode, unet, vae_decode."""


@dataclass
class GenerativeResult:
    """Output of :meth:`GenerativeDecoder.decode`.

    Attributes:
        image: [B, 3, H, W] float32 in 0..1 on the CPU, cropped to ``out_hw``.
        captions: BLIP captions of x̂_aux ("" when captioning is off).
        prompts: the prompts fed to the text encoder (:func:`join_prompt`).
        seconds: wall time per stage: caption, text_encode, unet, vae_decode (model loading included
            the first time).
        peak_memory_mib: CUDA: peak allocated memory during this call; CPU: the process's peak
            resident set size so far (0 on Windows, where it is not queried).
        tiled: whether the UNet and VAE ran over latent tiles.
    """

    image: torch.Tensor
    captions: list[str]
    prompts: list[str]
    seconds: dict[str, float]
    peak_memory_mib: float
    tiled: bool


def default_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA, float32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


class GenerativeDecoder:
    """One-step SD-Turbo decoder with BLIP captioning (BFATC). Build with :meth:`from_sources`."""

    def __init__(
        self,
        sd_turbo: SDTurboSource,
        blip: str | os.PathLike | None,
        adapter: AdapterWeights | None,
        adapter_config: AdapterConfig,
        caption: bool,
        device: torch.device,
        dtype: torch.dtype,
        tile_latent: int,
        tile_overlap: int,
        tile_above: int,
        fixed_prompt: str = FIXED_PROMPT,
        low_memory: bool = False,
        vae_decoder: str | os.PathLike | None = None,
    ):
        self.sd_turbo = sd_turbo
        self.vae_decoder = vae_decoder
        self.fixed_prompt = fixed_prompt
        self.low_memory = low_memory
        self.blip = blip
        self.adapter = adapter
        self.adapter_config = adapter_config
        self.caption = caption and blip is not None
        self.device = device
        self.dtype = dtype
        self.tile_latent = tile_latent
        self.tile_overlap = tile_overlap
        self.tile_above = tile_above
        self._models: dict[str, object] = {}
        self._text_cache: dict[str, torch.Tensor] = {}
        self._loading = threading.RLock()

    @classmethod
    def from_sources(
        cls,
        sd_turbo: str | os.PathLike,
        blip: str | os.PathLike | None = None,
        latent_channels: int = 320,
        adapter_state: Mapping[str, torch.Tensor] | None = None,
        adapter_config: Mapping | None = None,
        caption: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        tile_latent: int = 96,
        tile_overlap: int = 32,
        tile_above: int = 128,
        fixed_prompt: str = FIXED_PROMPT,
        low_memory: bool = False,
        vae_decoder: str | os.PathLike | None = None,
    ) -> GenerativeDecoder:
        """Describe the decoder; nothing is loaded until first use (paths are checked now).

        Args:
            sd_turbo: ``"tiny-random"``, a diffusers folder or a single-file ``.safetensors``.
            blip: ``"tiny-random"``, a local BLIP folder, or None (fixed prompt only).
            latent_channels: channels of l_T (``CodecConfig.latent_channels``).
            adapter_state: tensors from the CADC checkpoint; keys starting with ``adapter.`` are used.
                None: a deterministic seeded demo adapter (logged as a warning when built).
            adapter_config: the checkpoint's ``cadc.adapter`` JSON (rank, alpha, targets).
            caption: False uses the fixed prompt alone (the paper's ablation).
            device, dtype: default CUDA if available else CPU; float16 on CUDA, float32 on CPU.
            tile_latent, tile_overlap: latent tile side and overlap (latent pixels, multiples of 8).
            tile_above: tile when the latent's longer side exceeds this (0 forces tiling).
            fixed_prompt: c_fix, appended to every caption (a ``.cadc`` file's hint carries it).
            low_memory: release each model as soon as its stage is done (BLIP and the text encoder
                once the text embedding exists, the UNet before the VAE decoder runs, the VAE after),
                so no two sit in memory together; they reload on the next decode. Right for one-shot
                decodes such as the CLI.
            vae_decoder: a TAESD decoder (file, ``vae_approx`` folder or diffusers folder) to use
                instead of SD's VAE decoder: a fast, lower-quality preview.

        Raises:
            SourceError: a source path does not exist (the message says what to put where).
            AdapterError: adapter tensors are malformed or do not match ``latent_channels``.
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        source = SDTurboSource(sd_turbo)
        if blip is not None and caption and str(blip) != TINY:
            check_blip_folder(blip)
        if vae_decoder is not None and not os.path.exists(os.path.expanduser(vae_decoder)):
            raise SourceError(f"VAE decoder not found at {vae_decoder}: pass a TAESD decoder file or folder")
        adapter = None
        if adapter_state is not None and any(k.startswith("adapter.") for k in adapter_state):
            adapter = AdapterWeights.from_state_dict(adapter_state, adapter_config)
            if adapter.config.latent_channels != latent_channels:
                raise AdapterError(
                    f"adapter conv_in takes {adapter.config.latent_channels} channels, l_T has {latent_channels}"
                )
        cfg = AdapterConfig.from_dict({**(adapter_config or {}), "latent_channels": latent_channels})
        return cls(
            source,
            blip,
            adapter,
            cfg,
            caption,
            dev,
            dtype or default_dtype(dev),
            tile_latent,
            tile_overlap,
            tile_above,
            fixed_prompt,
            low_memory,
            vae_decoder,
        )

    # -- lazily loaded models -------------------------------------------------------------------
    def _get(self, name: str, load: Callable[[], object]) -> object:
        with self._loading:
            if name not in self._models:
                self._models[name] = load()
            return self._models[name]

    def _stored_in_file_dtype(self) -> bool:
        """Whether big models keep their file dtype and cast per layer (the CPU) or are cast whole."""
        return self.device.type == "cpu"

    def _load(self, module: M) -> M:
        """``module`` (CPU, file dtype) ready to run: per-layer cast on the CPU, cast whole elsewhere."""
        if self._stored_in_file_dtype():
            return compute_in(module, self.dtype)
        return _place(module, self.device, self.dtype)

    @property
    def captioner(self) -> Captioner:
        """BLIP captioner (loaded on first use)."""
        return self._get("captioner", lambda: Captioner.from_source(self.blip, self.device, self.dtype))  # type: ignore[return-value]

    @property
    def text_encoder(self) -> torch.nn.Module:
        """SD-Turbo text encoder on device/dtype."""
        return self._get("text_encoder", lambda: self._load(self.sd_turbo.load_text_encoder()))  # type: ignore[return-value]

    @property
    def tokenizer(self):
        """SD-Turbo's CLIP tokenizer."""
        return self._get("tokenizer", self.sd_turbo.load_tokenizer)

    @property
    def denoiser(self) -> OneStepDenoiser:
        """UNet + adapter on device/dtype (LoRA merged)."""

        def load() -> OneStepDenoiser:
            if self._stored_in_file_dtype():
                unet = self.sd_turbo.load_unet()
                den = OneStepDenoiser(unet, self.adapter, self.adapter_config, merge=False, adapter_dtype=torch.float32)
                compute_in(merge_lora(den.unet), self.dtype)
                return den
            unet = _place(self.sd_turbo.load_unet(), self.device, self.dtype)
            return _place(OneStepDenoiser(unet, self.adapter, self.adapter_config), self.device, self.dtype)

        return self._get("denoiser", load)  # type: ignore[return-value]

    @property
    def vae(self) -> torch.nn.Module:
        """The VAE decoder on device/dtype: SD's (encoder dropped) or TAESD when ``vae_decoder`` is set."""

        def load() -> torch.nn.Module:
            if self.vae_decoder is not None:
                return _place(load_taesd_decoder(self.vae_decoder), self.device, self.dtype)
            vae = self.sd_turbo.load_vae()
            vae.encoder = vae.quant_conv = None  # decoding needs post_quant_conv and the decoder only
            for module in vae.decoder.modules():  # decoder SiLUs follow a GroupNorm (no shared time embedding)
                if isinstance(module, torch.nn.SiLU):
                    module.inplace = True
            return _place(vae, self.device, self.dtype)

        return self._get("vae", load)  # type: ignore[return-value]

    def free(self) -> None:
        """Drop every loaded model and cached text embedding (they reload on next use)."""
        self._text_cache.clear()
        self._release(*self._models)

    def _release(self, *names: str) -> None:
        """Drop the named models (they reload on next use) and return their memory."""
        for name in names:
            self._models.pop(name, None)
        gc.collect()
        _trim_heap()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- stages ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def captions(self, x_aux: torch.Tensor | None, batch: int) -> list[str]:
        """BLIP captions of x̂_aux [B, 3, H, W] in 0..1, or B empty strings when captioning is off."""
        if not self.caption:
            return [""] * batch
        if x_aux is None:
            log.warning("no auxiliary reconstruction x_aux: using the fixed prompt alone")
            return [""] * batch
        return self.captioner(x_aux)

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states [B, 77, D] (D = 1024 for SD-Turbo), cached per prompt."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            tok = self.tokenizer(missing, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            hidden = self.text_encoder(tok.input_ids.to(self.device))[0]
            self._text_cache.update(zip(missing, hidden, strict=True))
        return torch.stack([self._text_cache[p] for p in prompts])

    def _tiling(self, h: int, w: int) -> bool:
        return max(h, w) > self.tile_above

    @torch.inference_mode()
    def denoise(self, l_t: torch.Tensor, text: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """l_0 [B, 4, h, w] float32 (UNet units) from l_T [B, latent_channels, h, w] and text states."""
        den = self.denoiser
        x = l_t.to(self.device, self.dtype)

        def eps(tile: torch.Tensor) -> torch.Tensor:
            return den(tile, text)

        if self._tiling(*x.shape[-2:]):
            e = tiled(eps, x, self.tile_latent, self.tile_overlap, progress=_stage(progress, "unet"))
        else:
            e = eps(x)
            _stage(progress, "unet")(1, 1)
        return predict_x0(l_t[:, :4].to(self.device), e)

    @torch.inference_mode()
    def vae_decode(self, l_0: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """Image [B, 3, 8h, 8w] float32 in 0..1 from l_0 [B, 4, h, w] in UNet units."""
        vae = self.vae
        z = (l_0 / vae.config.scaling_factor).to(self.device, self.dtype)  # TAESD: 1 (it takes UNet units)

        def dec(tile: torch.Tensor) -> torch.Tensor:
            return vae.decode(tile, return_dict=False)[0]

        if self._tiling(*z.shape[-2:]):
            img = tiled(dec, z, self.tile_latent, self.tile_overlap, scale=8, progress=_stage(progress, "vae_decode"))
        else:
            img = dec(z).float()
            _stage(progress, "vae_decode")(1, 1)
        return ((img.clamp(-1, 1) + 1) / 2).cpu()

    def decode(
        self,
        l_t: torch.Tensor,
        x_aux: torch.Tensor | None,
        out_hw: tuple[int, int] | None = None,
        progress: Progress | None = None,
    ) -> GenerativeResult:
        """The full generative decode.

        Args:
            l_t: [B, latent_channels, h, w] float32; channels :4 are the noisy SD latent in UNet units.
            x_aux: [B, 3, 8h, 8w] float32 in 0..1 (caption input), or None (fixed prompt).
            out_hw: crop (H, W) of the output, at most (8h, 8w); default the full size.
            progress: optional callback(stage, done, total).
        """
        b, c, h, w = l_t.shape
        if c != self.adapter_config.latent_channels:
            want = self.adapter_config.latent_channels
            raise ValueError(f"l_T has {c} channels, the decoder was built for {want}")
        H, W = out_hw or (8 * h, 8 * w)
        if not (0 < H <= 8 * h and 0 < W <= 8 * w):
            raise ValueError(f"out_hw {(H, W)} exceeds the latent's image size {(8 * h, 8 * w)}")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        seconds: dict[str, float] = {}
        with stage_timer(seconds, "caption"):
            captions = self.captions(x_aux, b)
            _stage(progress, "caption")(1, 1)
        with stage_timer(seconds, "text_encode"):
            prompts = [join_prompt(cap, self.fixed_prompt) for cap in captions]
            text = self.encode_prompts(prompts)
            if self.low_memory:
                self._release("captioner", "text_encoder")
            _stage(progress, "text_encode")(1, 1)
        with stage_timer(seconds, "unet"):
            l_0 = self.denoise(l_t, text, progress)
            if self.low_memory:
                self._release("denoiser")
        with stage_timer(seconds, "vae_decode"):
            image = self.vae_decode(l_0, progress)[:, :, :H, :W].contiguous()
            if self.low_memory:
                self._release("vae")
        return GenerativeResult(image, captions, prompts, seconds, _peak_mib(self.device), self._tiling(h, w))


def _place(module: M, device: torch.device, dtype: torch.dtype) -> M:
    """Move and cast; plain ``nn.Module.to`` skips diffusers' warning about fp32-only modules (none here)."""
    return torch.nn.Module.to(module, device=device, dtype=dtype)


def _trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``; nothing elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # another C library (musl): nothing to do
        pass


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None]:
    if progress is None:
        return lambda done, total: None
    return lambda done, total: progress(stage, done, total)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # Linux: this process's own high-water mark (ru_maxrss can carry a parent's peak)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows: no portable peak-RSS query without extra packages
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
