"""The differentiable generative decoder used by Stage I / II: l_T → x̂.

    ε = UNet_adapter(l_T, t = 999, text);  l_0 = (l_T[:, :4] − √(1−ᾱ)ε)/√ᾱ;  x̂ = VAE.decode(l_0 / 0.18215)

Trainable: the new UNet ``conv_in`` and the LoRA (un-merged peft layers), always float32. Frozen:
UNet base, VAE decoder (the encoder is dropped), text encoder, captioner — stored in
``frozen_dtype`` (see :mod:`cadc.training.precision`). The text condition is the fixed prompt
c_fix, or (BFATC, when a captioner is given) ``join_prompt(caption(x̂_aux))`` per image, exactly
as the decoder builds it. The text encoder runs once per distinct prompt (an LRU cache of
:data:`TEXT_CACHE_SIZE` prompts); without a captioner it runs once for c_fix and is released.
The UNet and VAE run under autocast when ``amp_dtype`` is set; x̂ is returned in float32.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from ..config import FIXED_PROMPT
from ..generative.adapter import AdapterConfig, AdapterWeights
from ..generative.captioner import Captioner, join_prompt
from ..generative.denoiser import OneStepDenoiser
from ..generative.schedule import VAE_SCALING_FACTOR, predict_x0
from ..generative.sd_turbo import SDTurboSource
from ..generative.tiling import tiled
from .precision import autocast, cast_frozen

TEXT_CACHE_SIZE = 256
"""Distinct prompts whose text-encoder states are kept (a [77, 1024] float32 entry is 315 kB)."""
TILE_LATENT, TILE_OVERLAP = 96, 32
"""Latent tile side and overlap of :meth:`GenerativeBranch.reconstruct` (the decoder's defaults)."""


class GenerativeBranch(nn.Module):
    """SD-Turbo one-step decoder with a trainable CADC adapter.

    Args:
        source: SD-Turbo (``tiny-random`` for tests, a diffusers folder or a single file).
        adapter: weights to start from (e.g. Stage I's); None starts from the seeded init
            (conv_in copies SD's on l_T[:, :4], LoRA B = 0), i.e. plain SD-Turbo.
        adapter_config: rank/alpha/targets/latent_channels when ``adapter`` is None.
        captioner: BFATC captions of x̂_aux, or None for the fixed prompt only (the text encoder
            is then released after encoding c_fix).
        amp_dtype: autocast dtype for UNet/VAE (None = no autocast).
        frozen_dtype: storage dtype of the UNet base, VAE and text encoder.
        gradient_checkpointing: recompute UNet and VAE-decoder activations in backward.
    """

    def __init__(
        self,
        source: SDTurboSource,
        adapter: AdapterWeights | None,
        adapter_config: AdapterConfig,
        captioner: Captioner | None = None,
        amp_dtype: torch.dtype | None = None,
        frozen_dtype: torch.dtype = torch.float32,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        # adapter=None is the training init (seeded conv_in, LoRA B = 0), not a demo decoder:
        # silence the denoiser's "no trained adapter" warning while building it.
        denoiser_log = logging.getLogger(OneStepDenoiser.__module__)
        level = denoiser_log.level
        denoiser_log.setLevel(logging.ERROR)
        try:
            # Built in float32 so that the adapter's conv_in / LoRA values are copied exactly.
            self.denoiser = OneStepDenoiser(source.load_unet().float(), adapter, adapter_config, merge=False)
        finally:
            denoiser_log.setLevel(level)
        self.lora_layers = {n: m for n, m in self.denoiser.unet.named_modules() if isinstance(m, LoraLayer)}
        cast_frozen(self.denoiser.unet, frozen_dtype, self.trainable_parameters())
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        vae = source.load_vae()
        vae.encoder = vae.quant_conv = None  # only the decoder is used: do not hold the encoder
        self.vae = vae.to(frozen_dtype).requires_grad_(False).eval()
        if gradient_checkpointing:
            self.denoiser.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        self.captioner = captioner
        self.amp_dtype = amp_dtype
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.tokenizer = source.load_tokenizer()
        # Without captions every prompt is c_fix: encode it once in float32 and drop the encoder.
        text_encoder = source.load_text_encoder().to(frozen_dtype if captioner else torch.float32)
        self.text_encoder: nn.Module | None = text_encoder.requires_grad_(False).eval()
        self.register_buffer("fixed_text", self._encode([FIXED_PROMPT]), persistent=False)
        if captioner is None:
            self.text_encoder = None

    def trainable_parameters(self) -> list[nn.Parameter]:
        """conv_in weight/bias and every LoRA A/B matrix."""
        return list(self.named_trainable_parameters().values())

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        """``unet.conv_in.{weight,bias}`` and ``unet.<module>.lora_{A,B}.weight`` (the checkpoint's
        adapter names without the ``adapter.`` prefix)."""
        unet = self.denoiser.unet
        params = {"unet.conv_in.weight": unet.conv_in.weight, "unet.conv_in.bias": unet.conv_in.bias}
        for name, layer in self.lora_layers.items():
            params[f"unet.{name}.lora_A.weight"] = layer.lora_A["default"].weight
            params[f"unet.{name}.lora_B.weight"] = layer.lora_B["default"].weight
        return params

    def train(self, mode: bool = True) -> GenerativeBranch:
        """Frozen parts stay in eval mode; the adapter has no dropout or norm statistics."""
        super().train(mode)
        self.vae.eval()
        if self.text_encoder is not None:
            self.text_encoder.eval()
        return self

    @torch.no_grad()
    def _encode(self, prompts: Sequence[str]) -> torch.Tensor:
        assert self.text_encoder is not None, "the text encoder was released (fixed prompt only)"
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(ids)[0].float()

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states [len(prompts), 77, D] float32; each distinct prompt is
        encoded once while it stays among the last :data:`TEXT_CACHE_SIZE` used."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        if missing:
            for prompt, states in zip(missing, self._encode(missing), strict=True):
                self._text_cache[prompt] = states
        for prompt in prompts:
            self._text_cache.move_to_end(prompt)
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return torch.stack([self._text_cache[p] for p in prompts])

    def text(self, x_aux: torch.Tensor | None) -> torch.Tensor:
        """[1 or B, 77, D]: the fixed prompt, or captions of x̂_aux joined with it (BFATC)."""
        if self.captioner is None or x_aux is None:
            return self.fixed_text
        captions = self.captioner(x_aux.detach())
        return self.encode_prompts([join_prompt(caption) for caption in captions])

    def forward(self, l_T: torch.Tensor, x_aux: torch.Tensor | None) -> torch.Tensor:
        """l_T [B, Cl, H/8, W/8] → x̂ [B, 3, H, W] float32, nominally in 0..1 (not clamped, so the
        distortion terms keep their gradients)."""
        text = self.text(x_aux).to(l_T.device)
        with autocast(l_T.device, self.amp_dtype):
            eps = self.denoiser(l_T, text)
            l_0 = predict_x0(l_T[:, :4], eps)
            image = self.vae.decode(l_0 / VAE_SCALING_FACTOR).sample
        return (image.float() + 1.0) / 2.0

    @torch.no_grad()
    def reconstruct(self, l_T: torch.Tensor, x_aux: torch.Tensor | None, tile_above: int) -> torch.Tensor:
        """Like :meth:`forward` without gradients, for validation at any size: when the latent's
        longer side exceeds ``tile_above`` the UNet and the VAE decoder run over overlapping
        96-latent tiles (overlap 32) blended as in :mod:`cadc.generative.tiling`."""
        if max(l_T.shape[-2:]) <= tile_above:
            return self(l_T, x_aux)
        text = self.text(x_aux).to(l_T.device)
        with autocast(l_T.device, self.amp_dtype):
            eps = tiled(lambda tile: self.denoiser(tile, text), l_T, TILE_LATENT, TILE_OVERLAP)
            l_0 = predict_x0(l_T[:, :4], eps.to(l_T.dtype))
            z = l_0 / VAE_SCALING_FACTOR
            image = tiled(lambda tile: self.vae.decode(tile).sample, z, TILE_LATENT, TILE_OVERLAP, scale=8)
        return (image.float() + 1.0) / 2.0

    def adapter_weights(self) -> AdapterWeights:
        """The current conv_in + LoRA as :class:`AdapterWeights` (CPU float32 copies)."""
        unet = self.denoiser.unet
        lora = {
            name: (
                layer.lora_A["default"].weight.detach().float().cpu().clone(),
                layer.lora_B["default"].weight.detach().float().cpu().clone(),
            )
            for name, layer in sorted(self.lora_layers.items())
        }
        return AdapterWeights(
            self.denoiser.adapter_config,
            unet.conv_in.weight.detach().float().cpu().clone(),
            unet.conv_in.bias.detach().float().cpu().clone(),
            lora,
        )
