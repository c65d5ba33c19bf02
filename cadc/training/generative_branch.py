"""The differentiable generative decoder used by Stage I / II: l_T → x̂.

    ε = UNet_adapter(l_T, t = 999, text);  l_0 = (l_T[:, :4] − √(1−ᾱ)ε)/√ᾱ;  x̂ = VAE.decode(l_0 / 0.18215)

Trainable: the new UNet ``conv_in`` and the LoRA (un-merged peft layers). Frozen: UNet base,
VAE, text encoder, captioner. The text condition is the fixed prompt c_fix, or (BFATC, when a
captioner is given) ``join_prompt(caption(x̂_aux))`` per image, exactly as the decoder builds
it. The UNet and VAE run under bf16 autocast when ``amp_dtype`` is set; x̂ is returned in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from ..config import FIXED_PROMPT
from ..generative.adapter import AdapterConfig, AdapterWeights
from ..generative.captioner import Captioner, join_prompt
from ..generative.denoiser import OneStepDenoiser
from ..generative.schedule import VAE_SCALING_FACTOR, predict_x0
from ..generative.sd_turbo import SDTurboSource


class GenerativeBranch(nn.Module):
    """SD-Turbo one-step decoder with a trainable CADC adapter.

    Args:
        source: SD-Turbo (``tiny-random`` for tests, a diffusers folder or a single file).
        adapter: weights to start from (e.g. Stage I's); None starts from the seeded init
            (conv_in copies SD's on l_T[:, :4], LoRA B = 0), i.e. plain SD-Turbo.
        adapter_config: rank/alpha/targets/latent_channels when ``adapter`` is None.
        captioner: BFATC captions of x̂_aux, or None for the fixed prompt only.
        amp_dtype: autocast dtype for UNet/VAE on CUDA (None = float32).
    """

    def __init__(
        self,
        source: SDTurboSource,
        adapter: AdapterWeights | None,
        adapter_config: AdapterConfig,
        captioner: Captioner | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        # adapter=None is the training init (seeded conv_in, LoRA B = 0), not a demo decoder:
        # silence the denoiser's "no trained adapter" warning while building it.
        denoiser_log = logging.getLogger(OneStepDenoiser.__module__)
        level = denoiser_log.level
        denoiser_log.setLevel(logging.ERROR)
        try:
            self.denoiser = OneStepDenoiser(source.load_unet(), adapter, adapter_config, merge=False)
        finally:
            denoiser_log.setLevel(level)
        self.lora_layers = {n: m for n, m in self.denoiser.unet.named_modules() if isinstance(m, LoraLayer)}
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        self.vae = source.load_vae().requires_grad_(False).eval()
        self.text_encoder = source.load_text_encoder().requires_grad_(False).eval()
        self.tokenizer = source.load_tokenizer()
        self.captioner = captioner
        self.amp_dtype = amp_dtype
        self.register_buffer("fixed_text", self.encode_prompts([FIXED_PROMPT]), persistent=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """conv_in weight/bias and every LoRA A/B matrix."""
        unet = self.denoiser.unet
        params = [unet.conv_in.weight, unet.conv_in.bias]
        for layer in self.lora_layers.values():
            params += [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
        return params

    def train(self, mode: bool = True) -> GenerativeBranch:
        """Frozen parts stay in eval mode; the adapter has no dropout or norm statistics."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder hidden states [len(prompts), 77, D]."""
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(ids)[0].float()

    def text(self, x_aux: torch.Tensor | None) -> torch.Tensor:
        """[1 or B, 77, D]: the fixed prompt, or captions of x̂_aux joined with it (BFATC)."""
        if self.captioner is None or x_aux is None:
            return self.fixed_text
        captions = self.captioner(x_aux.detach())
        return self.encode_prompts([join_prompt(caption) for caption in captions])

    def forward(self, l_T: torch.Tensor, x_aux: torch.Tensor | None) -> torch.Tensor:
        """l_T [B, Cl, H/8, W/8] → x̂ [B, 3, H, W] float32, nominally in 0..1 (not clamped, so the
        distortion terms keep their gradients)."""
        text = self.text(x_aux)
        autocast = (
            torch.autocast(device_type=l_T.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        with autocast:
            eps = self.denoiser(l_T, text.to(l_T.device))
            l_0 = predict_x0(l_T[:, :4], eps)
            image = self.vae.decode(l_0 / VAE_SCALING_FACTOR).sample
        return (image.float() + 1.0) / 2.0

    def adapter_weights(self) -> AdapterWeights:
        """The current conv_in + LoRA as :class:`AdapterWeights` (CPU copies)."""
        unet = self.denoiser.unet
        lora = {
            name: (
                layer.lora_A["default"].weight.detach().cpu().clone(),
                layer.lora_B["default"].weight.detach().cpu().clone(),
            )
            for name, layer in sorted(self.lora_layers.items())
        }
        return AdapterWeights(
            self.denoiser.adapter_config,
            unet.conv_in.weight.detach().cpu().clone(),
            unet.conv_in.bias.detach().cpu().clone(),
            lora,
        )
