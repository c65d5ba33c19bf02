"""Four-step quadtree partition context for ŷ (CADC §3.3, after DCVC-DC).

y's grid is cut into 2×2 blocks and its channels into four equal groups. Step k codes, for
channel group g, the block position ``POSITIONS[(k + g) % 4]``, so every step codes a quarter of
all elements, spread over every block and every group. The step at which each position is coded,
per channel group (rows/cols inside one 2×2 block)::

      group 0     group 1     group 2     group 3
      ┌─────┐     ┌─────┐     ┌─────┐     ┌─────┐
      │ 0 2 │     │ 3 1 │     │ 2 0 │     │ 1 3 │
      │ 3 1 │     │ 2 0 │     │ 1 3 │     │ 0 2 │
      └─────┘     └─────┘     └─────┘     └─────┘

Step k's parameter network sees the hyper context c_h = h_s(ẑ) and every element decoded in
steps 0..k−1 (zeros elsewhere), and predicts μ, σ for all positions; only the step's own quarter
is used. Coding an image therefore takes exactly four network passes, never a per-pixel loop,
and ``forward`` (training, ŷ fully known) runs the same four passes in the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import conv_stack

POSITIONS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (0, 1), (1, 0))
NUM_STEPS = 4


def step_masks(channels: int, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean masks [4, C, H, W]: ``masks[k]`` marks the elements coded in step k.

    The four masks are disjoint and cover every element, for any H, W ≥ 1 (odd sizes included).
    """
    group = torch.arange(channels, device=device) * NUM_STEPS // channels  # [C] group of each channel
    rows = torch.arange(height, device=device) % 2
    cols = torch.arange(width, device=device) % 2
    position = torch.empty(2, 2, dtype=torch.long, device=device)
    for index, (r, c) in enumerate(POSITIONS):
        position[r, c] = index
    pos = position[rows[:, None], cols[None, :]]  # [H, W] index into POSITIONS
    steps = torch.arange(NUM_STEPS, device=device)
    # element (c, i, j) is coded at step k where POSITIONS[(k + g) % 4] == pos  ⇔  k = (pos − g) mod 4
    coded_at = (pos[None, :, :] - group[:, None, None]) % NUM_STEPS  # [C, H, W]
    return coded_at[None] == steps[:, None, None, None]


class QuadtreeContext(nn.Module):
    """The four step networks. Each maps [c_h (2·Cy), decoded ŷ (Cy)] → [μ (Cy), σ (Cy)]."""

    def __init__(self, y_channels: int, width: int) -> None:
        super().__init__()
        self.y_channels = y_channels
        self.steps = nn.ModuleList(conv_stack(3 * y_channels, width, 2 * y_channels) for _ in range(NUM_STEPS))

    def step_params(
        self, step: int, hyper: torch.Tensor, y_decoded: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """μ, σ (each [B, Cy, h, w], σ unbounded) predicted by step ``step``."""
        means, scales = self.steps[step](torch.cat([hyper, y_decoded], dim=1)).chunk(2, dim=1)
        return means, scales

    def forward(self, hyper: torch.Tensor, y_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ, σ for every element of a fully known ŷ (training and rate estimation)."""
        masks = step_masks(*y_hat.shape[1:], device=y_hat.device).to(y_hat.dtype)
        means = torch.zeros_like(y_hat)
        scales = torch.zeros_like(y_hat)
        decoded = torch.zeros_like(masks[0])
        for k in range(NUM_STEPS):
            step_means, step_scales = self.step_params(k, hyper, y_hat * decoded)
            means = means + step_means * masks[k]
            scales = scales + step_scales * masks[k]
            decoded = decoded + masks[k]
        return means, scales
