"""Image I/O for CADC: any Pillow-readable image in, ``[1, 3, H, W]`` float32 RGB in 0..1 out, and back.

Conversion rules (the codec always codes three colour channels; the ``.cadc`` header records the
source's ``channels`` and ``bit_depth`` so decoding can restore the layout):

==================================  ===========================================  ========  =========
source mode                         becomes                                      channels  bit_depth
==================================  ===========================================  ========  =========
``1`` (1-bit), ``L``                gray repeated into R, G, B (1-bit: 0 / 1)    1         8
``I;16*`` (16-bit gray)             gray / 65535                                 1         16
``I`` (32-bit int)                  clipped to 0..65535, / 65535                 1         16
``F`` (float)                       clipped to 0..1 (NaN → 0)                    1         16
``LA``, ``La``                      gray; alpha dropped                          2         8
``P`` without / with transparency   palette colours                              3 / 4     8
``PA``, ``RGBA``, ``RGBa``          colours; alpha dropped                       4         8
``RGB``, ``RGBX``                   as is                                        3         8
``CMYK``, ``YCbCr``, ``LAB``,       Pillow's ``convert("RGB")`` (CMYK: naive     3         8
``HSV``                             formula, ICC profiles are not applied)
16-bit RGB / RGBA / gray+alpha PNG  full 16-bit values (see below)               3 / 4 / 2 16
==================================  ===========================================  ========  =========

Alpha policy: alpha is not coded. Colours are kept un-premultiplied (straight alpha, as PNG stores
them; premultiplied ``La`` / ``RGBa`` are converted to straight first) and are not composited onto
a background, so fully transparent pixels keep whatever colour the file holds. Decoding restores a
fully opaque alpha channel.

16-bit colour PNGs: Pillow 13 exposes 16-bit RGB/RGBA PNGs as 8-bit ``RGB``/``RGBA`` (it keeps
the high byte) and 16-bit gray+alpha as 8-bit ``RGBA``. When the source is a path or bytes,
:func:`load_image` decodes such files a second time with a raw mode that yields the low bytes
(``RGB;16L`` reads the low byte of big-endian samples; ``RGBA`` on gray+alpha returns all four
bytes), so the values are exact. Limitations: a PIL image passed in directly, and 16-bit colour
formats other than PNG (e.g. TIFF), are read at Pillow's 8-bit precision and reported as 8-bit
(a 16-bit gray+alpha PIL image then looks like 8-bit RGBA).

Other rules: EXIF orientation is applied; an animated image yields its first frame with a
warning; zero-size, truncated, unreadable or too large images raise :class:`ImageError`. The pixel
cap is checked from the file header before any pixels are decoded; Pillow additionally refuses
images over ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 M pixels by default).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cadc.container import MAX_PIXELS, atomic_write_bytes

__all__ = [
    "ImageError",
    "LoadedImage",
    "atomic_write_bytes",
    "crop_to",
    "load_image",
    "pad_to_multiple",
    "save_image",
    "to_pil",
]

ImageSource = str | os.PathLike | bytes | Image.Image

_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
# 16-bit PNG raw mode as Pillow opens it -> (raw mode exposing the missing bytes, source channels)
_PNG16 = {"RGB;16B": ("RGB;16L", 3), "RGBA;16B": ("RGBA;16L", 4), "LA;16B": ("RGBA", 2)}
_EXIF_ORIENTATION = 0x0112
_ORIENT = {  # EXIF orientation -> transform of an [H, W, C] array to upright
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


class ImageError(ValueError):
    """An image that cannot be read or written, with a message that says why."""


@dataclass
class LoadedImage:
    """``tensor``: [1, 3, H, W] float32 RGB in 0..1; ``channels`` and ``bit_depth`` of the source."""

    tensor: torch.Tensor
    channels: int
    bit_depth: int


def _open(src: ImageSource) -> Image.Image:
    return Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)


def _png16(src: ImageSource, rawmode: object, im: Image.Image) -> tuple[np.ndarray, int] | None:
    """Exact samples of a 16-bit colour or gray+alpha PNG whose 8-bit decode ``im`` is loaded.

    Returns ([H, W, 1 or 3] uint16, channels) or None for other images.
    """
    if isinstance(src, Image.Image) or rawmode not in _PNG16:
        return None
    alt, channels = _PNG16[rawmode]  # type: ignore[index]
    with _open(src) as other:
        other.tile = [(*other.tile[0][:3], alt)]  # (codec, extents, offset, raw mode)
        other.load()
        lo = np.asarray(other).astype(np.uint16)
    if channels == 2:  # raw bytes per pixel: L_hi, L_lo, A_hi, A_lo
        return (lo[..., :1] << 8) | lo[..., 1:2], 2
    return (np.asarray(im)[..., :3].astype(np.uint16) << 8) | lo[..., :3], channels


def _pixels(im: Image.Image) -> tuple[np.ndarray, float, int, int]:
    """Loaded image -> ([H, W, 1 or 3] array, full-scale value, channels, bit_depth)."""
    mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im)[..., None], 65535.0, 1, 16
    if mode == "I":
        return np.clip(np.asarray(im), 0, 65535)[..., None], 65535.0, 1, 16
    if mode == "F":
        return np.clip(np.nan_to_num(np.asarray(im), nan=0.0), 0.0, 1.0)[..., None], 1.0, 1, 16
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"))[..., None], 255.0, 1, 8
    if mode in ("LA", "La"):
        return np.asarray(im.convert("LA"))[..., :1], 255.0, 2, 8
    if mode == "P":
        alpha = "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
        return np.asarray(im.convert("RGBA" if alpha else "RGB"))[..., :3], 255.0, 4 if alpha else 3, 8
    if mode in ("PA", "RGBA", "RGBa"):
        return np.asarray(im.convert("RGBA"))[..., :3], 255.0, 4, 8
    return np.asarray(im.convert("RGB")), 255.0, 3, 8


def load_image(path_or_pil: ImageSource, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read an image (path, encoded bytes or PIL image) as RGB float; see the module docstring.

    Raises :class:`ImageError` for zero-size, over ``max_pixels``, truncated or unreadable images.
    """
    src = path_or_pil
    name = (
        "<bytes>" if isinstance(src, bytes) else "<PIL image>" if isinstance(src, Image.Image) else str(src)
    )
    try:
        im = src if isinstance(src, Image.Image) else _open(src)
        try:
            width, height = im.size
            if width < 1 or height < 1:
                raise ImageError(f"image {name} has zero size ({width}x{height})")
            if width * height > max_pixels:
                raise ImageError(f"image {name} of {width}x{height} pixels exceeds the cap of {max_pixels}")
            animated = getattr(im, "is_animated", False)
            if animated:
                warnings.warn(f"image {name} is animated; using its first frame", stacklevel=2)
                im.seek(0)
            rawmode = im.tile[0][3] if im.format == "PNG" and len(im.tile) == 1 and not animated else None
            im.load()
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            png16 = _png16(src, rawmode, im)
            if png16 is not None:
                arr, scale, channels, bit_depth = png16[0], 65535.0, png16[1], 16
            else:
                arr, scale, channels, bit_depth = _pixels(im)
        finally:
            if im is not src:
                im.close()
    except ImageError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageError(f"cannot read image {name}: {e}") from e
    arr = _ORIENT.get(orientation, lambda a: a)(arr)
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    x /= scale
    return LoadedImage(x.expand(1, 3, -1, -1).contiguous(), channels, bit_depth)


