"""Exponential moving average (EMA) of the trained weights.

After every optimizer step u (1-based) each shadow tensor moves toward its parameter:
``shadow ← d·shadow + (1 − d)·param`` with ``d = min(decay, (1 + u)/(10 + u))`` — the usual
warm-up, so that early shadows are not dominated by the initial weights. Shadows are float32 on
the parameters' device. :meth:`EMA.applied` swaps them into the parameters (exact copies both
ways) for validation and export, then swaps the trained weights back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class EMA:
    """EMA of named parameters.

    Args:
        params: name → parameter (the names are the keys of :meth:`state_dict`).
        decay: the EMA decay (e.g. 0.999, a horizon of about 1000 steps).
    """

    def __init__(self, params: dict[str, nn.Parameter], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    def decay_at(self, updates: int) -> float:
        """The decay used for the ``updates``-th update (1-based)."""
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def update(self, updates: int) -> None:
        """Move every shadow toward its parameter (call after optimizer step number ``updates``)."""
        weight = 1.0 - self.decay_at(updates)
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach().float(), weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Parameters hold the EMA inside the block and their trained values again after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for name, p in self.params.items():
            trained = p.detach().clone()
            p.copy_(self.shadow[name])
            self.shadow[name].copy_(trained)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} tensors, e.g. {missing[:3]}")
        for name, shadow in self.shadow.items():
            shadow.copy_(state[name])
