"""Building blocks shared by the transforms.

Residual blocks follow the GatedCNN design (MambaOut, Yu & Wang 2024), the family StableCodec's
transforms use: a 1×1 expansion split into a gate and a value branch, a depthwise 7×7 conv on the
value branch, the gated product projected back by a 1×1 conv. No normalisation layers: learned
codecs keep the transforms free of batch statistics so that encode and decode see the same maps.

:func:`checkpointed` runs a sub-network through activation checkpointing when training asks for
it (``set_gradient_checkpointing`` in :mod:`cadc.transforms`): same outputs and gradients, less
memory, one more forward pass in backward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


class GatedBlock(nn.Module):
    """Residual GatedCNN block, shape-preserving: [B, C, H, W] → [B, C, H, W]."""

    def __init__(self, channels: int, expansion: float = 2.0, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = max(4, int(channels * expansion))
        self.fc1 = nn.Conv2d(channels, 2 * hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=1)
        return x + self.fc2(F.gelu(gate) * self.dwconv(value))


def checkpointed(module: nn.Module, x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``module(x)``; with ``enabled`` while autograd records, only x is kept for backward and
    ``module``'s activations are recomputed there (non-reentrant ``torch.utils.checkpoint``, so
    parameters get gradients even when x needs none). Inference and ``no_grad`` run plainly."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(module, x, use_reentrant=False)
    return module(x)


def downsample(in_channels: int, out_channels: int) -> nn.Module:
    """Stride-2 3×3 convolution: [B, Cin, H, W] → [B, Cout, H/2, W/2] (H, W even)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)


class Upsample(nn.Module):
    """Sub-pixel ×2 upsampling: 3×3 conv to 4·Cout channels, then PixelShuffle(2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def stage(block_in: nn.Module, channels: int, blocks: int) -> nn.Sequential:
    """A resampling layer followed by ``blocks`` GatedBlocks at ``channels``."""
    return nn.Sequential(block_in, *(GatedBlock(channels) for _ in range(blocks)))


def conv_stack(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    """3×3 conv → GELU → 3×3 conv → GELU → 1×1 conv; resolution-preserving parameter network."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(width, out_channels, 1),
    )
