"""The evaluation's metric values against independent implementations, on real photographs.

Originals are scikit-image's sample photographs (shipped in its wheel); distorted versions are
Pillow JPEG round trips at several qualities, a Gaussian blur and additive noise, so the values
span the range an evaluation sees (PSNR ≈ 20-40 dB, MS-SSIM ≈ 0.8-1).

* PSNR of :class:`cadc.evaluation.metrics.ImageMetrics` = ``skimage.metrics.peak_signal_noise_ratio``
  and the textbook 10·log10(255² / MSE) in float64.
* SSIM (the per-scale term of MS-SSIM, computed by pytorch-msssim) = ``skimage.metrics.structural_similarity``
  with the Wang et al. 2004 settings (11-tap Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03).
* MS-SSIM of ImageMetrics (pytorch-msssim) = the textbook formula (Wang, Simoncelli & Bovik 2003)
  written out below in float64, per colour channel, averaged. (torchmetrics is no second opinion
  here: its SSIM differs from scikit-image's by ~2e-3 on these images.)
* BD-rate of :func:`cadc.evaluation.bdrate.bd_rate` = the ``bjontegaard`` package's PCHIP BD-rate
  (which matches the JVET CTC spreadsheet to 10 decimals, per its documentation).
"""

from __future__ import annotations

import io
import math

import bjontegaard
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy.ndimage import correlate1d
from skimage import data as skimage_data
from skimage import metrics as skimage_metrics

from cadc.evaluation.bdrate import bd_rate
from cadc.evaluation.metrics import ImageMetrics

PHOTOS = ("astronaut", "coffee", "chelsea")


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def blurred(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(2)))


def noisy(image: np.ndarray) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0, 12, image.shape)
    return np.clip(image + noise, 0, 255).round().astype(np.uint8)


DISTORTIONS = {"jpeg10": lambda im: jpeg(im, 10), "jpeg50": lambda im: jpeg(im, 50), "jpeg90": lambda im: jpeg(im, 90),
               "blur": blurred, "noise": noisy}  # fmt: skip


