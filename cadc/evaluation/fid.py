"""Set-level FID and KID on 256×256 patches (FID/256 of HiFiC, as used by MS-ILLM).

Each image is cut into a grid of non-overlapping ``patch``×``patch`` tiles (the remainder at the
right/bottom is dropped); when both sides are at least 1.5·``patch``, the grid is cut a second time
from an offset of ``patch``/2 in both directions. Every tile counts as one image for FID/KID
(torchmetrics' implementations, fed with InceptionV3 pool features of 8-bit tiles). Originals'
features are extracted once and shared by all runs.

FID from N tiles is biased upwards for small N; with fewer than ``min_patches`` tiles FID/KID are not
reported (a note says why), and below 2048 tiles (the feature size) a note warns that values only
compare runs on the same data.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

PATCH = 256
DEFAULT_MIN_PATCHES = 64
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def patches(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """[1, 3, H, W] in 0..1 → uint8 tiles [N, 3, patch, patch] (grid, then the half-shifted grid)."""
    x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    h, w = x8.shape[-2:]
    offsets = [0] + ([patch // 2] if h >= 1.5 * patch and w >= 1.5 * patch else [])
    tiles = [torch.zeros(0, 3, patch, patch, dtype=torch.uint8)]
    for offset in offsets if min(h, w) >= patch else []:
        grid = x8[0, :, offset:, offset:]
        grid = grid[:, : (grid.shape[1] // patch) * patch, : (grid.shape[2] // patch) * patch]
        grid = grid.unfold(1, patch, patch).unfold(2, patch, patch)  # [3, rows, cols, patch, patch]
        tiles.append(grid.permute(1, 2, 0, 3, 4).reshape(-1, 3, patch, patch))
    return torch.cat(tiles)


class _Precomputed(nn.Module):
    """Feature "extractor" that passes features through, so that FID and KID share one extraction."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class PatchFeatures:
    """Collects InceptionV3 features of every tile of the images given to :meth:`add`."""

    def __init__(self, extractor: nn.Module, device: torch.device, patch: int = PATCH, batch: int = 16) -> None:
        self.extractor = extractor.to(device)
        self.device = device
        self.patch = patch
        self.batch = batch
        self.features: list[torch.Tensor] = []

    @torch.inference_mode()
    def add(self, x: torch.Tensor) -> None:
        """``x``: [1, 3, H, W] in 0..1."""
        tiles = patches(x, self.patch)
        for start in range(0, len(tiles), self.batch):
            chunk = tiles[start : start + self.batch].to(self.device)
            self.features.append(self.extractor(chunk).double().cpu())

    def stacked(self) -> torch.Tensor:
        """[N, D] features (N = 0 if no image had a full tile)."""
        return torch.cat(self.features) if self.features else torch.zeros(0, 0, dtype=torch.float64)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, min_patches: int = DEFAULT_MIN_PATCHES) -> dict:
    """FID and KID (mean, std over subsets) between two [N, D] feature sets.

    Returns ``{"fid", "kid", "kid_std", "patches", "note"}``; values are None (with the note) when
    fewer than ``max(2, min_patches)`` tiles exist.
    """
    n = min(len(real), len(fake))
    result: dict = {"fid": None, "kid": None, "kid_std": None, "patches": n, "note": None}
    if n < max(2, min_patches):
        result["note"] = (
            f"FID/KID not computed: {n} patches of {PATCH}x{PATCH} px, need at least {max(2, min_patches)} "
            "(use more or larger images, or lower --fid-min-patches)"
        )
        return result
    dim = real.shape[1]
    fid = FrechetInceptionDistance(feature=_Precomputed(dim))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' note that KID keeps all features in memory
        kid = KernelInceptionDistance(
            feature=_Precomputed(dim), subsets=KID_SUBSETS, subset_size=min(KID_SUBSET_SIZE, n)
        )
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # KID's random subsets: the same draw for every run
        kid_mean, kid_std = kid.compute()
    result.update(fid=float(fid.compute()), kid=float(kid_mean), kid_std=float(kid_std))
    if n < 2048:
        result["note"] = f"only {n} patches (< 2048): FID is biased upwards; compare runs on the same data only"
    return result
