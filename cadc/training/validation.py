"""Validation that cannot sink a long run.

* The validation images are spread over the ranks (image i on rank i mod world); each rank
  scores its share and the rows are gathered on every rank, so no rank idles at its next
  collective while another validates. Every collective is bounded by the process group's
  time-out (``dist_timeout_s``).
* Images are scored at their own size (replicate-padded to a multiple of 64, measured on the
  original area); the UNet and the VAE decoder run over overlapping latent tiles above
  ``val_tile_above`` latent pixels, as the decoder does (see
  :meth:`GenerativeBranch.reconstruct`), so a 2K image costs what the decoder costs.
* An image that runs out of accelerator memory is recorded as failed (``failed`` lists it) and
  validation goes on.

Per image: ``bpp`` (the eval-mode likelihoods = the coder's rate), ``psnr`` and ``ms_ssim``
(pytorch-msssim where installed — it comes with ``cadc[fast]`` and ``cadc[eval]`` —, sides
≥ 161 px) of the reconstruction, and ``lpips`` (AlexNet, as the paper
reports) and ``dists`` when ``val_metrics_weights`` names a folder of ``cadc eval``'s backbone
files. The reconstruction is the generative x̂ in Stage I/II (plus ``psnr_aux`` of x̂_aux) and
x̂_aux in the codec stage (``psnr_aux``, ``ms_ssim_aux``, …). ``score`` (lower is better, used for
``best``) is the training objective without its adversarial and quantile terms:
λ·bpp + d1·MSE(x̂) + d2·LPIPS-VGG(x̂) + d3·CLIP-L2(x̂) + d4·MSE(x̂_aux) (each term when the stage
trains it; L_aux only when it reaches the codec, i.e. not in Stage I).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .config import TrainConfig
from .data import load_eval_image
from .losses import mse, psnr, rate_bpp
from .objective import Objective
from .precision import autocast

MS_SSIM_MIN_SIDE = 161
"""pytorch-msssim's 5-scale MS-SSIM with an 11-tap window needs each side > 160 px."""

try:
    from pytorch_msssim import ms_ssim as _ms_ssim
except ImportError:  # optional: validation then reports no MS-SSIM
    _ms_ssim = None


def image_labels(paths: Sequence[Path]) -> list[str]:
    """File names, or full paths where two validation images share a name."""
    names = [p.name for p in paths]
    return [p.name if names.count(p.name) == 1 else str(p) for p in paths]


