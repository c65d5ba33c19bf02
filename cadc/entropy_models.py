"""Entropy bottleneck and Gaussian conditional in plain PyTorch: CADC's entropy layers.

Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018,
arXiv 1802.01436): the factorized density of ẑ (:class:`EntropyBottleneck`) and the Gaussian
conditional of ŷ (:class:`GaussianConditional`). These classes match CompressAI 1.2.8's layers of the
same names (the tests compare them with compressai's; :mod:`cadc._compressai` says why CADC does
not import compressai's own): the same constructor
arguments, parameters and buffers under the same state-dict keys (every checkpoint loads with
either), the same random initialisation order (``tiny-random`` has the same weights), the same
likelihoods and auxiliary loss, and integer CDF tables built by the same arithmetic, bit for bit
(float32 probabilities → 16-bit quantised CDF, :func:`pmf_to_quantized_cdf`).

Shapes: the bottleneck's ``forward`` takes [B, C, ...] (C = ``channels``); the Gaussian
conditional is elementwise. Likelihoods are probabilities of integer bins (unitless, ≤ 1).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

CDF_PRECISION = 16
"""Bits of the quantised CDF tables (their last entry is ``2**CDF_PRECISION``)."""


def pmf_to_quantized_cdf(pmf: Sequence[float] | Tensor, precision: int = CDF_PRECISION) -> Tensor:
    """A probability vector → an int32 CDF [len(pmf) + 1] rising strictly from 0 to 2**precision.

    The probabilities are taken as float32 and scaled to ``2**precision`` with rounding half away
    from zero; the counts are renormalised to the total by integer division and accumulated; every
    symbol left with zero frequency then takes one count from the symbol of smallest frequency
    above one (the leftmost on ties), as CompressAI's ``pmf_to_quantized_cdf`` does.
    """
    values = torch.as_tensor(pmf).detach().cpu().numpy().astype(np.float32).reshape(-1)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError("pmf must be finite and non-negative")
    scale = 1 << precision
    counts = np.floor((values * np.float32(scale)).astype(np.float64) + 0.5).astype(np.uint64)
    total = int(counts.sum()) % (1 << 32)  # a 32-bit accumulator in the reference
    if total == 0:
        raise ValueError("pmf must have at least one non-zero probability")
    freqs = (counts * np.uint64(scale) // np.uint64(total)).astype(np.int64)
    cdf = np.concatenate(([0], np.cumsum(freqs)))
    cdf[-1] = scale
    freqs = np.diff(cdf)
    zeros = int((freqs == 0).sum())
    if zeros:
        _steal_counts(freqs, zeros)
        cdf = np.concatenate(([0], np.cumsum(freqs)))
    return torch.from_numpy(cdf.astype(np.int32))


def _steal_counts(freqs: np.ndarray, zeros: int) -> None:
    """Give each zero frequency one count, each taken from the leftmost smallest frequency above one.

    Which symbol gives a count never depends on which zero receives it, so the zeros are set to
    one at once and the ``zeros`` donations are drawn from a heap of (frequency, position).
    """
    donors = [(int(f), j) for j, f in enumerate(freqs.tolist()) if f > 1]
    heapq.heapify(donors)
    for _ in range(zeros):
        if not donors:
            raise ValueError("pmf has more symbols than the CDF precision can give non-zero counts")
        freq, j = heapq.heappop(donors)
        freqs[j] = freq - 1
        if freq - 1 > 1:
            heapq.heappush(donors, (freq - 1, j))
    freqs[freqs == 0] = 1


class _LowerBoundFunction(torch.autograd.Function):
    """max(x, bound), passing the gradient where x ≥ bound or where it pushes x up toward the bound."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        x, bound = ctx.saved_tensors
        return ((x >= bound) | (grad_output < 0)) * grad_output, None


class LowerBound(nn.Module):
    """``max(x, bound)`` whose gradient still moves x when it sits below the bound (buffer ``bound`` [1])."""

    def __init__(self, bound: float) -> None:
        super().__init__()
        self.register_buffer("bound", torch.Tensor([float(bound)]))

    def forward(self, x: Tensor) -> Tensor:
        return _LowerBoundFunction.apply(x, self.bound)


