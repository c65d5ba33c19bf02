"""Classical baselines: the resampled (factor, quality) search against brute force, the rate over the
original pixels, the container-free payload, the ladder cache, FID/256 patches, the no-download guard."""

from __future__ import annotations

import io
import struct
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from cadc.evaluation.backbones import NetworkBlocked, offline
from cadc.evaluation.baselines import BASELINES, CODECS, FACTORS, PillowCodec, available, parse_baselines, to_pil_rgb8
from cadc.evaluation.fid import fid_kid, patches
from cadc.evaluation.payload import PayloadError, payload_size
from cadc.evaluation.resampled import LadderCache, RateLadder
from tests.conftest import make_photo

HEIGHT, WIDTH = 64, 96  # every factor divides 96; 64/3 and 64/6 round to 21 and 11 (no ties)

# A fast AVIF setting with a quality range of its own: the search is codec-agnostic, brute force over
# every quality of every factor stays cheap.
FAST_CODECS = {
    "jpeg": CODECS["jpeg"],
    "webp": PillowCodec("WebP", "WEBP", 0, 100, {"method": 4}),
    "avif": PillowCodec("AVIF", "AVIF", 10, 60, {"speed": 9}),
}


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return to_pil_rgb8(make_photo(HEIGHT, WIDTH, seed=3))


def brute_force(codec: PillowCodec, image: Image.Image, factors: tuple[int, ...]) -> list[tuple[int, int, int, float]]:
    """(factor, quality, bytes, PSNR) of every setting, computed without cadc's helpers (skimage PSNR)."""
    original = np.asarray(image)
    grid = []
    for factor in factors:
        small = image.resize((round(WIDTH / factor), round(HEIGHT / factor)), Image.Resampling.LANCZOS)
        for quality in range(codec.quality_min, codec.quality_max + 1):
            buffer = io.BytesIO()
            small.save(buffer, format=codec.format, quality=quality, **codec.options)
            with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
                back = decoded.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS)
            psnr = peak_signal_noise_ratio(original, np.asarray(back), data_range=255)
            grid.append((factor, quality, buffer.tell(), psnr))
    return grid


@pytest.mark.parametrize("name", ["jpeg", "webp", "avif"])
def test_resampled_pick_is_the_brute_force_optimum(photo: Image.Image, name: str) -> None:
    if not available(f"{name}-rs"):
        pytest.skip(f"Pillow cannot write {name}")
    codec = FAST_CODECS[name]
    grid = brute_force(codec, photo, FACTORS)
    pixels = WIDTH * HEIGHT
    sizes = sorted({n for _, _, n, _ in grid})
    targets = [8 * sizes[int(q * (len(sizes) - 1))] / pixels * 1.001 for q in (0.0, 0.1, 0.3, 0.5, 0.8)]
    ladder = RateLadder(codec, photo)
    for target in targets:
        for factors in (FACTORS, (1,)):
            feasible = [g for g in grid if g[0] in factors and 8 * g[2] / pixels <= target]
            choice = ladder.select(factors, target)
            if not feasible:  # nothing fits: the smallest file, flagged
                smallest = min(g[2] for g in grid if g[0] in factors)
                assert not choice.reached and choice.nbytes == smallest
                continue
            best = max(feasible, key=lambda g: g[3])
            assert choice.reached and choice.bpp_file <= target
            assert choice.psnr == pytest.approx(best[3], abs=1e-9), (target, factors, choice, best)
            assert (choice.factor, choice.quality, choice.nbytes) in {(f, q, n) for f, q, n, p in feasible}


def test_resampling_wins_where_full_size_cannot_go(photo: Image.Image) -> None:
    codec = FAST_CODECS["jpeg"]
    ladder = RateLadder(codec, photo)
    lowest_full = ladder.select((1,), 0.0)  # the smallest full-size file
    below = lowest_full.bpp_file * 0.9  # JPEG headers: small images barely shrink below that
    assert not ladder.select((1,), below).reached
    choice = ladder.select(FACTORS, below)
    assert choice.reached and choice.factor > 1 and choice.bpp_file <= below


