"""The results of ``cadc eval``: averages, RD curves, ``results.json`` / ``results.csv``, BD-rate,
and the summary table printed at the end.

``results.json`` layout (``"format": "cadc-eval/1"``)::

    config    the command's settings;  notes: skipped metrics and other caveats;  seconds: setup stages
    runs[]    one per curve point:
        name, curve, codec, mode, model, point (and family for CADC and matched runs), where curve is
            "cadc-aux" / "cadc-generative" (the unnamed family) or "cadc-aux:NAME" (family NAME);
            "avif-rs", "webp", ... (a --sweep baseline: one point per target bpp);
            "avif-rs@FAMILY" (a --baselines baseline coded at each image's .cadc file size)
        images[]  per image: image, width, height,
                  bpp_file (whole file, headers included, bits per ORIGINAL pixel),
                  bpp_payload (the coded bitstream only: CADC's entropy-coded bytes, the baselines'
                  AV1/VP8/JPEG data without container, see payload.py; what papers plot),
                  psnr (dB), ms_ssim, lpips, dists, seconds{stage: s};
                  baselines add factor, quality, coded_width, coded_height, target_bpp, reached;
                  generative runs add caption
        mean      per-image values averaged over the images (null if any image lacks the metric)
        set       fid, kid, kid_std, patches, note (FID/KID on 256x256 patches, see fid.py)
        seconds   per-stage totals over the images (s)
    published  the --published rows (or null)
    bd_rate[]  per CADC curve and rate kind: BD-rate (%) against the anchor curve, per metric
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..images import atomic_write_bytes
from .bdrate import BDRateError, bd_rate

FORMAT = "cadc-eval/1"
AVERAGED = ("bpp_file", "bpp_payload", "psnr", "ms_ssim", "lpips", "dists")
BD_METRICS = ("psnr", "ms_ssim", "lpips", "dists")
RATES = ("bpp_payload", "bpp_file")
CADC_LABELS = {"cadc-aux": "CADC (aux decoder)", "cadc-generative": "CADC (generative)"}
CSV_COLUMNS = (
    "run",
    "curve",
    "codec",
    "mode",
    "point",
    "image",
    "width",
    "height",
    *AVERAGED,
    "factor",
    "quality",
    "coded_width",
    "coded_height",
    "target_bpp",
    "reached",
    "seconds_total",
)


def mean_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of :data:`AVERAGED` over per-image records (None where any record lacks a value)."""
    means: dict[str, Any] = {}
    for key in AVERAGED:
        values = [r.get(key) for r in records]
        means[key] = None if not values or any(v is None for v in values) else sum(values) / len(values)
    if records and "reached" in records[0]:
        means["reached_fraction"] = sum(bool(r["reached"]) for r in records) / len(records)
    return means


