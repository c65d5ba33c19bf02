"""Per-stage FLOPs with ``torch.utils.flop_counter``, counted on the meta device (no compute).

Every network is rebuilt from its config with parameters on the ``meta`` device and run on meta
inputs of the benchmarked shapes, so counting 2048×1365 costs milliseconds and no memory. The
counter counts matrix multiplications, convolutions and attention (2 FLOPs per multiply-add);
norms, activations and the rANS coder are not counted. On meta, ``scaled_dot_product_attention``
runs its math decomposition, so attention matmuls *are* counted (the CPU's fused flash kernel is
not in torch's FLOP registry: counting real CPU runs misses attention, which is why the paper
note's 1.015 TFLOP UNet figure at 768×512 is lower than the 1.31 TFLOP counted here; the VAE
decoder's 3.72 TFLOP convolution part matches).

Tiled stages are counted through :func:`cadc.generative.tiling.tiled` and
:func:`cadc.tiled_analysis.tiled_analysis` themselves, so the overlap recomputation of tiling is
included. ``taesd_flops`` counts the TAESD fast-preview decoder (diffusers' ``AutoencoderTiny``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from cadc.config import CodecConfig
from cadc.model import DOWNSCALE, LATENT_DOWNSCALE, hyper_grid
from cadc.quadtree import NUM_STEPS, QuadtreeContext
from cadc.tiled_analysis import tiled_analysis
from cadc.transforms import AnalysisTransform, AuxDecoder, HyperAnalysis, HyperSynthesis, SynthesisTransform
from cadc.ugaq import UncertaintyQuantizer

META = torch.device("meta")


def count(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def codec_flops(config: CodecConfig, height: int, width: int, aux: bool = True) -> dict[str, int]:
    """FLOPs of the codec stages for a padded ``height`` × ``width`` image.

    ``entropy_encode`` / ``entropy_decode`` are the networks that run inside the coder loop
    (h_s and the four quadtree context passes); the rANS coder itself does no counted FLOPs.
    """
    # The sub-networks of CADCCodec, built alone (the entropy models need real tensors).
    with META:
        g_a, h_a, h_s = AnalysisTransform(config), HyperAnalysis(config), HyperSynthesis(config)
        context = QuadtreeContext(config.y_channels, config.ctx_width)
        g_s, g_aux = SynthesisTransform(config), AuxDecoder(config)
        ugaq = UncertaintyQuantizer(config.y_channels, config.z_channels, config.ugaq_width)
    yh, yw = height // DOWNSCALE, width // DOWNSCALE
    zh, zw = hyper_grid(yh, yw)
    x = torch.zeros(1, 3, height, width, device=META)
    y = torch.zeros(1, config.y_channels, yh, yw, device=META)
    y_pad = torch.zeros(1, config.y_channels, 4 * zh, 4 * zw, device=META)
    z = torch.zeros(1, config.z_channels, zh, zw, device=META)
    latent = torch.zeros(1, 4, height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE, device=META)
    # g_a as the exact encoder runs it: float64, over tiles (the halo recomputation included)
    g_a64 = g_a.to(torch.float64)
    flops = {"g_a": count(lambda: tiled_analysis(g_a64, x)), "hyperprior": count(lambda: h_a(y_pad))}
    flops["ugaq"] = count(lambda: ugaq.step(y, z)) if config.ugaq else 0

    def entropy_nets() -> None:
        hyper = h_s(z)[..., :yh, :yw]
        for k in range(NUM_STEPS):
            context.step_params(k, hyper, y)

    flops["entropy_encode"] = flops["entropy_decode"] = count(entropy_nets)
    flops["g_s"] = count(lambda: g_s(y))
    flops["g_aux"] = count(lambda: g_aux(latent)) if aux and config.aux else 0
    return flops


@functools.cache
def _meta_sd_turbo(latent_channels: int) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """UNet (with CADC's conv_in), VAE and text encoder of SD-Turbo on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cadc.generative.sd_turbo import CONFIG_DIR

    unet_config = UNet2DConditionModel.load_config(CONFIG_DIR / "unet")
    vae_config = AutoencoderKL.load_config(CONFIG_DIR / "vae")
    text_config = CLIPTextConfig.from_json_file(CONFIG_DIR / "text_encoder" / "config.json")
    with META:
        unet = UNet2DConditionModel.from_config(unet_config).eval()
        # CADC's conv_in takes l_T's channels; the merged LoRA adds no FLOPs.
        unet.conv_in = torch.nn.Conv2d(latent_channels, unet.conv_in.out_channels, 3, padding=1)
        vae = AutoencoderKL.from_config(vae_config).eval()
        text_encoder = CLIPTextModel(text_config).eval()
    return unet, vae, text_encoder


def generative_flops(
    height: int,
    width: int,
    latent_channels: int,
    tile_latent: int,
    tile_overlap: int,
    tile_above: int,
) -> dict[str, int]:
    """FLOPs of the text encoder, the one-step UNet and the VAE decoder (paper-size SD-Turbo).

    Tiling follows :class:`cadc.generative.GenerativeDecoder`: the latent is tiled when its longer
    side exceeds ``tile_above``.
    """
    from cadc.generative.tiling import tiled

    unet, vae, text_encoder = _meta_sd_turbo(latent_channels)
    h, w = height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE
    tiling = max(h, w) > tile_above
    l_t = torch.zeros(1, latent_channels, h, w, device=META)
    text = torch.zeros(1, 77, unet.config.cross_attention_dim, device=META)
    timestep = torch.full((1,), 999, device=META, dtype=torch.long)
    l_0 = torch.zeros(1, 4, h, w, device=META)

    def eps(tile: torch.Tensor) -> torch.Tensor:
        return unet(tile, timestep, encoder_hidden_states=text, return_dict=False)[0]

    def dec(tile: torch.Tensor) -> torch.Tensor:
        return vae.decode(tile, return_dict=False)[0]

    def run_unet() -> None:
        tiled(eps, l_t, tile_latent, tile_overlap) if tiling else eps(l_t)

    def run_vae() -> None:
        tiled(dec, l_0, tile_latent, tile_overlap, scale=8) if tiling else dec(l_0)

    ids = torch.zeros(1, 77, dtype=torch.long, device=META)
    return {
        "text_encode": count(lambda: text_encoder(ids)),
        "unet": count(run_unet),
        "vae_decode": count(run_vae),
    }


def taesd_flops(height: int, width: int, tile_latent: int, tile_overlap: int, tile_above: int) -> int:
    """FLOPs of the TAESD decoder for a padded ``height`` × ``width`` image, tiled as the pipeline tiles."""
    from diffusers import AutoencoderTiny

    from cadc.generative.tiling import tiled

    with META:
        decoder = AutoencoderTiny().eval()
    h, w = height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE
    l_0 = torch.zeros(1, 4, h, w, device=META)

    def dec(tile: torch.Tensor) -> torch.Tensor:
        return decoder.decode(tile, return_dict=False)[0]

    return count(lambda: tiled(dec, l_0, tile_latent, tile_overlap, scale=8) if max(h, w) > tile_above else dec(l_0))
