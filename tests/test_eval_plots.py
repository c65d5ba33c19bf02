"""RD figure: every axis names its bpp kind; published points only on the payload row; BD-rate reports."""

from __future__ import annotations

import math

import pytest

from cadc.evaluation.plots import build_figure, plot_rd
from cadc.evaluation.results import bd_rate_lines, bd_rates_in, curve_label


def _run(curve: str, rate_file: float, psnr: float, ms_ssim: float | None, reached: float = 1.0) -> dict:
    mean = {
        "bpp_file": rate_file,
        "bpp_payload": rate_file * 0.8,
        "psnr": psnr,
        "ms_ssim": ms_ssim,
        "lpips": None,
        "dists": None,
    }
    if not curve.startswith("cadc"):
        mean["reached_fraction"] = reached
    return {"name": f"{curve} {rate_file}", "curve": curve, "point": str(rate_file), "mean": mean, "set": {}}


def _results(cadc_psnr: tuple[float, ...], published: list[dict] | None = None) -> dict:
    anchor = [_run("avif-rs", r, 20 + 10 * r / 0.2, 0.6 + r) for r in (0.01, 0.02, 0.05, 0.1, 0.2)]
    family = [_run("cadc-aux", r, p, 0.7 + r) for r, p in zip((0.012, 0.03, 0.06), cadc_psnr, strict=True)]
    matched = [_run("avif-rs@cadc", 0.012, 20.3, 0.61, reached=0.5)]
    return {"runs": [*anchor, *family, *matched], "published": published}


PUBLISHED = [
    {"method": "StableCodec", "bpp": 0.0058, "psnr": 20.3, "ms_ssim": 0.64, "lpips": 0.31, "dists": None, "fid": None},
    {"method": "StableCodec", "bpp": 0.0108, "psnr": 21.3, "ms_ssim": 0.71, "lpips": 0.24, "dists": None, "fid": None},
]


def test_axes_name_the_bpp_kind_and_published_points_sit_on_the_payload_row(tmp_path) -> None:
    fig, metrics = build_figure(_results((21.0, 22.0, 23.5), PUBLISHED), "test")
    assert metrics == ["psnr", "ms_ssim"]  # LPIPS was not measured here: no column for the published LPIPS
    axes = fig.axes
    assert len(axes) == 4
    payload_row, file_row = axes[:2], axes[2:]
    assert all("payload" in ax.get_xlabel() and "whole file" not in ax.get_xlabel() for ax in payload_row)
    assert all("whole file" in ax.get_xlabel() and "payload" not in ax.get_xlabel() for ax in file_row)

    def published_lines(ax) -> list:
        return [line for line in ax.get_lines() if line.get_marker() == "x"]

    assert all(len(published_lines(ax)) == 1 for ax in payload_row)
    assert all(not published_lines(ax) for ax in file_row)
    (line,) = published_lines(payload_row[0])
    assert list(line.get_xdata()) == [0.0058, 0.0108] and list(line.get_ydata()) == [20.3, 21.3]
    labels = [text.get_text() for legend in fig.legends for text in legend.get_texts()]
    assert "StableCodec (published)" in labels and "AVIF (resampled)" in labels
    assert "AVIF (resampled) at CADC's rate" in labels and "CADC (aux decoder)" in labels
    cadc = next(line for line in file_row[0].get_lines() if line.get_linewidth() > 2 and len(line.get_xdata()))
    assert list(cadc.get_xdata()) == [0.012, 0.03, 0.06]  # whole-file rates on the bottom row
    assert plot_rd(_results((21.0, 22.0, 23.5)), tmp_path / "rd.png", "t") == ["psnr", "ms_ssim"]
    assert (tmp_path / "rd.png").read_bytes()[:4] == b"\x89PNG"


def test_bd_rate_of_a_family_against_the_anchor() -> None:
    # The family's PSNR sits exactly on the anchor's line at 0.8x its rate: BD-rate −20 % for PSNR.
    results = _results((20 + 10 * 0.015 / 0.2, 20 + 10 * 0.0375 / 0.2, 20 + 10 * 0.075 / 0.2))
    for run in results["runs"]:
        if run["curve"] == "cadc-aux":  # rates 0.8x of the anchor rates giving the same PSNR
            run["mean"]["bpp_file"] = 0.8 * (run["mean"]["psnr"] - 20) / 10 * 0.2
            run["mean"]["bpp_payload"] = 0.8 * run["mean"]["bpp_file"]
    reports = bd_rates_in(results, "avif-rs")
    assert [(r["test"], r["rate"]) for r in reports] == [("cadc-aux", "bpp_payload"), ("cadc-aux", "bpp_file")]
    psnr = reports[1]["bd_rate_percent"]["psnr"]
    assert psnr == pytest.approx(-20.0, abs=1.0)  # PCHIP of a straight line in log rate is not exactly linear
    assert "lpips" not in reports[0]["bd_rate_percent"]  # no values anywhere: left out


def test_no_overlap_is_reported_in_one_line_not_extrapolated() -> None:
    results = _results((10.0, 11.0, 12.0))  # far below the anchor's 20.5..30 dB
    reports = bd_rates_in(results, "avif-rs")
    value = reports[0]["bd_rate_percent"]["psnr"]
    assert isinstance(value, str) and "share no quality range" in value and "\n" not in value
    lines = bd_rate_lines(reports)
    assert len(lines) == 2 and all("\n" not in line for line in lines)
    assert "share no quality range" in lines[0] and "payload bpp" in lines[0] and "whole-file bpp" in lines[1]
    assert not any(math.isnan(v) for r in reports for v in r["bd_rate_percent"].values() if isinstance(v, float))


def test_curve_labels() -> None:
    assert curve_label("cadc-aux") == "CADC (aux decoder)"
    assert curve_label("cadc-generative:ugaq") == "CADC (generative) ugaq"
    assert curve_label("webp") == "WebP" and curve_label("jpeg-rs") == "JPEG (resampled)"
    assert curve_label("avif-rs@m0") == "AVIF (resampled) at m0's rate"