def photo(name: str) -> np.ndarray:
    """[H, W, 3] uint8, cropped to even sides (every MS-SSIM scale then halves exactly)."""
    image = getattr(skimage_data, name)()
    return np.ascontiguousarray(image[: image.shape[0] // 32 * 32, : image.shape[1] // 32 * 32, :3])


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def metrics() -> ImageMetrics:
    return ImageMetrics(None)


@pytest.fixture(scope="module", params=PHOTOS)
def pairs(request) -> list[tuple[str, np.ndarray, np.ndarray]]:
    original = photo(request.param)
    return [(name, original, distort(original)) for name, distort in DISTORTIONS.items()]


def test_psnr_equals_scikit_image_and_the_textbook_formula(metrics, pairs):
    values = []
    for name, original, distorted in pairs:
        ours = metrics(as_tensor(distorted), as_tensor(original))["psnr"]
        reference = skimage_metrics.peak_signal_noise_ratio(original, distorted, data_range=255)
        mse = np.mean((original.astype(np.float64) - distorted.astype(np.float64)) ** 2)
        assert ours == pytest.approx(reference, abs=2e-4), name
        assert ours == pytest.approx(10 * math.log10(255**2 / mse), abs=2e-4), name
        values.append(ours)
    assert min(values) < 28 and max(values) > 33  # the distortions span the usual range


def test_ssim_term_equals_scikit_image(pairs):
    from pytorch_msssim import ssim

    for name, original, distorted in pairs:
        ours = float(ssim(as_tensor(distorted).double(), as_tensor(original).double(), data_range=1.0))
        reference = skimage_metrics.structural_similarity(
            original.astype(np.float64) / 255, distorted.astype(np.float64) / 255, data_range=1.0,
            channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )  # fmt: skip
        assert ours == pytest.approx(reference, abs=1e-5), name  # pytorch-msssim's window is float32


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""β_1..β_5 of Wang, Simoncelli & Bovik (2003), Table 1 (the values every implementation uses)."""


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    window = np.exp(-(offsets**2) / (2 * sigma**2))
    return window / window.sum()


def filtered(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable correlation with ``window``, keeping only the fully covered ("valid") pixels."""
    radius = len(window) // 2
    out = correlate1d(correlate1d(image, window, axis=0), window, axis=1)
    return out[radius:-radius, radius:-radius]


def textbook_ms_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003) of two [H, W, 3] images in 0..1, float64: per channel the product
    of the contrast-structure terms cs_1..cs_4 and the SSIM at scale 5, each raised to β_j, with a
    2×2 average between scales; then the mean over channels. K1 = 0.01, K2 = 0.03, peak 1."""
    c1, c2 = 0.01**2, 0.03**2
    window = gaussian_window()
    values = []
    for channel in range(3):
        a, b = x[..., channel].astype(np.float64), y[..., channel].astype(np.float64)
        value = 1.0
        for scale, weight in enumerate(MS_SSIM_WEIGHTS):
            mu_a, mu_b = filtered(a, window), filtered(b, window)
            var_a = filtered(a * a, window) - mu_a**2
            var_b = filtered(b * b, window) - mu_b**2
            cov = filtered(a * b, window) - mu_a * mu_b
            cs = (2 * cov + c2) / (var_a + var_b + c2)
            if scale < len(MS_SSIM_WEIGHTS) - 1:
                value *= max(cs.mean(), 0.0) ** weight
                a = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4
                b = (b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]) / 4
            else:
                luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
                value *= max((luminance * cs).mean(), 0.0) ** weight
        values.append(value)
    return float(np.mean(values))


def test_textbook_ms_ssim_reduces_to_scikit_images_ssim_at_one_scale(pairs):
    """The reference below is right where scikit-image can vouch for it: its last-scale term is SSIM."""
    window = gaussian_window()
    _, original, distorted = pairs[0]
    a, b = original[..., 0] / 255.0, distorted[..., 0] / 255.0
    mu_a, mu_b = filtered(a, window), filtered(b, window)
    var_a, var_b = filtered(a * a, window) - mu_a**2, filtered(b * b, window) - mu_b**2
    cov = filtered(a * b, window) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    reference = skimage_metrics.structural_similarity(
        a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim_map.mean() == pytest.approx(reference, abs=1e-12)


def test_ms_ssim_equals_the_textbook_formula(metrics, pairs):
    values = []
    for name, original, distorted in pairs:
        ours = metrics(as_tensor(distorted), as_tensor(original))["ms_ssim"]
        reference = textbook_ms_ssim(distorted / 255.0, original / 255.0)
        assert ours == pytest.approx(reference, abs=2e-5), name
        values.append(ours)
    assert min(values) < 0.95 and max(values) > 0.98


def test_identical_images_score_perfectly(metrics):
    x = as_tensor(photo("astronaut"))
    scores = metrics(x, x)
    assert scores["psnr"] == math.inf or scores["psnr"] > 100
    assert scores["ms_ssim"] == pytest.approx(1.0, abs=1e-6)


# (rates, quality) curves shaped like real codec curves: an anchor and tests that are better,
# worse, crossing, and covering only part of the anchor's quality range.
ANCHOR = ([0.05, 0.1, 0.2, 0.4], [26.0, 28.5, 30.5, 32.0])
TESTS = {
    "better": ([0.04, 0.085, 0.17, 0.36], [26.2, 28.6, 30.9, 32.3]),
    "worse": ([0.07, 0.13, 0.24, 0.5], [25.5, 28.0, 30.2, 31.9]),
    "crossing": ([0.03, 0.09, 0.25, 0.6], [25.0, 28.7, 30.6, 33.0]),
    "part": ([0.12, 0.2, 0.3], [29.0, 30.0, 31.0]),
    "five-points": ([0.045, 0.07, 0.11, 0.19, 0.33], [26.1, 27.4, 28.9, 30.4, 31.8]),
}


@pytest.mark.parametrize("test", list(TESTS))
def test_bd_rate_equals_the_bjontegaard_package(test):
    rates, quality = TESTS[test]
    ours = bd_rate(*ANCHOR, rates, quality)
    reference = bjontegaard.bd_rate(
        *ANCHOR, rates, quality, method="pchip", require_matching_points=False, min_overlap=0
    )
    assert ours == pytest.approx(reference, abs=1e-9)


def test_bd_rate_of_a_lower_is_better_metric_equals_the_package_on_its_negation():
    """LPIPS-like curves (quality falls as rate rises): the package needs a rising metric."""
    anchor_lpips = [0.40, 0.31, 0.25, 0.21]
    test_rates, test_lpips = [0.04, 0.09, 0.18, 0.38], [0.41, 0.30, 0.24, 0.205]
    ours = bd_rate(ANCHOR[0], anchor_lpips, test_rates, test_lpips)
    reference = bjontegaard.bd_rate(
        ANCHOR[0], [-v for v in anchor_lpips], test_rates, [-v for v in test_lpips], method="pchip"
    )
    assert ours == pytest.approx(reference, abs=1e-9)
    assert ours < 0
