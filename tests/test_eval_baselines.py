"""Pillow baselines at a matched bpp, FID/256 patches, and the no-download guard."""

from __future__ import annotations

import urllib.request

import pytest
import torch

from cadc.evaluation.backbones import NetworkBlocked, offline
from cadc.evaluation.baselines import CODECS, available, match_bpp, parse_baselines, to_pil_rgb8
from cadc.evaluation.fid import fid_kid, patches
from tests.conftest import make_photo


@pytest.fixture(scope="module")
def photo():
    return to_pil_rgb8(make_photo(192, 256, seed=3))


@pytest.mark.parametrize("name", ["jpeg", "webp", "avif"])
def test_match_hits_a_reachable_target_within_tolerance(photo, name: str) -> None:
    if not available(name):
        pytest.skip(f"Pillow cannot write {name}")
    codec = CODECS[name]
    pixels = photo.width * photo.height
    target = 8 * len(codec.encode(photo, 60)) / pixels * 1.02  # a bpp between two integer qualities
    cache: dict[int, bytes] = {}
    match = match_bpp(codec, photo, target, cache)
    assert match.reached and match.bpp <= target
    assert match.bpp >= 0.9 * target  # within 10 %: one quality step on a 256x192 image
    if match.quality < codec.quality_max:  # the next quality up would overshoot
        assert 8 * len(codec.encode(photo, match.quality + 1)) / pixels > target
    again = match_bpp(codec, photo, target, cache)
    assert again.quality == match.quality and again.encodes == 0  # the cache serves repeated targets


def test_unreachable_target_returns_the_lowest_quality_flagged(photo) -> None:
    match = match_bpp(CODECS["jpeg"], photo, 1e-4)
    assert not match.reached and match.quality == CODECS["jpeg"].quality_min and match.bpp > 1e-4
    decoded = CODECS["jpeg"].decode(match.data)
    assert decoded.shape == (1, 3, 192, 256) and 0 <= decoded.min() and decoded.max() <= 1


def test_parse_baselines() -> None:
    assert parse_baselines("JPEG, webp") == ["jpeg", "webp"]
    assert parse_baselines("") == []
    with pytest.raises(ValueError, match="unknown baseline"):
        parse_baselines("jpeg,bpg")


@pytest.mark.parametrize(("h", "w", "count"), [(512, 768, 8), (384, 384, 2), (256, 300, 1), (200, 300, 0)])
def test_patch_grid_and_half_shift(h: int, w: int, count: int) -> None:
    tiles = patches(torch.rand(1, 3, h, w))
    assert tiles.shape == (count, 3, 256, 256) and tiles.dtype == torch.uint8


def test_patch_tiles_are_the_image_pixels() -> None:
    x = torch.rand(1, 3, 512, 512)
    tiles = patches(x)
    x8 = (x * 255).round().to(torch.uint8)[0]
    assert torch.equal(tiles[1], x8[:, :256, 256:])  # row-major grid
    assert torch.equal(tiles[4], x8[:, 128:384, 128:384])  # the half-shifted grid


def test_fid_kid_needs_enough_patches_and_is_zero_on_identical_sets() -> None:
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    few = fid_kid(real, real, min_patches=64)
    assert few["fid"] is None and "not computed" in few["note"]
    same = fid_kid(real, real, min_patches=8)
    shifted = fid_kid(real, real + 1.0, min_patches=8)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert shifted["fid"] == pytest.approx(8.0, rel=1e-6)  # ‖Δμ‖² = 8, same covariances
    assert shifted["kid"] > 0.1 > same["kid"]


def test_offline_guard_blocks_downloads() -> None:
    with offline(), pytest.raises(NetworkBlocked):
        urllib.request.urlopen("http://127.0.0.1:9/weights.pth", timeout=1)
    with offline(), pytest.raises(NetworkBlocked):
        torch.hub.load_state_dict_from_url("http://127.0.0.1:9/weights.pth", model_dir="/nonexistent")