class Validator:
    """Scores an :class:`Objective`'s model on ``paths``; call it on every rank at once.

    Args:
        paths: validation images (held-out training images and ``val_data``).
        config: the run's config (loss weights, ``val_metrics_weights``, ``val_tile_above``).
        info: this process's rank/world/device.
        amp_dtype: autocast dtype of the frozen networks (None = float32).
    """

    def __init__(
        self, paths: Sequence[Path], config: TrainConfig, info: distributed.DistInfo, amp_dtype: torch.dtype | None
    ) -> None:
        self.paths = list(paths)
        self.labels = image_labels(self.paths)
        self.config, self.info, self.amp_dtype = config, info, amp_dtype
        self._networks: dict[str, torch.nn.Module] | None = None
        if config.val_metrics_weights not in (None, "tiny-random"):  # fail at the start, not hours later
            from ..evaluation.backbones import WEIGHT_FILES

            for metric in ("lpips", "dists"):
                path = Path(config.val_metrics_weights).expanduser() / WEIGHT_FILES[metric]
                if not path.is_file():
                    raise FileNotFoundError(
                        f"val_metrics_weights: {path} not found (the {metric} backbone, see `cadc eval --help`); "
                        "add it or leave val_metrics_weights unset"
                    )

    def networks(self) -> dict[str, torch.nn.Module]:
        """LPIPS-Alex and DISTS from ``val_metrics_weights`` (built on first use), else none."""
        if self._networks is None:
            self._networks = {}
            folder = self.config.val_metrics_weights
            if folder is not None:
                from ..evaluation.backbones import build_dists, build_lpips

                self._networks = {
                    "lpips": build_lpips(folder).to(self.info.device),
                    "dists": build_dists(folder).to(self.info.device),
                }
        return self._networks

    @torch.no_grad()
    def __call__(self, objective: Objective) -> dict[str, Any]:
        """``{"score", "mean", "images", "failed"}``, identical on every rank."""
        objective.eval()
        mine = {}
        for index in range(self.info.rank, len(self.paths), self.info.world):
            label = self.labels[index]
            try:
                mine[label] = self.score_image(objective, self.paths[index])
            except torch.OutOfMemoryError:
                mine[label] = {"error": "out of memory"}
                if self.info.device.type == "cuda":
                    torch.cuda.empty_cache()
        rows = distributed.gather_dicts(mine, self.info)
        rows = {label: rows[label] for label in self.labels if label in rows}
        good = [row for row in rows.values() if "error" not in row]
        keys = sorted({k for row in good for k in row})
        mean = {k: sum(r[k] for r in good if k in r) / sum(1 for r in good if k in r) for k in keys}
        score = mean.pop("score", math.nan)
        failed = [label for label, row in rows.items() if "error" in row]
        return {"score": score, "mean": mean, "images": rows, "failed": failed}

    def score_image(self, objective: Objective, path: Path) -> dict[str, float]:
        """One image's metrics and score (see the module docstring)."""
        c, device = self.config, self.info.device
        x, (height, width) = load_eval_image(path)
        x = x.to(device)
        out = objective.codec(x)
        original = x[..., :height, :width]
        row = {"bpp": float(rate_bpp(out["likelihoods"], height * width))}
        score = c.lambda_rate * row["bpp"]
        x_aux = out["x_aux"]
        if x_aux is not None:
            aux = x_aux[..., :height, :width]
            row["psnr_aux"] = psnr(aux, original)
            if c.effective_aux_weight > 0 and not c.aux_stop_gradient:
                score += c.effective_aux_weight * float(mse(aux, original))
        if objective.branch is None:
            if x_aux is not None:
                row.update({f"{k}_aux": v for k, v in self.metrics(x_aux[..., :height, :width], original).items()})
            row["score"] = score
            return row
        x_hat = objective.branch.reconstruct(out["l_T"], x_aux, c.val_tile_above)[..., :height, :width]
        row["psnr"] = psnr(x_hat, original)
        row.update(self.metrics(x_hat, original))
        row["mse"] = float(mse(x_hat, original))
        score += c.mse_weight * row["mse"]
        with autocast(device, self.amp_dtype):
            if objective.lpips is not None and c.lpips_weight > 0:
                row["lpips_vgg"] = float(objective.lpips(x_hat, original).float().mean())
                score += c.lpips_weight * row["lpips_vgg"]
            if objective.clip is not None and c.clip_weight > 0:
                row["clip"] = float((objective.clip(x_hat) - objective.clip(original)).pow(2).sum(-1).mean())
                score += c.clip_weight * row["clip"]
        row["score"] = score
        return row

    def metrics(self, x_hat: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
        """MS-SSIM (when both sides ≥ 161 px and pytorch-msssim is installed) and, with their
        weights, LPIPS-Alex and DISTS of x̂ clamped to 0..1; float32."""
        x_hat = x_hat.float().clamp(0, 1)
        x = x.float()
        scores = {}
        if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE and _ms_ssim is not None:
            scores["ms_ssim"] = float(_ms_ssim(x_hat, x, data_range=1.0))
        networks = self.networks()
        if "lpips" in networks:
            scores["lpips"] = float(networks["lpips"](x_hat, x, normalize=True).mean())
        if "dists" in networks:
            scores["dists"] = float(networks["dists"](x_hat, x).mean())
        return scores