def pad_to_multiple(x: torch.Tensor, multiple: int = 64) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad [B, C, H, W] at the bottom and right by repeating the last row / column (replicate).

    The padded size is the next multiple of ``multiple`` (64 for CADC: g_a downsamples by 64), so
    ``pad_bottom = (-H) % multiple`` and ``pad_right = (-W) % multiple``, each in 0..multiple-1.
    Returns ``(padded, (pad_bottom, pad_right))``; undo with :func:`crop_to`.
    """
    pad_bottom, pad_right = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_bottom or pad_right:
        x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="replicate")
    return x, (pad_bottom, pad_right)


def crop_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Top-left ``height`` x ``width`` crop of [..., H, W] (removes :func:`pad_to_multiple` padding)."""
    if not (0 < height <= x.shape[-2] and 0 < width <= x.shape[-1]):
        raise ValueError(f"cannot crop {tuple(x.shape[-2:])} to {height}x{width}")
    return x[..., :height, :width]


def _quantize(x: torch.Tensor, channels: int, bit_depth: int) -> np.ndarray:
    """[1, 3, H, W] in 0..1 -> [H, W, channels] uint8/uint16 with gray = mean of RGB, opaque alpha."""
    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"expected a [1, 3, H, W] tensor, got {tuple(x.shape)}")
    if channels not in (1, 2, 3, 4) or bit_depth not in (8, 16):
        raise ValueError(f"unsupported channels={channels} / bit_depth={bit_depth}")
    x = x.detach().to("cpu", torch.float32)[0].clamp(0, 1)
    color = x.mean(0, keepdim=True) if channels <= 2 else x
    if channels in (2, 4):
        color = torch.cat([color, torch.ones_like(color[:1])])
    full = 65535 if bit_depth == 16 else 255
    q = (color * full).round().permute(1, 2, 0).to(torch.int32).numpy()
    return q.astype(np.uint16 if bit_depth == 16 else np.uint8)


