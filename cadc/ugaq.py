"""UGAQ: uncertainty-guided adaptive quantization (CADC §3.2).

The encoder already knows ẑ when it quantizes y. The residual r = y − P·UP(ẑ) tells where the
hyperprior explains y badly (high uncertainty). A small network f_u turns r into a per-element
step m ≥ 1 and the encoder codes ŷ = round(y / m): coarse steps where detail is cheap to
regenerate, fine steps elsewhere. m is never transmitted; the decoder reads ŷ as it is and g_s
learns the scaling. UP is bilinear upsampling from z's grid to y's; P is a 1×1 projection used
when z and y have different channel counts.

UP puts ẑ on the grid h_s uses: z element k covers y elements 4k … 4k+3 (h_a pads y at the
bottom/right to a multiple of 4; h_s upsamples ×4 and the codec crops the padding away), so UP
upsamples ×4 to [4·⌈h/4⌉, 4·⌈w/4⌉] and crops to y's h × w. When h and w are multiples of 4 this
is exactly ``interpolate(ẑ, size=(h, w))``.

With ``CodecConfig.ugaq = False`` (the M0 ablation) the codec builds no f_u and uses m ≡ 1,
i.e. plain isotropic rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import conv_stack

HYPER_SCALE = 4
"""y elements per z element along each axis (``cadc.model.HYPER_DOWNSCALE``)."""


def upsample_to_y_grid(z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """UP: [B, C, zh, zw] → [B, C, height, width] on h_s's grid.

    Bilinear (half-pixel centres, ``align_corners=False``) ×4 upsampling to [4·zh, 4·zw], then the
    top-left ``height`` × ``width``: y element i sits at z coordinate (i + 0.5)/4 − 0.5 whatever
    y's size, as in h_s's output, which the codec crops the same way.
    """
    zh, zw = z.shape[-2:]
    up = F.interpolate(z, size=(HYPER_SCALE * zh, HYPER_SCALE * zw), mode="bilinear", align_corners=False)
    return up[..., :height, :width]


class UncertaintyQuantizer(nn.Module):
    """f_u and the projection P.

    ``step(y, z_hat)`` takes y [B, Cy, h, w] and ẑ [B, Cz, ⌈h/4⌉, ⌈w/4⌉] and returns m
    [B, Cy, h, w], every element ≥ 1.
    """

    def __init__(self, y_channels: int, z_channels: int, width: int) -> None:
        super().__init__()
        self.project = (
            nn.Identity() if z_channels == y_channels else nn.Conv2d(z_channels, y_channels, 1)
        )
        self.f_u = conv_stack(y_channels, width, y_channels)
        # Start close to isotropic rounding: softplus(-4) ≈ 0.018, so m ≈ 1.02 at initialisation.
        last = self.f_u[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, -4.0)

    def step(self, y: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
        z_up = upsample_to_y_grid(self.project(z_hat), *y.shape[-2:])
        return 1.0 + F.softplus(self.f_u(y - z_up))
