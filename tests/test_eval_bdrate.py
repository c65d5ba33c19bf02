"""BD-rate (Bjøntegaard, piecewise cubic) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cadc.evaluation.bdrate import BDRateError, bd_rate

ANCHOR_RATES = [0.05, 0.1, 0.2, 0.4]
ANCHOR_PSNR = [26.0, 28.5, 30.5, 32.0]
ANCHOR_LPIPS = [0.40, 0.31, 0.25, 0.21]


@pytest.mark.parametrize("factor", [0.8, 1.0, 1.37])
@pytest.mark.parametrize("quality", [ANCHOR_PSNR, ANCHOR_LPIPS], ids=["psnr", "lpips"])
def test_constant_rate_factor_gives_exactly_that_bd_rate(factor: float, quality: list[float]) -> None:
    test_rates = [r * factor for r in ANCHOR_RATES]
    assert bd_rate(ANCHOR_RATES, quality, test_rates, quality) == pytest.approx((factor - 1) * 100, abs=1e-9)


def test_two_point_curves_match_the_closed_form() -> None:
    # anchor: ln R = q/10 − 3 on q ∈ [30, 40]; test: ln R = q/5 − 9 on q ∈ [35, 45] (PCHIP of 2 points is linear).
    # Shared range [35, 40]; mean of (q/5 − 9) − (q/10 − 3) = q/10 − 6 over it is 3.75 − 6 = −2.25.
    anchor_q, test_q = [30.0, 40.0], [35.0, 45.0]
    anchor_r = [math.exp(q / 10 - 3) for q in anchor_q]
    test_r = [math.exp(q / 5 - 9) for q in test_q]
    assert bd_rate(anchor_r, anchor_q, test_r, test_q) == pytest.approx(math.expm1(-2.25) * 100, abs=1e-9)


def test_swapping_anchor_and_test_inverts_the_ratio() -> None:
    test_rates = [0.04, 0.09, 0.17, 0.36]
    forward = bd_rate(ANCHOR_RATES, ANCHOR_PSNR, test_rates, ANCHOR_PSNR) / 100
    backward = bd_rate(test_rates, ANCHOR_PSNR, ANCHOR_RATES, ANCHOR_PSNR) / 100
    assert (1 + forward) * (1 + backward) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("rates", "quality", "message"),
    [
        ([0.1], [30.0], "at least 2"),
        ([0.1, 0.2], [30.0, 30.0], "same quality"),
        ([0.0, 0.2], [30.0, 31.0], "non-positive"),
        ([0.1, 0.2], [50.0, 60.0], "share no quality range"),
    ],
)
def test_unusable_curves_raise(rates: list[float], quality: list[float], message: str) -> None:
    with pytest.raises(BDRateError, match=message):
        bd_rate(ANCHOR_RATES, ANCHOR_PSNR, rates, quality)