def to_pil(x: torch.Tensor, channels: int = 3, bit_depth: int = 8) -> Image.Image:
    """[1, 3, H, W] in 0..1 -> PIL image in the source's layout.

    Gray sources (channels 1, 2) come back gray as the mean of R, G, B; alpha (channels 2, 4) is
    fully opaque. 16-bit gray gives mode ``I;16``; Pillow has no 16-bit multi-channel modes, so 16-bit
    gray+alpha / RGB / RGBA come back as 8-bit ``LA`` / ``RGB`` / ``RGBA`` (:func:`save_image`
    writes those as true 16-bit PNGs).
    """
    if bit_depth == 16 and channels == 1:
        return Image.fromarray(_quantize(x, 1, 16)[..., 0])
    q = _quantize(x, channels, 8)
    return Image.fromarray(q[..., 0] if channels == 1 else q)  # L, LA, RGB or RGBA from the shape


def _png16_bytes(arr: np.ndarray) -> bytes:
    """Encode [H, W, C] uint16 (C 1..4: gray, gray+alpha, RGB, RGBA) as a 16-bit PNG (filter Up)."""
    h, w, c = arr.shape
    rows = np.ascontiguousarray(arr, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    up = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))  # wraps mod 256
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def save_image(x: torch.Tensor, path: str | os.PathLike, channels: int = 3, bit_depth: int = 8) -> None:
    """Write [1, 3, H, W] in 0..1 atomically (temp file + rename); format from the extension.

    No extension means PNG. 16-bit PNGs are written at 16 bits for every channel count; JPEG gets
    8-bit colour without alpha (quality 95); other formats get what :func:`to_pil` returns.
    """
    Image.init()
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix) if suffix else "PNG"
    if fmt not in Image.SAVE:
        raise ImageError(f"cannot write {path}: unknown image extension {suffix!r}")
    if fmt == "PNG" and bit_depth == 16:
        data = _png16_bytes(_quantize(x, channels, 16))
    else:
        im = to_pil(x, channels, bit_depth)
        if fmt == "JPEG":
            im = im.convert("L" if channels <= 2 else "RGB")
        buf = io.BytesIO()
        try:
            im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        except (OSError, ValueError, KeyError) as e:
            raise ImageError(f"cannot write {path} as {fmt} ({im.mode}): {e}") from e
        data = buf.getvalue()
    atomic_write_bytes(path, data)
