"""CADC's one-step denoiser: SD-Turbo's UNet with a wider ``conv_in`` and rank-32 LoRA.

ε = UNet(l_T, t = 999, text) where l_T has ``latent_channels`` channels (320 in the paper) and the
output keeps SD's 4 latent channels; :func:`cadc.generative.schedule.predict_x0` turns ε into l_0.
"""

from __future__ import annotations

import logging

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from .adapter import AdapterConfig, AdapterError, AdapterWeights, seeded_adapter
from .schedule import TIMESTEP

log = logging.getLogger(__name__)
_ADAPTER_NAME = "default"


class OneStepDenoiser(torch.nn.Module):
    """SD-Turbo UNet + CADC adapter, evaluated at t = 999.

    Construction modifies ``unet`` in place (new conv_in, peft LoRA layers). With ``merge`` the LoRA
    deltas are folded into the base weights (faster inference, same result up to rounding).

    Args:
        unet: a frozen SD-Turbo ``UNet2DConditionModel`` (4 input channels).
        adapter: trained conv_in + LoRA; None builds :func:`seeded_adapter` (demo only, logged).
        adapter_config: used only when ``adapter`` is None (rank, alpha, targets, latent_channels).
        merge: fold LoRA into the base weights after loading.
        adapter_dtype: dtype of the new conv_in and of the LoRA weights (default: the UNet's), e.g.
            float32 for a float16-stored UNet that computes in float32 (:mod:`.layer_cast`).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        adapter: AdapterWeights | None,
        adapter_config: AdapterConfig | None = None,
        merge: bool = True,
        adapter_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        cfg = adapter.config if adapter is not None else (adapter_config or AdapterConfig())
        base_conv_in = unet.conv_in
        lora_cfg = LoraConfig(
            r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.targets), init_lora_weights="gaussian"
        )
        inject_adapter_in_model(lora_cfg, unet, adapter_name=_ADAPTER_NAME)
        layers = {n: m for n, m in unet.named_modules() if isinstance(m, LoraLayer)}
        if adapter_dtype is not None:
            for m in layers.values():
                m.lora_A.to(adapter_dtype)
                m.lora_B.to(adapter_dtype)
        if adapter is None:
            shapes = {
                n: (m.lora_A[_ADAPTER_NAME].weight.shape, m.lora_B[_ADAPTER_NAME].weight.shape)
                for n, m in layers.items()
            }
            adapter = seeded_adapter(base_conv_in, shapes, cfg)
            log.warning(
                "no trained CADC adapter given: using a deterministic seeded conv_in/LoRA (demo only; "
                "images will not match a trained CADC model)"
            )
        unet.conv_in = torch.nn.Conv2d(
            adapter.config.latent_channels, base_conv_in.out_channels, kernel_size=3, padding=1
        ).to(device=base_conv_in.weight.device, dtype=adapter_dtype or base_conv_in.weight.dtype)
        with torch.no_grad():
            unet.conv_in.weight.copy_(adapter.conv_in_weight)
            unet.conv_in.bias.copy_(adapter.conv_in_bias)
            _load_lora(layers, adapter)
        if merge:
            for m in layers.values():
                m.merge()
        unet.requires_grad_(False)
        unet.eval()
        self.unet = unet
        self.adapter_config = adapter.config

    @property
    def latent_channels(self) -> int:
        """Channels of l_T that the new conv_in takes."""
        return self.adapter_config.latent_channels

    def forward(self, l_t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """ε prediction at t = 999.

        Args:
            l_t: [B, latent_channels, h, w] (h, w multiples of 8), first 4 channels in UNet units.
            text: text-encoder hidden states [B or 1, 77, cross_attention_dim].

        Returns:
            ε [B, 4, h, w] in the UNet's dtype.
        """
        if l_t.shape[1] != self.latent_channels:
            raise ValueError(f"l_T has {l_t.shape[1]} channels, the adapter expects {self.latent_channels}")
        if text.shape[0] != l_t.shape[0]:
            text = text.expand(l_t.shape[0], -1, -1)
        t = torch.full((l_t.shape[0],), TIMESTEP, device=l_t.device, dtype=torch.long)
        return self.unet(l_t, t, encoder_hidden_states=text, return_dict=False)[0]


def _load_lora(layers: dict[str, LoraLayer], adapter: AdapterWeights) -> None:
    """Copy LoRA tensors into peft layers; the module sets must match exactly."""
    missing = sorted(set(layers) - set(adapter.lora))
    extra = sorted(set(adapter.lora) - set(layers))
    if missing or extra:
        raise AdapterError(
            f"adapter LoRA modules do not match the UNet: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(extra)} unexpected (e.g. {extra[:2]})"
        )
    for name, layer in layers.items():
        a, b = adapter.lora[name]
        la, lb = layer.lora_A[_ADAPTER_NAME].weight, layer.lora_B[_ADAPTER_NAME].weight
        if la.shape != a.shape or lb.shape != b.shape:
            raise AdapterError(
                f"LoRA {name}: shapes {tuple(a.shape)}/{tuple(b.shape)}, expected {tuple(la.shape)}/{tuple(lb.shape)}"
            )
        la.copy_(a)
        lb.copy_(b)
