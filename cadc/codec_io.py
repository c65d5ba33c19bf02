"""Images ⇄ ``.cadc`` files: padding, the codec, and the container header, in one place.

The CLI and the ComfyUI nodes both go through these functions, so a file written by one is read
by the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .container import CadcFile, CadcFormatError, CadcHeader, DecoderHints, check_model
from .images import LoadedImage, crop_to, pad_to_multiple
from .model import DOWNSCALE, CADCCodec, CompressedImage, DecodedLatent
from .weights import weights_hash

MAX_DECODE_PIXELS = 2**25
"""Default decode limit (33.5 M pixels: 8K UHD fits). The format allows up to 2**28 pixels, but
decoding needs memory in proportion to the size (about 120 MB per megapixel with the ``tiny``
codec's x̂_aux), so a few-byte file claiming a huge image is refused before anything is decoded
unless the caller raises the limit (``max_pixels=None`` / ``cadc decompress --max-pixels 0``)."""


@dataclass(frozen=True)
class EncodedImage:
    """A ``.cadc`` file in memory plus what the encoder knows about it."""

    file: CadcFile
    compressed: CompressedImage
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        return self.file.header.height * self.file.header.width

    @property
    def bits_actual(self) -> int:
        """Bits of the entropy-coded payload (the paper's bpp counts these)."""
        return 8 * self.file.payload_bytes

    @property
    def header_bytes(self) -> int:
        return self.file.header_bytes

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + self.file.payload_bytes

    def report(self) -> dict:
        """The numbers the CLI prints with ``--json``."""
        return {
            "width": self.file.header.width,
            "height": self.file.header.height,
            "bpp": self.bits_actual / self.pixels,
            "bpp_with_header": 8 * self.total_bytes / self.pixels,
            "bits_actual": self.bits_actual,
            "bits_estimated": self.compressed.bits_estimated,
            "header_bytes": self.header_bytes,
            "file_bytes": self.total_bytes,
            "model_id": self.file.header.model_id,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class DecodedImage:
    """Decoder output cropped back to the original size."""

    header: CadcHeader
    latent: DecodedLatent  # at the padded size (l_T is what the generative decoder needs)
    x_aux: torch.Tensor | None  # [1, 3, H, W] in 0..1, cropped
    seconds: dict[str, float] = field(default_factory=dict)


def decoder_hints(codec: CADCCodec) -> DecoderHints:
    """What the generative decoder should use for this codec's files."""
    config = codec.config
    return DecoderHints(
        captioner_id=config.captioner_id,
        fixed_prompt=config.fixed_prompt,
        timestep=config.denoise_timestep,
    )


def encode_tensor(
    codec: CADCCodec,
    x: torch.Tensor,
    channels: int = 3,
    bit_depth: int = 8,
    exact: bool = True,
    provenance: dict | None = None,
) -> list[EncodedImage]:
    """Encode a batch [B, 3, H, W] in 0..1 of any size; one ``.cadc`` file per image."""
    height, width = x.shape[-2:]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with torch.inference_mode():
        padded, (pad_bottom, pad_right) = pad_to_multiple(x, DOWNSCALE)
        compressed = codec.compress(padded, exact=exact, timings=timings)
    timings["total"] = time.perf_counter() - start
    sha256 = weights_hash(codec)
    return [
        EncodedImage(
            file=CadcFile(
                header=CadcHeader(
                    model_id=codec.config.model_id,
                    weights_sha256=sha256,
                    rate_tag=codec.config.rate_tag,
                    height=height,
                    width=width,
                    channels=channels,
                    bit_depth=bit_depth,
                    pad_bottom=pad_bottom,
                    pad_right=pad_right,
                    y_shape=c.y_shape,
                    z_shape=c.z_shape,
                    hints=decoder_hints(codec),
                    provenance=provenance,
                ),
                streams=(c.payload,),
            ),
            compressed=c,
            seconds=dict(timings),
        )
        for c in compressed
    ]


def encode_image(
    codec: CADCCodec, image: LoadedImage, exact: bool = True, provenance: dict | None = None
) -> EncodedImage:
    """Encode one loaded image, recording its channels and bit depth in the header."""
    return encode_tensor(codec, image.tensor, image.channels, image.bit_depth, exact, provenance)[0]


def check_decode_size(header: CadcHeader, max_pixels: int | None = MAX_DECODE_PIXELS) -> None:
    """Raise :class:`CadcFormatError` when the header's image is larger than ``max_pixels``.

    ``None`` or ``0`` means no limit beyond the format's own cap.
    """
    pixels = header.height * header.width
    if max_pixels and pixels > max_pixels:
        raise CadcFormatError(
            f"the file claims a {header.width}x{header.height} image ({pixels / 1e6:.1f} M pixels), over the "
            f"decode limit of {max_pixels / 1e6:.1f} M pixels; raise the limit (cadc decompress --max-pixels N, "
            "0 = none) if you trust the file and have the memory"
        )


def decode_file(
    codec: CADCCodec, cadc_file: CadcFile, aux: bool = True, max_pixels: int | None = MAX_DECODE_PIXELS
) -> DecodedImage:
    """Check that ``codec`` is the file's model, then decode ŷ → l_T → x̂_aux (cropped).

    Every problem with the file (size over ``max_pixels``, another model, latent shapes that do not
    fit the model) raises :class:`CadcFormatError` before anything is decoded. A payload that is
    garbage but consistent with its header decodes to finite l_T and x̂_aux in 0..1.
    """
    header = cadc_file.header
    check_decode_size(header, max_pixels)
    check_model(header, codec.config.model_id, weights_hash(codec))
    try:
        codec._check_shapes(header.y_shape, header.z_shape)
    except ValueError as error:
        raise CadcFormatError(f"bad header: {error}") from error
    timings: dict[str, float] = {}
    start = time.perf_counter()
    latent = codec.decompress(b"".join(cadc_file.streams), header.y_shape, header.z_shape, timings, aux=aux)
    x_aux = crop_to(latent.x_aux, header.height, header.width) if latent.x_aux is not None else None
    timings["total"] = time.perf_counter() - start
    return DecodedImage(header=header, latent=latent, x_aux=x_aux, seconds=timings)