def stage_totals(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Sum of each ``seconds`` stage over the records."""
    totals: dict[str, float] = {}
    for record in records:
        for stage, value in record["seconds"].items():
            totals[stage] = totals.get(stage, 0.0) + value
    return totals


def curves(results: dict[str, Any], rate: str = "bpp_file") -> dict[str, list[dict[str, Any]]]:
    """curve → its points sorted by rate: ``{"rate", "point", "reached", <mean metrics>, <set metrics>}``."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in results["runs"]:
        point = {
            **run["mean"],
            **{k: run["set"].get(k) for k in ("fid", "kid")},
            "rate": run["mean"][rate],
            "point": run["point"],
            "reached": run["mean"].get("reached_fraction", 1.0) == 1.0,
        }
        grouped.setdefault(run["curve"], []).append(point)
    return {k: sorted(v, key=lambda p: p["rate"] if p["rate"] is not None else math.inf) for k, v in grouped.items()}


def curve_label(curve: str) -> str:
    """Legend text of a curve id (see the module docstring for the ids)."""
    from .baselines import BASELINES

    name, _, family = curve.partition("@")
    if name in BASELINES:
        label = BASELINES[name].label
        if not family:
            return label
        return f"{label} at CADC's rate" if family == "cadc" else f"{label} at {family}'s rate"
    mode, _, family = curve.partition(":")
    label = CADC_LABELS.get(mode, mode)
    return f"{label} {family}" if family else label


def _bd_between(anchor_points: list[dict[str, Any]], test_points: list[dict[str, Any]], metric: str) -> float | str:
    """BD-rate (%) of test against anchor for one metric, or the reason (one line) it cannot be computed."""
    try:
        if any(p[metric] is None or p["rate"] is None for p in (*anchor_points, *test_points)):
            raise BDRateError(f"{metric} or the rate missing in some points")
        return bd_rate(
            [p["rate"] for p in anchor_points],
            [p[metric] for p in anchor_points],
            [p["rate"] for p in test_points],
            [p[metric] for p in test_points],
        )
    except BDRateError as error:
        return f"not computed: {error}"


def bd_rates_in(results: dict[str, Any], anchor: str, metrics: Iterable[str] = BD_METRICS) -> list[dict[str, Any]]:
    """BD-rate of every CADC curve of ``results`` against its curve ``anchor``, for both rate kinds.

    Only over the quality range the two curves share (nothing is extrapolated); a metric without
    values anywhere is left out, one that cannot be computed maps to the one-line reason.
    """
    reports = []
    for rate in RATES:
        data = curves(results, rate)
        if anchor not in data:
            raise ValueError(f"no curve {anchor!r} in these results; they have {', '.join(data)}")
        for curve in (c for c in data if c.startswith("cadc-")):
            present = [m for m in metrics if any(p[m] is not None for p in (*data[curve], *data[anchor]))]
            reports.append(
                {
                    "test": curve,
                    "anchor": anchor,
                    "rate": rate,
                    "points": {"test": len(data[curve]), "anchor": len(data[anchor])},
                    "bd_rate_percent": {m: _bd_between(data[anchor], data[curve], m) for m in present},
                }
            )
    return reports


def bd_rate_lines(reports: list[dict[str, Any]]) -> list[str]:
    """One line per (curve, rate kind): ``BD-rate cadc-aux vs avif-rs (payload bpp): PSNR -12.3 %, ...``."""
    lines = []
    for report in reports:
        kind = "payload bpp" if report["rate"] == "bpp_payload" else "whole-file bpp"
        values = report["bd_rate_percent"]
        numbers = [f"{m} {v:+.1f} %" for m, v in values.items() if isinstance(v, float)]
        reasons = dict.fromkeys(v for v in values.values() if isinstance(v, str))  # one line per distinct reason
        text = ", ".join(numbers) or "-"
        if reasons:
            text += "; " + "; ".join(f"{', '.join(m for m, v in values.items() if v == r)}: {r}" for r in reasons)
        lines.append(f"BD-rate {report['test']} vs {report['anchor']} ({kind}): {text}")
    return lines


def _finite(value: Any) -> Any:
    """JSON has no inf/NaN: map them to None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(_finite(data), indent=2) + "\n").encode())


def write_csv(path: str | os.PathLike[str], results: dict[str, Any]) -> None:
    """One row per (run, image) plus a ``MEAN`` row per run; empty cells where a value is missing."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for run in results["runs"]:
                common = {k: run[k] for k in ("curve", "codec", "mode", "point")} | {"run": run["name"]}
                for record in run["images"]:
                    writer.writerow(_finite({**common, **record, "seconds_total": sum(record["seconds"].values())}))
                writer.writerow(
                    _finite({**common, **run["mean"], "image": "MEAN", "seconds_total": sum(run["seconds"].values())})
                )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``results.json`` written by ``cadc eval``."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cadc eval results.json (format {FORMAT})")
    return data


def _pick_curve(results: dict[str, Any], name: str | None, path: str) -> str:
    available = list(dict.fromkeys(run["curve"] for run in results["runs"]))
    if name is None:
        cadc = [c for c in available if c.startswith("cadc")]
        if not cadc:
            raise ValueError(f"{path} has no CADC curve; pick one of {available} with --anchor-curve/--test-curve")
        return cadc[0]
    if name not in available:
        raise ValueError(f"{path} has no curve {name!r}; it has {available}")
    return name


def bd_rates(
    anchor_path: str,
    test_path: str,
    anchor_curve: str | None = None,
    test_curve: str | None = None,
    metrics: Iterable[str] = ("lpips", "dists", "psnr", "ms_ssim"),
    rate: str = "bpp_file",
) -> dict[str, Any]:
    """BD-rate (percent, negative = test saves bits) of one curve of ``test_path`` against one of
    ``anchor_path`` for each metric; a metric that cannot be computed maps to the reason (str)."""
    anchor_results, test_results = load_results(anchor_path), load_results(test_path)
    anchor_name = _pick_curve(anchor_results, anchor_curve, anchor_path)
    test_name = _pick_curve(test_results, test_curve, test_path)
    anchor_points = curves(anchor_results, rate)[anchor_name]
    test_points = curves(test_results, rate)[test_name]
    values = {metric: _bd_between(anchor_points, test_points, metric) for metric in metrics}
    return {
        "anchor": {"results": str(anchor_path), "curve": anchor_name, "points": len(anchor_points)},
        "test": {"results": str(test_path), "curve": test_name, "points": len(test_points)},
        "rate": rate,
        "bd_rate_percent": values,
    }


def summary_table(results: dict[str, Any]) -> str:
    """Averages per run as a fixed-width text table (for the terminal)."""

    def cell(value: Any, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"{'run':<40} {'bpp':>8} {'PSNR':>6} {'MS-SSIM':>7} {'LPIPS':>6} {'DISTS':>6} {'FID':>7}  note"]
    for run in results["runs"]:
        m = run["mean"]
        note = ""
        if m.get("reached_fraction", 1.0) < 1.0:
            note = f"target bpp not reached on {1 - m['reached_fraction']:.0%} of images"
        lines.append(
            f"{run['name'][:40]:<40} {cell(m['bpp_file'], 5):>8} {cell(m['psnr'], 2):>6} {cell(m['ms_ssim'], 4):>7} "
            f"{cell(m['lpips'], 4):>6} {cell(m['dists'], 4):>6} {cell(run['set'].get('fid'), 2):>7}  {note}"
        )
    return "\n".join(lines)
