"""The training objective: what DistributedDataParallel wraps.

Codec stage (no SD model)::

    L = λ·R + d4·MSE(x, x̂_aux) [+ lt_weight·mean(l_T²)]

Stage I / II (with the one-step SD-Turbo decoder giving x̂)::

    L = λ·R + d1·MSE(x, x̂) + d2·LPIPS(x, x̂) + d3·‖CLIP(x) − CLIP(x̂)‖² + d4·MSE(x, x̂_aux) + d5·adv(x̂)

R is in bits per pixel (:func:`cadc.training.losses.rate_bpp`); every MSE is on images in 0..1
(StableCodec's MSE on −1..1 images is 4 × this; the default weights are scaled to match). With
``aux_stop_gradient`` (Stage I), MSE(x, x̂_aux) is computed from a detached l_T, so it trains g_aux
alone. The frozen loss backbones (LPIPS, CLIP, discriminator) run under the run's autocast.
CompressAI's quantile loss of
the entropy bottleneck is added to the returned total: it only reaches the ``quantiles``
parameter (stop-gradient inside), which has its own optimizer, so one backward pass serves both
optimizers and DDP sees every trained parameter used in every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..model import CADCCodec
from .config import TrainConfig
from .losses import hinge_g_loss, mse, rate_bpp
from .precision import autocast

if TYPE_CHECKING:  # transformers/diffusers load only for Stage I/II runs
    from .backbones import LPIPS, CLIPEmbedding, Discriminator
    from .generative_branch import GenerativeBranch


@contextmanager
def frozen(module: nn.Module | None) -> Iterator[None]:
    """Temporarily stop gradients into ``module``'s parameters (the discriminator in G's pass)."""
    if module is None:
        yield
        return
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class Objective(nn.Module):
    """Codec (+ generative branch) and the loss weights of one run.

    ``forward(x, discriminator)`` takes x [B, 3, H, W] in 0..1 (H, W multiples of 64) and the
    Stage II discriminator (kept outside this module, so that DDP does not sync its heads), and
    returns
    ``(total, terms, x_hat)``: the scalar to back-propagate, a dict of detached scalar terms
    (``bpp``, ``mse``, ``aux``, ``lpips``, ``clip``, ``adv``, ``lt``, ``quantile``, ``loss``) and
    the reconstruction used for PSNR (x̂ of the generative branch, else x̂_aux).
    """

    def __init__(
        self,
        codec: CADCCodec,
        config: TrainConfig,
        branch: GenerativeBranch | None = None,
        lpips: LPIPS | None = None,
        clip: CLIPEmbedding | None = None,
        amp_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.codec = codec
        self.branch = branch
        self.lpips = lpips
        self.clip = clip
        self.config = config
        self.amp_dtype = amp_dtype

    def forward(
        self, x: torch.Tensor, discriminator: Discriminator | None = None
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        c = self.config
        out = self.codec(x)
        batch, _, height, width = x.shape
        rate = rate_bpp(out["likelihoods"], batch * height * width)
        terms: dict[str, torch.Tensor] = {"bpp": rate}
        loss = c.lambda_rate * rate
        x_aux = out["x_aux"]
        if x_aux is not None and c.effective_aux_weight > 0:
            assert self.codec.g_aux is not None
            preview = self.codec.g_aux(out["l_T"][:, :4].detach()) if c.aux_stop_gradient else x_aux
            terms["aux"] = mse(preview, x)
            loss = loss + c.effective_aux_weight * terms["aux"]
        if c.lt_weight > 0:
            terms["lt"] = out["l_T"].float().pow(2).mean()
            loss = loss + c.lt_weight * terms["lt"]
        x_hat = x_aux
        if self.branch is not None:
            x_hat = self.branch(out["l_T"], x_aux)
            loss = loss + self._distortion(x, x_hat, terms, discriminator)
        quantile = self.codec.aux_loss()
        terms["quantile"] = quantile
        terms["loss"] = loss
        assert x_hat is not None, "a run needs x̂_aux or the generative branch"
        return loss + quantile, {k: float(v.detach()) for k, v in terms.items()}, x_hat

    def _distortion(
        self,
        x: torch.Tensor,
        x_hat: torch.Tensor,
        terms: dict[str, torch.Tensor],
        discriminator: Discriminator | None,
    ) -> torch.Tensor:
        """d1·MSE + d2·LPIPS + d3·CLIP-L2 + d5·adversarial on the generative output x̂."""
        c = self.config
        terms["mse"] = mse(x_hat, x)
        loss = c.mse_weight * terms["mse"]
        with autocast(x.device, self.amp_dtype):
            if self.lpips is not None and c.lpips_weight > 0:
                terms["lpips"] = self.lpips(x_hat, x).float().mean()
                loss = loss + c.lpips_weight * terms["lpips"]
            if self.clip is not None and c.clip_weight > 0:
                terms["clip"] = (self.clip(x_hat) - self.clip(x)).pow(2).sum(-1).mean()
                loss = loss + c.clip_weight * terms["clip"]
            if discriminator is not None and c.adv_weight > 0:
                with frozen(discriminator):
                    terms["adv"] = hinge_g_loss(discriminator(x_hat).float())
                loss = loss + c.adv_weight * terms["adv"]
        return loss