class EntropyModel(nn.Module):
    """Likelihood floor and the integer CDF buffers shared by both layers.

    Buffers (filled by ``update``): ``_quantized_cdf`` [T, L] int32, ``_cdf_length`` [T] int32,
    ``_offset`` [T] int32 (the value of each table's entry 0).
    """

    def __init__(self, likelihood_bound: float = 1e-9, entropy_coder_precision: int = CDF_PRECISION) -> None:
        super().__init__()
        self.entropy_coder_precision = int(entropy_coder_precision)
        self.use_likelihood_bound = likelihood_bound > 0
        if self.use_likelihood_bound:
            self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("_offset", torch.IntTensor())
        self.register_buffer("_quantized_cdf", torch.IntTensor())
        self.register_buffer("_cdf_length", torch.IntTensor())

    def quantize(self, inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        """``noise``: add U(−½, ½) (training); ``dequantize``: round(x − μ) + μ; ``symbols``: round(x − μ) int32."""
        if mode == "noise":
            return inputs + torch.empty_like(inputs).uniform_(-0.5, 0.5)
        if mode not in ("dequantize", "symbols"):
            raise ValueError(f"unknown quantization mode {mode!r}")
        outputs = inputs.clone()
        if means is not None:
            outputs -= means
        outputs = torch.round(outputs)
        if mode == "symbols":
            return outputs.int()
        if means is not None:
            outputs += means
        return outputs

    def _bounded(self, likelihood: Tensor) -> Tensor:
        return self.likelihood_lower_bound(likelihood) if self.use_likelihood_bound else likelihood

    def _pmf_to_cdf(self, pmf: Tensor, tail_mass: Tensor, pmf_length: Tensor, max_length: int) -> Tensor:
        """Rows ``pmf[i, :pmf_length[i]]`` + tail mass → int32 CDF tables [T, max_length + 2] (zero-padded)."""
        cdf = torch.zeros((len(pmf_length), max_length + 2), dtype=torch.int32, device=pmf.device)
        for i, row in enumerate(pmf):
            quantized = pmf_to_quantized_cdf(torch.cat((row[: pmf_length[i]], tail_mass[i]), dim=0),
                                             self.entropy_coder_precision)
            cdf[i, : quantized.numel()] = quantized
        return cdf


class EntropyBottleneck(EntropyModel):
    """Factorized, per-channel learned density of ẑ (Ballé et al. 2018, appendix 6.1).

    Each channel's CDF is a small monotone network c(x) = σ(f_K ∘ … ∘ f_1(x)) with
    f_k(x) = softplus(H_k)·x + b_k (+ tanh(a_k)·tanh(·) between layers). ``quantiles`` [C, 1, 3]
    holds each channel's (tail_mass/2, ½, 1 − tail_mass/2) quantile estimates, fitted by
    :meth:`loss`; the middle one is the median ẑ is quantised around.
    """

    def __init__(
        self,
        channels: int,
        *,
        tail_mass: float = 1e-9,
        init_scale: float = 10,
        filters: tuple[int, ...] = (3, 3, 3, 3),
        likelihood_bound: float = 1e-9,
        entropy_coder_precision: int = CDF_PRECISION,
    ) -> None:
        super().__init__(likelihood_bound, entropy_coder_precision)
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)
        self.tail_mass = float(tail_mass)

        widths = (1, *self.filters, 1)
        layer_scale = self.init_scale ** (1 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            matrix = torch.Tensor(self.channels, widths[i + 1], widths[i])
            matrix.data.fill_(float(np.log(np.expm1(1 / layer_scale / widths[i + 1]))))
            self.matrices.append(nn.Parameter(matrix))
            bias = torch.Tensor(self.channels, widths[i + 1], 1)
            nn.init.uniform_(bias, -0.5, 0.5)
            self.biases.append(nn.Parameter(bias))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(self.channels, widths[i + 1], 1)))

        self.quantiles = nn.Parameter(
            torch.Tensor([-self.init_scale, 0, self.init_scale]).repeat(self.channels, 1, 1)
        )
        target = float(np.log(2 / self.tail_mass - 1))
        self.register_buffer("target", torch.Tensor([-target, 0, target]))

    def _logits_cumulative(self, inputs: Tensor, stop_gradient: bool) -> Tensor:
        """The density network's logit of the CDF at ``inputs`` [C, 1, N] → [C, 1, N]."""
        logits = inputs
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases, strict=True)):
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.factors):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(self, inputs: Tensor, stop_gradient: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """P(bin [x − ½, x + ½]) for ``inputs`` [C, 1, N], with the lower and upper logits."""
        lower = self._logits_cumulative(inputs - 0.5, stop_gradient=stop_gradient)
        upper = self._logits_cumulative(inputs + 0.5, stop_gradient=stop_gradient)
        return torch.sigmoid(upper) - torch.sigmoid(lower), lower, upper

    def forward(self, x: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        """x [B, C, ...] → (x̃ or x̂, likelihoods), both like x: noise in training, else rounding around the median."""
        if training is None:
            training = self.training
        order = (1, 0, *range(2, x.ndim))  # channels first; its own inverse
        by_channel = x.permute(*order).contiguous()
        values = by_channel.reshape(by_channel.size(0), 1, -1)
        outputs = self.quantize(values, "noise" if training else "dequantize", self.quantiles[:, :, 1:2])
        likelihood = self._bounded(self._likelihood(outputs)[0])
        outputs = outputs.reshape(by_channel.shape).permute(*order).contiguous()
        likelihood = likelihood.reshape(by_channel.shape).permute(*order).contiguous()
        return outputs, likelihood

    def loss(self) -> Tensor:
        """Auxiliary loss Σ |logit(quantiles) − target|: fits ``quantiles`` (its only gradient)."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    @torch.no_grad()
    def update(self, force: bool = False) -> bool:
        """Build the per-channel CDF tables between the fitted tail quantiles; False if present and not ``force``."""
        if self._offset.numel() > 0 and not force:
            return False
        medians = self.quantiles[:, 0, 1]
        minima = torch.clamp(torch.ceil(medians - self.quantiles[:, 0, 0]).int(), min=0)
        maxima = torch.clamp(torch.ceil(self.quantiles[:, 0, 2] - medians).int(), min=0)
        self._offset = -minima
        pmf_start = medians - minima
        pmf_length = maxima + minima + 1
        max_length = int(pmf_length.max().item())
        samples = torch.arange(max_length, device=pmf_start.device)[None, :] + pmf_start[:, None, None]
        pmf, lower, upper = self._likelihood(samples, stop_gradient=True)
        tail_mass = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])
        self._quantized_cdf = self._pmf_to_cdf(pmf[:, 0, :], tail_mass, pmf_length, max_length)
        self._cdf_length = pmf_length + 2
        return True


class GaussianConditional(EntropyModel):
    """Zero-mean Gaussian density of integer bins with one σ per element, coded with a σ table.

    ``scale_table`` [S] holds the σ levels whose CDF tables ``update`` builds; ``scale_bound`` is
    the floor σ is clamped to in the likelihood (gradient kept, :class:`LowerBound`).
    """

    def __init__(
        self,
        scale_table: Sequence[float] | None,
        *,
        scale_bound: float = 0.11,
        tail_mass: float = 1e-9,
        likelihood_bound: float = 1e-9,
        entropy_coder_precision: int = CDF_PRECISION,
    ) -> None:
        super().__init__(likelihood_bound, entropy_coder_precision)
        if scale_table is not None and not isinstance(scale_table, list | tuple):
            raise ValueError(f"scale_table must be a list or tuple, not {type(scale_table).__name__}")
        if scale_table is not None and (
            len(scale_table) < 1 or list(scale_table) != sorted(scale_table) or min(scale_table) <= 0
        ):
            raise ValueError("scale_table must be non-empty, sorted and positive")
        if scale_bound <= 0:
            raise ValueError("scale_bound must be positive")
        self.tail_mass = float(tail_mass)
        self.lower_bound_scale = LowerBound(scale_bound)
        self.register_buffer("scale_table", self._table(scale_table) if scale_table else torch.Tensor())
        self.register_buffer("scale_bound", torch.Tensor([float(scale_bound)]))

    @staticmethod
    def _table(scale_table: Sequence[float]) -> Tensor:
        return torch.Tensor(tuple(float(s) for s in scale_table))

    @staticmethod
    def _standardized_cumulative(inputs: Tensor) -> Tensor:
        """Φ(x) of the standard normal, as ½·erfc(−x/√2) (precise in the lower tail)."""
        return 0.5 * torch.erfc(float(-(2**-0.5)) * inputs)

    def _likelihood(self, inputs: Tensor, scales: Tensor, means: Tensor | None = None) -> Tensor:
        """P(bin [x − ½, x + ½]) under N(μ, max(σ, scale_bound)), elementwise (broadcasting)."""
        values = inputs - means if means is not None else inputs
        scales = self.lower_bound_scale(scales)
        values = torch.abs(values)
        upper = self._standardized_cumulative((0.5 - values) / scales)
        lower = self._standardized_cumulative((-0.5 - values) / scales)
        return upper - lower

    def forward(
        self, inputs: Tensor, scales: Tensor, means: Tensor | None = None, training: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """(x̃ with noise in training / round(x − μ) + μ otherwise, likelihoods), shaped like ``inputs``."""
        if training is None:
            training = self.training
        outputs = self.quantize(inputs, "noise" if training else "dequantize", means)
        return outputs, self._bounded(self._likelihood(outputs, scales, means))

    def update_scale_table(self, scale_table: Sequence[float], force: bool = False) -> bool:
        """Set the σ table and build its CDF tables; False if tables exist and not ``force``."""
        if self._offset.numel() > 0 and not force:
            return False
        self.scale_table = self._table(scale_table).to(self.scale_table.device)
        self.update()
        return True

    @torch.no_grad()
    def update(self) -> None:
        """One CDF table per σ level, over ±⌈σ·Φ⁻¹(1 − tail_mass/2)⌉, tails folded into the escape entry."""
        tail_quantile = -float(torch.special.ndtri(torch.tensor(self.tail_mass / 2, dtype=torch.float64)))
        pmf_center = torch.ceil(self.scale_table * tail_quantile).int()
        pmf_length = 2 * pmf_center + 1
        max_length = int(torch.max(pmf_length).item())
        samples = torch.abs(torch.arange(max_length, device=pmf_center.device).int() - pmf_center[:, None]).float()
        scales = self.scale_table.unsqueeze(1).float()
        upper = self._standardized_cumulative((0.5 - samples) / scales)
        lower = self._standardized_cumulative((-0.5 - samples) / scales)
        self._quantized_cdf = self._pmf_to_cdf(upper - lower, 2 * lower[:, :1], pmf_length, max_length)
        self._offset = -pmf_center
        self._cdf_length = pmf_length + 2


def update_registered_buffers(
    module: nn.Module, module_name: str, buffer_names: Sequence[str], state_dict: dict[str, Tensor],
    policy: str = "resize_if_empty",
) -> None:
    """Resize ``module``'s buffers to the shapes of ``state_dict[f"{module_name}.{name}"]`` before loading.

    ``policy``: ``resize`` always, ``resize_if_empty`` only buffers that are still empty. (A
    registered buffer keeps its shape through ``load_state_dict``; the CDF tables' size depends
    on the trained model.)
    """
    if policy not in ("resize", "resize_if_empty"):
        raise ValueError(f"unknown policy {policy!r}")
    buffers = dict(module.named_buffers())
    unknown = [name for name in buffer_names if name not in buffers]
    if unknown:
        raise ValueError(f"{type(module).__name__} has no buffer {unknown[0]!r}")
    for name in buffer_names:
        buffer = buffers[name]
        if policy == "resize" or buffer.numel() == 0:
            buffer.resize_(state_dict[f"{module_name}.{name}"].size())


__all__ = [
    "CDF_PRECISION",
    "EntropyBottleneck",
    "GaussianConditional",
    "LowerBound",
    "pmf_to_quantized_cdf",
    "update_registered_buffers",
]
