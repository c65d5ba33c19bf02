"""Full-reference metrics per image: PSNR, MS-SSIM, LPIPS (AlexNet), DISTS.

Reconstructions are rounded to 8 bits first (what a saved PNG holds), so CADC and the Pillow
baselines are scored on the same footing. PSNR is computed over RGB in 0..1 (data range 1, dB) by
torchmetrics; MS-SSIM by pytorch-msssim (5 scales, so both sides must exceed 160 px); LPIPS and DISTS
by the networks of :mod:`cadc.evaluation.backbones`. A metric that cannot run is ``None`` and the
reason is kept in :attr:`ImageMetrics.notes`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_msssim import ms_ssim
from torchmetrics.functional.image import peak_signal_noise_ratio

from .backbones import BackboneError, build_dists, build_lpips

PER_IMAGE = ("psnr", "ms_ssim", "lpips", "dists")
HIGHER_IS_BETTER = {"psnr": True, "ms_ssim": True, "lpips": False, "dists": False, "fid": False, "kid": False}
UNITS = {"psnr": "dB", "ms_ssim": "", "lpips": "", "dists": "", "fid": "", "kid": ""}
MS_SSIM_MIN_SIDE = 161
"""pytorch-msssim's 5-scale MS-SSIM with an 11-tap window needs each side > (11 − 1)·2⁴ px."""


def quantize8(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] float → the same clamped to 0..1 and rounded to multiples of 1/255."""
    return (x.clamp(0, 1) * 255).round() / 255


class ImageMetrics:
    """Scores reconstructions against originals; build once, call per image.

    Args:
        weights_dir: folder with the backbone files (see :mod:`cadc.evaluation.backbones`),
            ``"tiny-random"`` (tests only), or None (LPIPS/DISTS skipped with a note).
        device: torch device for the networks.
    """

    def __init__(self, weights_dir: str | Path | None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.notes: list[str] = []
        self.networks: dict[str, torch.nn.Module] = {}
        for name, build in (("lpips", build_lpips), ("dists", build_dists)):
            if weights_dir is None:
                self.notes.append(f"{name} skipped: no --weights-dir (or $CADC_EVAL_WEIGHTS) given")
                continue
            try:
                self.networks[name] = build(weights_dir).to(self.device)
            except BackboneError as error:
                self.notes.append(str(error))

    @property
    def available(self) -> tuple[str, ...]:
        """Per-image metrics that will have values (MS-SSIM still needs large enough images)."""
        return ("psnr", "ms_ssim", *self.networks)

    @torch.inference_mode()
    def __call__(self, x_hat: torch.Tensor, x: torch.Tensor) -> dict[str, float | None]:
        """``x_hat``, ``x``: [1, 3, H, W] in 0..1 → {metric: value or None}; PSNR in dB."""
        x = x.to(self.device, torch.float32)
        x_hat = quantize8(x_hat.to(self.device, torch.float32))
        scores: dict[str, float | None] = dict.fromkeys(PER_IMAGE)
        scores["psnr"] = float(peak_signal_noise_ratio(x_hat, x, data_range=1.0))
        if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE:
            scores["ms_ssim"] = float(ms_ssim(x_hat, x, data_range=1.0))
        else:
            note = f"ms_ssim skipped for images with a side under {MS_SSIM_MIN_SIDE} px"
            if note not in self.notes:
                self.notes.append(note)
        if "lpips" in self.networks:
            scores["lpips"] = float(self.networks["lpips"](x_hat, x, normalize=True).mean())
        if "dists" in self.networks:
            scores["dists"] = float(self.networks["dists"](x_hat, x).mean())
        return scores
