"""The paper's transforms: g_a, h_a, h_s, g_s and g_aux.

Shapes use H, W for the (padded) image size; H and W are multiples of 64.

==========  =======================================  =========================================
module      input                                    output
==========  =======================================  =========================================
g_a         x [B, 3, H, W] in 0..1                   y [B, Cy, H/64, W/64]
h_a         y [B, Cy, h, w], h, w multiples of 4     z [B, Cz, h/4, w/4]
h_s         ẑ [B, Cz, h/4, w/4]                      hyper context [B, 2·Cy, h, w]
g_s         ŷ [B, Cy, H/64, W/64]                    l_T [B, Cl, H/8, W/8]
g_aux       l_T[:, :4] [B, 4, H/8, W/8]              x̂_aux [B, 3, H, W] (unclamped)
==========  =======================================  =========================================

g_a, g_s and g_aux can trade compute for memory in training: ``set_gradient_checkpointing(codec,
True)`` keeps only each stage's input for backward (g_aux: its input) and recomputes the rest.
Module names, parameters and outputs are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import CodecConfig
from .layers import GatedBlock, Upsample, checkpointed, downsample, stage


class AnalysisTransform(nn.Module):
    """g_a: six stride-2 stages with GatedBlocks, RGB in 0..1 → y at 1/64 resolution."""

    gradient_checkpointing = False

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        widths = (3, *config.ga_widths)
        self.stages = nn.Sequential(
            *(
                stage(downsample(widths[i], widths[i + 1]), widths[i + 1], config.ga_blocks[i])
                for i in range(6)
            )
        )

    @staticmethod
    def scale_input(x: torch.Tensor) -> torch.Tensor:
        """RGB in 0..1 → -1..1, the range the stages take (tiled encoding applies it per tile)."""
        return x * 2.0 - 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale_input(x)
        for block in self.stages:
            x = checkpointed(block, x, self.gradient_checkpointing)
        return x


class SynthesisTransform(nn.Module):
    """g_s: ŷ at 1/64 → three ×2 sub-pixel stages → l_T at 1/8 (the SD latent grid)."""

    gradient_checkpointing = False

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        widths = (config.y_channels, *config.gs_widths)
        self.stages = nn.Sequential(
            *(stage(Upsample(widths[i], widths[i + 1]), widths[i + 1], config.gs_blocks[i]) for i in range(3))
        )
        self.head = nn.Conv2d(config.latent_channels, config.latent_channels, 3, padding=1)

    def forward(self, y_hat: torch.Tensor) -> torch.Tensor:
        x = y_hat
        for block in self.stages:
            x = checkpointed(block, x, self.gradient_checkpointing)
        return self.head(x)


class HyperAnalysis(nn.Module):
    """h_a: y → z, two stride-2 convolutions (4× down)."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        width = config.hyper_width
        self.net = nn.Sequential(
            nn.Conv2d(config.y_channels, width, 3, padding=1),
            nn.GELU(),
            downsample(width, width),
            nn.GELU(),
            downsample(width, config.z_channels),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class HyperSynthesis(nn.Module):
    """h_s: ẑ → hyper context c_h with 2·Cy channels on y's grid (4× up)."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        width = config.hyper_width
        self.net = nn.Sequential(
            nn.Conv2d(config.z_channels, width, 3, padding=1),
            nn.GELU(),
            Upsample(width, width),
            nn.GELU(),
            Upsample(width, width),
            nn.GELU(),
            nn.Conv2d(width, 2 * config.y_channels, 3, padding=1),
        )

    def forward(self, z_hat: torch.Tensor) -> torch.Tensor:
        return self.net(z_hat)


class AuxDecoder(nn.Module):
    """g_aux (ADGIC): a light decoder from the 4 SD-latent channels of l_T to RGB at full size.

    It is trained with MSE against x, so its output is a blurry but faithful preview; the
    captioner (BFATC) reads it, and ComfyUI users can look at it without running the UNet.
    """

    gradient_checkpointing = False

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        w = config.aux_widths
        self.net = nn.Sequential(
            nn.Conv2d(4, w[0], 3, padding=1),
            GatedBlock(w[0]),
            Upsample(w[0], w[1]),
            nn.GELU(),
            Upsample(w[1], w[2]),
            nn.GELU(),
            Upsample(w[2], w[2]),
            nn.GELU(),
            nn.Conv2d(w[2], 3, 3, padding=1),
        )

    def forward(self, latent4: torch.Tensor) -> torch.Tensor:
        return checkpointed(self.net, latent4, self.gradient_checkpointing) * 0.5 + 0.5


CHECKPOINTED = (AnalysisTransform, SynthesisTransform, AuxDecoder)
"""The transforms with activations worth recomputing (full- to 1/8-resolution feature maps)."""


def set_gradient_checkpointing(module: nn.Module, enabled: bool) -> list[str]:
    """Switch activation checkpointing of every g_a / g_s / g_aux inside ``module``; returns their
    names. Only training under autograd is affected; state dicts and outputs are not."""
    names = []
    for name, child in module.named_modules():
        if isinstance(child, CHECKPOINTED):
            child.gradient_checkpointing = enabled
            names.append(name)
    return names
