"""UGAQ's UP(ẑ) lies on the grid h_s uses, for every y size (issue 13, item 4).

h_a sees y replicate-padded to a multiple of 4 and h_s upsamples ẑ ×4 and is cropped to y's
size, so z element k stands for y elements 4k … 4k+3 whatever y's size. UP must follow that
grid; ``interpolate(size=y.shape)`` stretched z over y instead when y's sides are not multiples
of 4. For multiples of 4 the result must stay bit-identical to that formula (trained models).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from cadc.config import get_preset
from cadc.model import HYPER_DOWNSCALE, CADCCodec, hyper_grid
from cadc.ugaq import HYPER_SCALE, UncertaintyQuantizer, upsample_to_y_grid

SIDES = range(1, 18)


def textbook_bilinear_x4(z: np.ndarray, height: int, width: int) -> np.ndarray:
    """Half-pixel-centred bilinear ×4 upsampling of z [C, zh, zw], top-left height × width.

    Output index i samples z at s = (i + 0.5)/4 − 0.5, clamped to [0, n − 1], between
    floor(s) and floor(s) + 1 (the last sample repeated at the border).
    """

    def taps(count: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = np.clip((np.arange(count) + 0.5) / 4 - 0.5, 0, n - 1)
        lo = np.floor(s).astype(int)
        return lo, np.minimum(lo + 1, n - 1), s - lo

    r0, r1, fr = taps(height, z.shape[1])
    c0, c1, fc = taps(width, z.shape[2])
    rows = z[:, r0] * (1 - fr)[None, :, None] + z[:, r1] * fr[None, :, None]
    return rows[:, :, c0] * (1 - fc)[None, None, :] + rows[:, :, c1] * fc[None, None, :]


def old_up(z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The formula before the fix: z stretched over y's size."""
    return F.interpolate(z, size=(height, width), mode="bilinear", align_corners=False)


def test_hyper_scale_is_the_codec_s():
    assert HYPER_SCALE == HYPER_DOWNSCALE


@pytest.mark.parametrize("height", SIDES)
def test_up_matches_the_textbook_x4_grid(height):
    generator = torch.Generator().manual_seed(height)
    for width in SIDES:
        zh, zw = hyper_grid(height, width)
        z = torch.randn(1, 3, zh, zw, generator=generator, dtype=torch.float64)
        expected = textbook_bilinear_x4(z[0].numpy(), height, width)
        got = upsample_to_y_grid(z, height, width)[0].numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=f"{height}x{width}")


def test_linear_ramp_lands_where_h_s_puts_it():
    """Bilinear interpolation reproduces a ramp z[k] = k exactly: y column i must read
    clamp((i + 0.5)/4 − 0.5, 0, zw − 1), i.e. z cell i // 4, for every width."""
    misaligned = []
    for width in SIDES:
        zw = hyper_grid(1, width)[1]
        ramp = torch.arange(zw, dtype=torch.float64).reshape(1, 1, 1, zw)
        expected = np.clip((np.arange(width) + 0.5) / 4 - 0.5, 0, zw - 1)
        np.testing.assert_allclose(upsample_to_y_grid(ramp, 1, width)[0, 0, 0].numpy(), expected, atol=1e-12)
        if not np.allclose(old_up(ramp, 1, width)[0, 0, 0].numpy(), expected, atol=1e-9):
            misaligned.append(width)
    # The old formula was wrong exactly there (a single z column is constant, so w < 4 is fine).
    assert misaligned == [w for w in SIDES if w % 4 and w > 4]


def test_cropping_y_does_not_move_z():
    """UP on an h × w y is the top-left crop of UP on the padded 4⌈h/4⌉ × 4⌈w/4⌉ y h_a sees."""
    z = torch.randn(2, 5, 3, 2, generator=torch.Generator().manual_seed(0))
    full = upsample_to_y_grid(z, 12, 8)
    for height, width in [(9, 5), (10, 7), (11, 6), (12, 8)]:
        assert torch.equal(upsample_to_y_grid(z, height, width), full[..., :height, :width])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(4, 4), (8, 12), (12, 8), (16, 20)])
def test_multiples_of_four_are_bit_identical_to_before(size, dtype):
    height, width = size
    generator = torch.Generator().manual_seed(height * 100 + width)
    torch.manual_seed(1)
    quantizer = UncertaintyQuantizer(6, 4, 8).to(dtype)
    with torch.no_grad():  # a non-trivial f_u (its last layer starts at zero)
        quantizer.f_u[-1].weight.normal_(0, 0.3)
    y = torch.randn(2, 6, height, width, generator=generator, dtype=dtype) * 3
    z = torch.randn(2, 4, height // 4, width // 4, generator=generator, dtype=dtype) * 3
    before = 1.0 + F.softplus(quantizer.f_u(y - old_up(quantizer.project(z), height, width)))
    assert torch.equal(quantizer.step(y, z), before)


def test_codec_forward_on_a_non_multiple_of_four_y():
    """A 320×384 image gives y 5×6 and ẑ 2×2; the codec's m is f_u(y − UP(ẑ)) with the textbook UP."""
    codec = CADCCodec(get_preset("tiny")).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        codec.ugaq.f_u[-1].weight.normal_(0, 0.3)
        x = torch.rand(1, 3, 320, 384)
        out = codec(x)
        y = codec.g_a(x)
        z = codec.h_a(F.pad(y, (0, 2, 0, 3), mode="replicate"))
        medians = codec.entropy_bottleneck.quantiles[:, 0, 1].reshape(1, -1, 1, 1)
        z_hat = torch.round(z - medians) + medians
        up = textbook_bilinear_x4(codec.ugaq.project(z_hat)[0].double().numpy(), 5, 6)
        expected = 1.0 + F.softplus(codec.ugaq.f_u(y - torch.from_numpy(up).float()[None]))
    assert y.shape[-2:] == (5, 6) and z.shape[-2:] == (2, 2)
    torch.testing.assert_close(out["m"], expected, rtol=0, atol=1e-5)
