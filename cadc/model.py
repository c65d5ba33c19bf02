"""CADCCodec: the learned codec of CADC (Sheng et al., CVPR 2026, arXiv 2602.21591).

x → g_a → y (over tiles, :mod:`cadc.tiled_analysis`, so memory stays bounded); y → h_a → z;
ẑ coded with a factorized entropy bottleneck; UGAQ quantizes
ŷ = round(y / f_u(y − UP(ẑ))); h_s(ẑ) and a 4-step quadtree context give μ, σ for ŷ;
g_s(ŷ) = l_T on the SD latent grid; g_aux(l_T[:, :4]) = x̂_aux. The generative half (one-step
SD-Turbo, BLIP captions) lives in :mod:`cadc.generative`.

The class has CompressAI's shape: ``forward`` for training (likelihoods), ``compress`` /
``decompress`` for real bitstreams, ``update`` to build the integer CDF tables (buffers in the
state dict).

Determinism — how the decoder is guaranteed to pick the encoder's CDFs:
every quantity that selects a CDF or a symbol offset (ẑ, h_s(ẑ), the four context networks, the
σ-table index and round(μ)) is computed in float64 on the CPU, on cached float64 copies of h_s and
the context networks, from integer inputs (ẑ symbols + stored medians, decoded ŷ). Float64
convolutions on the CPU are bit-identical across thread counts (measured, see
docs/determinism.md); across CPUs their ~1e-16 relative error makes a boundary hit about
1e-13 likely per element, against ~1e-6 in float32. ẑ's CDFs are integer tables stored in the
checkpoint. With ``exact=True`` (the default) the encoder-only networks g_a, h_a and f_u run in
float64 on the CPU too, so the same image gives a byte-identical file whatever the thread count;
``exact=False`` runs them on the model's device and dtype (fast path; files stay decodable
everywhere, but byte-identity across devices is no longer promised).
"""

from __future__ import annotations

import copy
import math
import threading
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._compressai import EntropyBottleneck, update_registered_buffers
from .config import CodecConfig
from .entropy import (
    CdfTables,
    SnappedGaussianConditional,
    StreamDecoder,
    StreamEncoder,
    escape_bits,
    ste_round,
)
from .quadtree import NUM_STEPS, QuadtreeContext, step_masks
from .tiled_analysis import TILE_BYTES, tiled_analysis
from .timing import stage_timer
from .transforms import AnalysisTransform, AuxDecoder, HyperAnalysis, HyperSynthesis, SynthesisTransform
from .ugaq import UncertaintyQuantizer

DOWNSCALE = 64
"""Image size must be a multiple of this (pixels per y element along each axis)."""
HYPER_DOWNSCALE = 4
"""y elements per z element along each axis; y is replicate-padded to a multiple of it for h_a."""
LATENT_DOWNSCALE = 8
"""Pixels per l_T element along each axis (the SD latent grid)."""
MEAN_LIMIT = float(2**31)
"""|round(μ)| bound when decoding: keeps ŷ finite in float32 whatever a damaged stream decodes to."""
LATENT_LIMIT = 1.0e4
"""|l_T| bound when decoding (real latents are orders of magnitude smaller); NaN/inf become finite."""

_FLOAT64_LOCK = threading.RLock()
"""Guards the float64-copy caches of every codec (module-level: a codec must stay deep-copyable)."""


def _finite(t: torch.Tensor, limit: float) -> torch.Tensor:
    """``t`` with NaN → 0 and every value clamped to ±``limit`` (identity on sane values)."""
    return torch.nan_to_num(t, nan=0.0, posinf=limit, neginf=-limit).clamp(-limit, limit)


@dataclass(frozen=True)
class CompressedImage:
    """One image's bitstream: a single rANS stream holding ẑ then ŷ's four quadtree steps."""

    payload: bytes
    y_shape: tuple[int, int, int]
    z_shape: tuple[int, int, int]
    bits_estimated_y: float
    bits_estimated_z: float
    y_hat: torch.Tensor  # [1, Cy, h, w] the coded ŷ (float32, integer-valued), for diagnostics

    @property
    def bits_estimated(self) -> float:
        """−Σ log2 P of every coded symbol under the coded (table-snapped) model."""
        return self.bits_estimated_y + self.bits_estimated_z


@dataclass(frozen=True)
class DecodedLatent:
    """Output of ``decompress`` for one image (padded size; crop with the file's header)."""

    y_hat: torch.Tensor  # [1, Cy, H/64, W/64], integer-valued float32
    l_T: torch.Tensor  # [1, Cl, H/8, W/8] float32 (or the model's dtype)
    x_aux: torch.Tensor | None  # [1, 3, H, W] in 0..1, None when the codec has no g_aux


