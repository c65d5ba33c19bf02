"""Image I/O: modes, 16-bit, EXIF, animation, bad files, padding and atomic saving."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from cadc.images import ImageError, crop_to, load_image, pad_to_multiple, save_image, to_pil

RNG = np.random.default_rng(0)


def encode(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def as_hwc(x: torch.Tensor, full: int = 255) -> np.ndarray:
    """[1, 3, H, W] in 0..1 -> [H, W, 3] integers."""
    return (x[0].permute(1, 2, 0).numpy() * full).round().astype(np.int64)


def noise(h: int, w: int, c: int, high: int = 256) -> np.ndarray:
    return RNG.integers(0, high, (h, w, c)).astype(np.uint16 if high > 256 else np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(a: np.ndarray, color_type: int, size: tuple[int, int] | None = None) -> bytes:
    """A 16-bit PNG that uses all five row filters (None, Sub, Up, Average, Paeth) in turn."""
    h, w, c = a.shape
    rows = np.ascontiguousarray(a, dtype=">u2").view(np.uint8).reshape(h, -1).astype(np.int64)
    bpp, prev, out = 2 * c, np.zeros(rows.shape[1], np.int64), b""
    for y, row in enumerate(rows):
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        p = left + prev - upleft
        pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        predictor = [0, left, prev, (left + prev) // 2, paeth][y % 5]
        out += bytes([y % 5]) + ((row - predictor) % 256).astype(np.uint8).tobytes()
        prev = row
    width, height = size or (w, h)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(out))
        + png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------- modes


def test_odd_size_rgb_round_trip(tmp_path):
    a = noise(97, 131, 3)
    path = tmp_path / "in.png"
    path.write_bytes(encode(Image.fromarray(a)))
    img = load_image(path)
    assert img.tensor.shape == (1, 3, 97, 131) and img.tensor.dtype == torch.float32
    assert (img.channels, img.bit_depth) == (3, 8)
    assert np.array_equal(as_hwc(img.tensor), a)
    save_image(img.tensor, tmp_path / "out.png")
    assert torch.equal(load_image(tmp_path / "out.png").tensor, img.tensor)
    assert load_image(path.read_bytes()).tensor.equal(img.tensor)
    assert load_image(Image.open(path)).tensor.equal(img.tensor)


@pytest.mark.parametrize(
    ("mode", "channels", "bit_depth"),
    [("1", 1, 8), ("L", 1, 8), ("LA", 2, 8), ("RGBA", 4, 8), ("RGBX", 3, 8), ("YCbCr", 3, 8), ("PA", 4, 8)],
)
def test_modes_become_rgb(mode, channels, bit_depth):
    im = Image.fromarray(noise(9, 11, 4), "RGBA").convert(mode)
    img = load_image(im)
    assert (img.channels, img.bit_depth) == (channels, bit_depth)
    reference = im.convert("RGB") if mode != "PA" else im.convert("RGBA").convert("RGB")
    assert np.array_equal(as_hwc(img.tensor), np.asarray(reference))


def test_alpha_is_dropped_without_premultiplying():
    a = noise(6, 5, 4)
    a[..., 3] = 0  # fully transparent: colours must survive unchanged
    img = load_image(encode(Image.fromarray(a, "RGBA")))
    assert img.channels == 4 and np.array_equal(as_hwc(img.tensor), a[..., :3])
    out = to_pil(img.tensor, channels=4)
    assert out.mode == "RGBA" and np.all(np.asarray(out)[..., 3] == 255)
    assert np.array_equal(np.asarray(out)[..., :3], a[..., :3])


@pytest.mark.parametrize("transparent", [False, True])
def test_palette(transparent):
    im = Image.fromarray(noise(13, 7, 3)).quantize(16)
    if transparent:
        im.info["transparency"] = 0
    data = encode(im, transparency=0) if transparent else encode(im)
    img = load_image(data)
    assert img.channels == (4 if transparent else 3)
    assert np.array_equal(as_hwc(img.tensor), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_cmyk_jpeg():
    data = encode(Image.fromarray(noise(16, 24, 4), "CMYK"), "JPEG")
    img = load_image(data)
    assert (img.channels, img.bit_depth) == (3, 8)
    assert np.array_equal(as_hwc(img.tensor), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_int32_and_float_modes():
    i32 = np.array([[-5, 0, 1000, 70000]], np.int32)
    img = load_image(Image.fromarray(i32, "I"))
    assert (img.channels, img.bit_depth) == (1, 16)
    assert as_hwc(img.tensor, 65535)[0, :, 0].tolist() == [0, 0, 1000, 65535]
    f = np.array([[-1.0, 0.25, 2.0, np.nan]], np.float32)
    img = load_image(Image.fromarray(f, "F"))
    assert img.tensor[0, 0, 0].tolist() == [0.0, 0.25, 1.0, 0.0] and img.bit_depth == 16


# ---------------------------------------------------------------- 16 bit


def test_16bit_gray_round_trip(tmp_path):
    a = noise(10, 9, 1, high=65536)
    img = load_image(encode(Image.fromarray(a[..., 0])))
    assert (img.channels, img.bit_depth) == (1, 16)
    assert np.array_equal(as_hwc(img.tensor, 65535)[..., :1], a)
    assert to_pil(img.tensor, 1, 16).mode == "I;16"
    save_image(img.tensor, tmp_path / "g.png", channels=1, bit_depth=16)
    assert Image.open(tmp_path / "g.png").mode == "I;16"
    assert torch.equal(load_image(tmp_path / "g.png").tensor, img.tensor)


@pytest.mark.parametrize(("channels", "color_type"), [(3, 2), (4, 6), (2, 4)])
def test_16bit_colour_png_read_exactly(tmp_path, channels, color_type):
    a = noise(11, 13, channels, high=65536)
    img = load_image(png16(a, color_type))
    assert (img.channels, img.bit_depth) == (channels, 16)
    expected = a[..., :3] if channels >= 3 else np.repeat(a[..., :1], 3, axis=2)
    assert np.array_equal(as_hwc(img.tensor, 65535), expected)
    path = tmp_path / "out.png"
    save_image(img.tensor, path, channels=channels, bit_depth=16)
    again = load_image(path)
    assert (again.channels, again.bit_depth) == (channels, 16) and torch.equal(again.tensor, img.tensor)


def test_16bit_rgb_pil_input_is_read_at_8_bits():
    """Documented limitation: without the file, Pillow's 8-bit view is all there is."""
    a = noise(4, 5, 3, high=65536)
    img = load_image(Image.open(io.BytesIO(png16(a, 2))))
    assert img.bit_depth == 8 and np.array_equal(as_hwc(img.tensor), a >> 8)


