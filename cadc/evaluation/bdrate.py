"""Bjøntegaard delta rate (BD-rate) with piecewise cubic (PCHIP) interpolation.

As in the common implementations (VCEG-M33 as revised for JVET's CTC spreadsheets): log-rate is
interpolated as a function of quality with a monotone piecewise cubic Hermite polynomial for each
curve, both are integrated exactly over the quality interval the two curves share, and

    BD-rate = exp( (∫ log R_test − ∫ log R_anchor) / (q_high − q_low) ) − 1      [percent]

Negative means the test codec needs fewer bits than the anchor at equal quality. The direction of
the quality metric does not matter (PSNR up, LPIPS down): rate is compared at equal metric values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator


class BDRateError(ValueError):
    """The curves do not allow a BD-rate (too few points, no overlap, bad values)."""


def _log_rate_curve(rates: Sequence[float], quality: Sequence[float], which: str) -> PchipInterpolator:
    r = np.asarray(rates, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1 or len(r) < 2:
        raise BDRateError(f"{which} curve needs at least 2 (rate, quality) points, got {len(r)}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q)) and np.all(r > 0)):
        raise BDRateError(f"{which} curve has non-positive or non-finite values")
    order = np.argsort(q)
    if np.any(np.diff(q[order]) == 0):
        raise BDRateError(f"{which} curve has two points with the same quality")
    return PchipInterpolator(q[order], np.log(r[order]))


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_quality: Sequence[float],
    test_rates: Sequence[float],
    test_quality: Sequence[float],
) -> float:
    """BD-rate of the test curve against the anchor, in percent (rates in any common unit, e.g. bpp)."""
    anchor = _log_rate_curve(anchor_rates, anchor_quality, "anchor")
    test = _log_rate_curve(test_rates, test_quality, "test")
    low = max(anchor.x[0], test.x[0])
    high = min(anchor.x[-1], test.x[-1])
    if not high > low:
        raise BDRateError(
            f"the curves share no quality range (anchor {anchor.x[0]:.4g}..{anchor.x[-1]:.4g}, "
            f"test {test.x[0]:.4g}..{test.x[-1]:.4g})"
        )
    mean_log_ratio = (test.integrate(low, high) - anchor.integrate(low, high)) / (high - low)
    return float(np.expm1(mean_log_ratio) * 100.0)