def tensor_key(t: torch.Tensor) -> tuple:
    """Identity + in-place version of a tensor, for caches that must notice weight changes.

    Inference tensors (made under ``torch.inference_mode``, as ComfyUI loads models) have no
    version counter; they cannot be changed outside inference mode, so storage identity is used.
    """
    version = -1 if t.is_inference() else t._version
    return (t.data_ptr(), version, t.dtype, tuple(t.shape), str(t.device))


class _ShiftDepthwiseConv2d(nn.Module):
    """A float64 depthwise convolution as k·k shifted multiply-adds (the exact encoder's fast path).

    On the CPU, PyTorch runs a float64 grouped convolution as one small im2col + GEMM per channel
    (hundreds of calls per GatedBlock; ~40× slower than float32 oneDNN). Elementwise multiply-adds in
    a fixed order are ~10-20× faster and, like the GEMM path, bit-identical for any thread count. The
    result differs from ``nn.Conv2d`` by float64 rounding only (~1e-15), so it is used only in the
    encoder-only networks (g_a), whose outputs the decoder never recomputes.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.kernel_size = conv.kernel_size
        self.padding = conv.padding

    @staticmethod
    def replaces(module: nn.Module) -> bool:
        """Whether ``module`` is a depthwise, stride-1, zero-padded Conv2d this class can stand in for."""
        return (
            isinstance(module, nn.Conv2d)
            and module.groups == module.in_channels == module.out_channels
            and module.stride == (1, 1)
            and module.dilation == (1, 1)
            and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        padded = F.pad(x, (pw, pw, ph, ph))
        height, width = padded.shape[-2] - kh + 1, padded.shape[-1] - kw + 1
        weight = self.weight[:, 0]
        out = x.new_zeros(x.shape[0], x.shape[1], height, width)
        if self.bias is not None:
            out += self.bias.reshape(1, -1, 1, 1)
        for i in range(kh):
            for j in range(kw):
                out.addcmul_(padded[:, :, i : i + height, j : j + width], weight[:, i, j].reshape(1, -1, 1, 1))
        return out


def _use_shift_depthwise(module: nn.Module) -> None:
    """Swap every eligible depthwise Conv2d inside ``module`` for :class:`_ShiftDepthwiseConv2d`."""
    for name, child in module.named_children():
        if _ShiftDepthwiseConv2d.replaces(child):
            setattr(module, name, _ShiftDepthwiseConv2d(child))
        else:
            _use_shift_depthwise(child)


ENCODER_ONLY = ("g_a", "h_a", "ugaq")
"""Sub-networks whose outputs only the encoder computes (their float64 copies may use fast kernels)."""


def hyper_grid(height: int, width: int) -> tuple[int, int]:
    """z's grid for a y grid of ``height`` × ``width``: ⌈h/4⌉ × ⌈w/4⌉."""
    return -(-height // HYPER_DOWNSCALE), -(-width // HYPER_DOWNSCALE)


def _pad_to_hyper_grid(y: torch.Tensor) -> torch.Tensor:
    zh, zw = hyper_grid(*y.shape[-2:])
    pad_h, pad_w = zh * HYPER_DOWNSCALE - y.shape[-2], zw * HYPER_DOWNSCALE - y.shape[-1]
    return F.pad(y, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else y


class CADCCodec(nn.Module):
    """CADC's learned codec. See the module docstring for the data flow and determinism."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        self.g_a = AnalysisTransform(config)
        self.h_a = HyperAnalysis(config)
        self.entropy_bottleneck = EntropyBottleneck(config.z_channels)
        self.ugaq = (
            UncertaintyQuantizer(config.y_channels, config.z_channels, config.ugaq_width) if config.ugaq else None
        )
        self.h_s = HyperSynthesis(config)
        self.context = QuadtreeContext(config.y_channels, config.ctx_width)
        self.gaussian_conditional = SnappedGaussianConditional(
            config.scale_min, config.scale_max, config.num_scales
        )
        self.g_s = SynthesisTransform(config)
        self.g_aux = AuxDecoder(config) if config.aux else None
        self._float64_copies: dict[str, tuple[tuple, nn.Module]] = {}

    # ------------------------------------------------------------------ training
    def forward(self, x: torch.Tensor) -> dict:
        """Training pass with straight-through rounding.

        Args:
            x: [B, 3, H, W] in 0..1, H and W multiples of 64.

        Returns:
            ``likelihoods`` {"y": [B, Cy, H/64, W/64], "z": [B, Cz, h_z, w_z]}, ``y_hat``,
            ``l_T`` [B, Cl, H/8, W/8], ``x_aux`` [B, 3, H, W] or None, ``m`` (UGAQ steps, like y).
        """
        self._check_input(x)
        y = self.g_a(x)
        z = self.h_a(_pad_to_hyper_grid(y))
        _, z_likelihoods = self.entropy_bottleneck(z)
        medians = self._medians(z.dtype, z.device)
        z_hat = ste_round(z - medians) + medians
        m = self.ugaq.step(y, z_hat) if self.ugaq is not None else torch.ones_like(y)
        y_hat = ste_round(y / m)
        hyper = self.h_s(z_hat)[..., : y.shape[-2], : y.shape[-1]]
        means, scales = self.context(hyper, y_hat)
        y_likelihoods = self.gaussian_conditional.snapped_likelihood(y_hat, scales, means)
        l_T = self.g_s(y_hat)
        x_aux = self.g_aux(l_T[:, :4]) if self.g_aux is not None else None
        return {
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
            "y_hat": y_hat,
            "l_T": l_T,
            "x_aux": x_aux,
            "m": m,
        }

    def aux_loss(self) -> torch.Tensor:
        """CompressAI's auxiliary loss that fits the entropy bottleneck's quantiles."""
        return self.entropy_bottleneck.loss()

    # ------------------------------------------------------------------ coding
    def update(self, force: bool = False) -> bool:
        """Build the integer CDF tables of ẑ and ŷ (buffers saved in the state dict).

        The tables are computed in float64 so that building them is reproducible across CPUs.
        """
        updated = False
        for module in (self.entropy_bottleneck, self.gaussian_conditional):
            module.double()
            if module is self.gaussian_conditional:
                updated |= module.update_scale_table(module.scale_table.tolist(), force=force)
            else:
                updated |= module.update(force=force)
            module.float()
        return updated

    @torch.inference_mode()
    def compress(
        self,
        x: torch.Tensor,
        exact: bool = True,
        timings: dict[str, float] | None = None,
        tile_bytes: int | None = TILE_BYTES,
    ) -> list[CompressedImage]:
        """Code a batch; one independent bitstream per image.

        Args:
            x: [B, 3, H, W] in 0..1, H and W multiples of 64, on any device (read tile by tile).
            exact: run the encoder-only networks in float64 on the CPU (byte-identical files
                across runs, thread counts and machines). False uses the model's device/dtype.
            timings: if given, per-stage wall seconds are added to it (``g_a``, ``hyperprior``,
                ``ugaq``, ``entropy_encode``).
            tile_bytes: run g_a over tiles whose widest activation stays within this many bytes
                (:mod:`cadc.tiled_analysis`: memory bounded whatever the image size; ŷ as untiled up
                to float64 rounding). None runs g_a on the whole image at once. h_a and f_u work on
                y (1/64 of each side) and are never tiled.
        """
        self._check_input(x)
        g_a, h_a, ugaq = (
            (self._float64("g_a"), self._float64("h_a"), self._float64("ugaq"))
            if exact
            else (self.g_a, self.h_a, self.ugaq)
        )
        param = next(g_a.parameters())
        with stage_timer(timings, "g_a"):
            if tile_bytes is None:
                y = g_a(x.to(device=param.device, dtype=param.dtype))
            else:
                y = tiled_analysis(g_a, x, tile_bytes)
        with stage_timer(timings, "hyperprior"):
            z = h_a(_pad_to_hyper_grid(y))
            medians = self._medians(z.dtype, z.device)
            z_symbols = torch.round(z - medians)
            z_hat = z_symbols + medians
        with stage_timer(timings, "ugaq"):
            m = ugaq.step(y, z_hat) if ugaq is not None else torch.ones_like(y)
            y_hat = torch.round(y / m)
        with stage_timer(timings, "entropy_encode"):
            return [
                self._code_one(z_symbols[i : i + 1].cpu().long(), y_hat[i : i + 1].cpu().double())
                for i in range(x.shape[0])
            ]

    @torch.inference_mode()
    def decompress(
        self,
        payload: bytes,
        y_shape: tuple[int, int, int],
        z_shape: tuple[int, int, int],
        timings: dict[str, float] | None = None,
        aux: bool = True,
    ) -> DecodedLatent:
        """Decode one bitstream into ŷ, l_T and x̂_aux (at the padded size).

        ``timings`` collects ``entropy_decode``, ``g_s`` and ``g_aux`` seconds; ``aux=False``
        skips g_aux.
        """
        self._check_shapes(y_shape, z_shape)
        with stage_timer(timings, "entropy_decode"):
            y_hat = self._decode_y_hat(payload, y_shape, z_shape)
        param = next(self.g_s.parameters())
        y_hat = y_hat.to(device=param.device, dtype=param.dtype)
        with stage_timer(timings, "g_s"):
            # A damaged or crafted stream can decode to huge ŷ: keep l_T and x̂_aux finite.
            l_T = _finite(self.g_s(y_hat), LATENT_LIMIT)
        x_aux = None
        if aux and self.g_aux is not None:
            with stage_timer(timings, "g_aux"):
                x_aux = torch.nan_to_num(self.g_aux(l_T[:, :4]), nan=0.0).clamp(0.0, 1.0)
        return DecodedLatent(y_hat=y_hat, l_T=l_T, x_aux=x_aux)

    def _decode_y_hat(
        self, payload: bytes, y_shape: tuple[int, int, int], z_shape: tuple[int, int, int]
    ) -> torch.Tensor:
        """ẑ, then the four quadtree steps of ŷ, from one rANS stream → ŷ [1, Cy, h, w] float64."""
        eb_tables, gc_tables = self._tables()
        decoder = StreamDecoder(payload, symbol_count=math.prod(z_shape) + math.prod(y_shape))
        z_symbols = decoder.decode(self._channel_indexes(z_shape), eb_tables)
        hyper = self._hyper_context(z_symbols, y_shape)
        context = self._float64("context")
        masks = step_masks(*y_shape)
        y_hat = torch.zeros(1, *y_shape, dtype=torch.float64)
        for k in range(NUM_STEPS):
            means, scales = context.step_params(k, hyper, y_hat)
            # Identity for any stream the encoder wrote; for garbage it keeps every CDF index in
            # the table (NaN σ would index past it) and ŷ finite.
            means, scales = _finite(means, MEAN_LIMIT), _finite(scales, MEAN_LIMIT)
            index, _, means_hat = self.gaussian_conditional.snap(scales, means)
            mask = masks[k][None]
            symbols = decoder.decode(index[mask], gc_tables)
            y_hat[mask] = symbols.double() + means_hat[mask]
        return y_hat

    def _code_one(self, z_symbols: torch.Tensor, y_hat: torch.Tensor) -> CompressedImage:
        """Entropy-code one image: ẑ symbols [1, Cz, hz, wz] int64, ŷ [1, Cy, h, w] float64."""
        eb_tables, gc_tables = self._tables()
        y_shape = tuple(y_hat.shape[1:])
        z_shape = tuple(z_symbols.shape[1:])
        encoder = StreamEncoder()
        encoder.encode(z_symbols, self._channel_indexes(z_shape), eb_tables)
        z_hat = z_symbols.float() + self._medians(torch.float32, torch.device("cpu"))
        z_likelihood, _, _ = self.entropy_bottleneck._likelihood(z_hat.permute(1, 0, 2, 3).reshape(z_shape[0], 1, -1))
        z_escape = escape_bits(z_symbols, self._channel_indexes(z_shape), eb_tables)
        z_escape = z_escape.permute(1, 0, 2, 3).reshape(z_likelihood.shape)
        bits_z = float(torch.where(z_escape > 0, z_escape, -torch.log2(z_likelihood.double().clamp_min(1e-9))).sum())

        hyper = self._hyper_context(z_symbols, y_shape)
        context = self._float64("context")
        masks = step_masks(*y_shape)
        decoded = torch.zeros(1, *y_shape, dtype=torch.float64)
        bits_y = 0.0
        for k in range(NUM_STEPS):
            means, scales = context.step_params(k, hyper, y_hat * decoded)
            index, scales_hat, means_hat = self.gaussian_conditional.snap(scales, means)
            mask = masks[k][None]
            symbols = y_hat[mask] - means_hat[mask]
            encoder.encode(symbols, index[mask], gc_tables)
            likelihood = self.gaussian_conditional._likelihood(y_hat[mask], scales_hat[mask], means_hat[mask])
            escape = escape_bits(symbols, index[mask], gc_tables)  # out-of-table symbols: the coder's cost
            bits_y += float(torch.where(escape > 0, escape, -torch.log2(likelihood.clamp_min(1e-9))).sum())
            decoded[mask] = 1.0
        return CompressedImage(encoder.finish(), y_shape, z_shape, bits_y, bits_z, y_hat.float())

    def prepare(self, encoder: bool = True) -> None:
        """Build the cached float64 CPU copies now instead of on the first compress/decompress.

        ``encoder=False`` builds only the decoder's (h_s and the context networks).
        """
        names = ("h_s", "context", *(ENCODER_ONLY if encoder else ()))
        for name in names:
            self._float64(name)

    def release_float64_copies(self) -> None:
        """Drop the cached float64 copies (about 240 MB for ``sd-turbo``'s decoder side); the next
        compress/decompress rebuilds them. For one-shot decodes that go on to the generative models."""
        with _FLOAT64_LOCK:
            self._float64_copies.clear()

    def release_weights(self) -> None:
        """Free the float64 copies and every weight and CDF table (parameters and buffers move to
        the meta device; ~220 MB for ``sd-turbo``), for one-shot decodes that hand the memory to
        the generative models. The codec cannot code afterwards."""
        self.release_float64_copies()
        self.to("meta")

    # ------------------------------------------------------------------ helpers
    def _hyper_context(self, z_symbols: torch.Tensor, y_shape: tuple[int, int, int]) -> torch.Tensor:
        """h_s(ẑ) in float64 on the CPU, cropped to y's grid: [1, 2·Cy, h, w]."""
        z_hat = z_symbols.double() + self._medians(torch.float64, torch.device("cpu"))
        return self._float64("h_s")(z_hat)[..., : y_shape[1], : y_shape[2]]

    def _medians(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The entropy bottleneck's medians as [1, Cz, 1, 1]."""
        return self.entropy_bottleneck.quantiles[:, 0, 1].detach().to(device=device, dtype=dtype).reshape(1, -1, 1, 1)

    @staticmethod
    def _channel_indexes(z_shape: tuple[int, int, int]) -> torch.Tensor:
        channels, height, width = z_shape
        return torch.arange(channels).reshape(1, -1, 1, 1).expand(1, channels, height, width)

    def _tables(self) -> tuple[CdfTables, CdfTables]:
        return CdfTables.of(self.entropy_bottleneck), CdfTables.of(self.gaussian_conditional)

    def _float64(self, name: str) -> nn.Module | None:
        """A float64 CPU copy of submodule ``name``, rebuilt whenever its parameters change.

        Thread-safe: concurrent encodes/decodes build each copy once and never see a half-built one.
        """
        module = getattr(self, name)
        if module is None:
            return None
        key = tuple(tensor_key(p) for p in module.parameters())
        with _FLOAT64_LOCK:
            cached = self._float64_copies.get(name)
            if cached is None or cached[0] != key:
                with torch.inference_mode(False), torch.no_grad():
                    clone = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
                if name in ENCODER_ONLY:
                    _use_shift_depthwise(clone)
                cached = (key, clone)
                self._float64_copies[name] = cached
        return cached[1]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got shape {tuple(x.shape)}")
        if x.shape[-2] % DOWNSCALE or x.shape[-1] % DOWNSCALE or x.shape[-2] == 0 or x.shape[-1] == 0:
            raise ValueError(
                f"image size {x.shape[-2]}x{x.shape[-1]} is not a positive multiple of {DOWNSCALE}; "
                "pad it first (cadc.images.pad_to_multiple)"
            )

    def _check_shapes(self, y_shape: tuple[int, int, int], z_shape: tuple[int, int, int]) -> None:
        expected_z = (self.config.z_channels, *hyper_grid(y_shape[1], y_shape[2]))
        if y_shape[0] != self.config.y_channels or tuple(z_shape) != expected_z or min(y_shape) < 1:
            raise ValueError(
                f"latent shapes y={tuple(y_shape)} z={tuple(z_shape)} do not fit this model "
                f"(y needs {self.config.y_channels} channels, z must be {expected_z})"
            )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Like ``nn.Module.load_state_dict``, first resizing the CDF-table buffers to fit."""
        update_registered_buffers(
            self.entropy_bottleneck, "entropy_bottleneck", ["_quantized_cdf", "_offset", "_cdf_length"],
            state_dict, policy="resize",
        )
        update_registered_buffers(
            self.gaussian_conditional, "gaussian_conditional",
            ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"], state_dict, policy="resize",
        )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per component, plus ``total``."""
        counts = {
            name: sum(p.numel() for p in module.parameters())
            for name, module in self.named_children()
            if module is not None
        }
        counts["total"] = sum(counts.values())
        return counts