def test_rate_is_over_the_original_pixels(photo: Image.Image) -> None:
    codec = FAST_CODECS["jpeg"]
    choice = RateLadder(codec, photo).select((4,), 10.0)  # factor 4 only, generous budget: its best quality
    assert (choice.coded_width, choice.coded_height) == (WIDTH // 4, HEIGHT // 4)
    small = photo.resize((WIDTH // 4, HEIGHT // 4), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=choice.quality, **codec.options)
    assert choice.nbytes == buffer.tell()
    assert choice.bpp_file == pytest.approx(8 * buffer.tell() / (WIDTH * HEIGHT), rel=1e-12)  # not / (24 * 16)
    assert choice.bpp_payload == pytest.approx(8 * (buffer.tell() - 18) / (WIDTH * HEIGHT), rel=1e-12)


def test_ladder_cache_serves_a_second_run_without_encoding(photo: Image.Image, tmp_path) -> None:
    codec = FAST_CODECS["jpeg"]
    first = LadderCache(tmp_path, "psnr-only")
    ladder = first.get("jpeg", codec, "photo", photo)
    choice = ladder.select(FACTORS, 1.0)
    ladder.scores[choice.key] = {"psnr": choice.psnr}
    first.save("jpeg", "photo")
    again = LadderCache(tmp_path, "psnr-only").get("jpeg", codec, "photo", photo)
    assert again.select(FACTORS, 1.0) == choice and again.encodes == 0
    assert again.scores == {choice.key: {"psnr": choice.psnr}}
    other_metrics = LadderCache(tmp_path, "psnr+lpips").get("jpeg", codec, "photo", photo)
    assert other_metrics.scores == {} and other_metrics.rungs == again.rungs  # sizes kept, scores not
    changed = photo.copy()
    changed.putpixel((0, 0), (0, 0, 0) if photo.getpixel((0, 0)) != (0, 0, 0) else (255, 255, 255))
    assert LadderCache(tmp_path, "psnr-only").get("jpeg", codec, "photo", changed).rungs == {}


def test_payload_of_real_files(photo: Image.Image) -> None:
    jpeg = FAST_CODECS["jpeg"].encode(photo, 50)
    assert jpeg[2:4] == b"\xff\xe0" and payload_size(jpeg, "JPEG") == len(jpeg) - 18  # JFIF APP0: 2 + 16 bytes
    webp = FAST_CODECS["webp"].encode(photo, 50)
    kind, size = struct.unpack("<4sI", webp[12:20])
    assert kind == b"VP8 " and len(webp) == 20 + size + (size & 1) and payload_size(webp, "WEBP") == size
    if available("avif"):
        avif = FAST_CODECS["avif"].encode(photo, 30)
        assert 0 < payload_size(avif, "AVIF") < len(avif) - 100  # the HEIF container is a few hundred bytes


def test_payload_of_crafted_isobmff_boxes() -> None:
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I4s", 8 + len(body), kind) + body

    large = struct.pack(">I4sQ", 1, b"mdat", 16 + 5) + b"12345"  # 64-bit size form
    data = box(b"ftyp", b"avif" * 3) + box(b"meta", b"x" * 40) + box(b"mdat", b"a" * 11) + large
    assert payload_size(data, "AVIF") == 11 + 5
    to_end = data + struct.pack(">I4s", 0, b"mdat") + b"b" * 7  # size 0: up to the end of the file
    assert payload_size(to_end, "AVIF") == 11 + 5 + 7
    with pytest.raises(PayloadError, match="impossible size"):
        payload_size(box(b"ftyp", b"avif") + struct.pack(">I4s", 99, b"mdat") + b"x", "AVIF")
    with pytest.raises(PayloadError):
        payload_size(b"RIFF\x00\x00\x00\x00WEBPVP8 \xff\x00\x00\x00", "WEBP")
    with pytest.raises(PayloadError, match="SOI"):
        payload_size(b"not a jpeg", "JPEG")


def test_parse_baselines() -> None:
    assert parse_baselines("JPEG, webp-rs,jpeg") == ["jpeg", "webp-rs"]
    assert parse_baselines("") == []
    assert BASELINES["avif-rs"].factors == FACTORS and BASELINES["avif"].factors == (1,)
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