# ---------------------------------------------------------------- EXIF, animation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(noise(5, 7, 3)), exif=exif)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert np.array_equal(as_hwc(load_image(data).tensor), np.asarray(upright.convert("RGB")))


def test_exif_rotated_jpeg_is_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    img = load_image(encode(Image.fromarray(noise(16, 40, 3)), "JPEG", exif=exif))
    assert img.tensor.shape == (1, 3, 40, 16)


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animated_gives_first_frame_with_warning(fmt):
    red, blue = Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("RGB", (8, 6), (0, 0, 255))
    data = encode(red, fmt, save_all=True, append_images=[blue], duration=100)
    with pytest.warns(UserWarning, match="animated"):
        img = load_image(data)
    assert img.tensor[0, :, 3, 4].tolist() == [1.0, 0.0, 0.0]


# ---------------------------------------------------------------- bad images


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_raise_image_error(fmt):
    data = encode(Image.fromarray(noise(97, 131, 3)), fmt)
    for cut in (0, 10, 40, len(data) // 2, len(data) - 25):  # pixel data incomplete
        with pytest.raises(ImageError, match="cannot read image"):
            load_image(data[:cut])


def test_png_missing_only_its_trailer_still_decodes():
    """All pixels present, only the zlib checksum / IEND missing: Pillow decodes it, and so do we."""
    data = encode(Image.fromarray(noise(97, 131, 3)))
    assert torch.equal(load_image(data[:-20]).tensor, load_image(data).tensor)


def test_zero_size_raises_image_error():
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError):
        load_image(png16(noise(1, 1, 3, 65536), 2, size=(0, 1)))


def test_one_pixel_image_pads_to_64():
    img = load_image(encode(Image.new("RGB", (1, 1), (10, 20, 30))))
    padded, pads = pad_to_multiple(img.tensor)
    assert padded.shape == (1, 3, 64, 64) and pads == (63, 63)
    assert torch.equal(padded[0, :, 63, 63], img.tensor[0, :, 0, 0])


@pytest.mark.parametrize("side", [16000, 40000])
def test_huge_dimensions_refused_before_decoding(side):
    data = png16(noise(1, 1, 3, 65536), 2, size=(side, side))  # header claims side x side
    tracemalloc.start()
    try:
        with pytest.raises(ImageError):
            load_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_pixel_cap_parameter(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(encode(Image.fromarray(noise(97, 131, 3))))
    with pytest.raises(ImageError, match="exceeds the cap of 1000"):
        load_image(path, max_pixels=1000)


def test_missing_and_non_image_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image")
    with pytest.raises(ImageError):
        load_image(tmp_path / "x.png")
    with pytest.raises(ImageError):
        load_image(tmp_path / "missing.png")


# ---------------------------------------------------------------- padding, output


def test_pad_replicates_and_crop_undoes_it():
    x = torch.rand(2, 3, 97, 131)
    padded, (pad_bottom, pad_right) = pad_to_multiple(x)
    assert padded.shape == (2, 3, 128, 192) and (pad_bottom, pad_right) == (31, 61)
    assert torch.equal(padded[..., 97:, :131], x[..., 96:97, :].expand(-1, -1, 31, -1))
    assert torch.equal(padded[..., :97, 131:], x[..., :, 130:131].expand(-1, -1, -1, 61))
    assert torch.equal(crop_to(padded, 97, 131), x)
    same, pads = pad_to_multiple(torch.rand(1, 3, 128, 64))
    assert pads == (0, 0) and same.shape == (1, 3, 128, 64)
    with pytest.raises(ValueError):
        crop_to(x, 98, 10)


def test_gray_output_is_mean_of_rgb():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = 0.3  # R only: mean = 0.1
    out = to_pil(x, channels=2)
    assert out.mode == "LA" and np.asarray(out)[0, 0].tolist() == [round(0.1 * 255), 255]
    assert to_pil(x, channels=1).mode == "L"


def test_save_formats_and_atomicity(tmp_path, monkeypatch):
    x = torch.rand(1, 3, 9, 10)
    save_image(x, tmp_path / "a.jpg", channels=4)
    assert Image.open(tmp_path / "a.jpg").mode == "RGB"
    save_image(x, tmp_path / "noext", channels=3)
    assert Image.open(tmp_path / "noext").format == "PNG"
    save_image(x, tmp_path / "b.webp", channels=3)
    with pytest.raises(ImageError, match="unknown image extension"):
        save_image(x, tmp_path / "c.xyz")
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "b.webp", "noext"]

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_image(torch.zeros(1, 3, 9, 10), tmp_path / "noext")
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "b.webp", "noext"]
    assert np.asarray(Image.open(tmp_path / "noext")).any()  # the old file is intact
