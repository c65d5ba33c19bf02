"""Rate-distortion plots: one PNG, a column per metric, two rows of rate.

* top row: bpp of the coded bitstream only (CADC's entropy-coded payload, the baselines' AV1/VP8/JPEG
  data without container, see :mod:`.payload`): what papers plot; the ``--published`` points go here;
* bottom row: bpp of the whole files, headers and containers included: what a user stores.

Each axis names its rate kind. Lines: CADC families (thick), sweep baselines (resampled solid, plain
dashed); markers only: baselines matched to CADC's file sizes and published points. Hollow
markers: baseline points that could not go down to their target on some images.
"""

from __future__ import annotations

import math
import os
from itertools import cycle
from pathlib import Path
from typing import Any

from .metrics import HIGHER_IS_BETTER
from .results import curve_label, curves

PANELS = {"psnr": "PSNR [dB]", "ms_ssim": "MS-SSIM", "lpips": "LPIPS (Alex)", "dists": "DISTS", "fid": "FID/256"}
RATE_AXES = {
    "bpp_payload": "bpp, payload only (coded bitstream, no headers)",
    "bpp_file": "bpp, whole file (headers and container included)",
}
BASE_COLORS = {"jpeg": "tab:gray", "webp": "tab:green", "avif": "tab:purple"}
CADC_COLORS = {"cadc-aux": "tab:blue", "cadc-generative": "tab:red"}
OTHER_COLORS = ("tab:orange", "tab:cyan", "tab:olive", "tab:pink", "tab:brown", "black")


def _style(curve: str, family_colors: dict[str, str]) -> dict[str, Any]:
    """matplotlib keywords for one curve id."""
    name, _, matched = curve.partition("@")
    base = name.removesuffix("-rs")
    if base in BASE_COLORS:
        resampled = name.endswith("-rs")
        style = {"color": BASE_COLORS[base], "marker": "D" if resampled else "s", "markersize": 4}
        if matched:
            return {**style, "linestyle": "none", "markersize": 7, "marker": "P" if resampled else "X"}
        return {**style, "linestyle": "-" if resampled else "--", "linewidth": 1.3}
    if curve not in family_colors:
        family_colors[curve] = CADC_COLORS.get(curve) or OTHER_COLORS[len(family_colors) % len(OTHER_COLORS)]
    return {"color": family_colors[curve], "marker": "o", "markersize": 8, "linewidth": 2.4, "linestyle": "-"}


def build_figure(results: dict[str, Any], title: str) -> tuple[Any, list[str]]:
    """The RD figure and the metrics that got a column (those with any measured value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    data = {rate: curves(results, rate) for rate in RATE_AXES}
    metrics = [m for m in PANELS if any(p[m] is not None for pts in data["bpp_file"].values() for p in pts)]
    if not metrics:
        return None, []
    published = results.get("published") or []
    groups: dict[str, list[dict[str, Any]]] = {}
    for point in published:
        groups.setdefault(point["method"], []).append(point)
    rates = [p["rate"] for by_curve in data.values() for pts in by_curve.values() for p in pts if p["rate"]]
    rates += [p["bpp"] for p in published]
    log_x = bool(rates) and max(rates) / min(rates) > 8
    plain = FuncFormatter(lambda value, _: f"{value:g}")

    fig, axes = plt.subplots(2, len(metrics), figsize=(5.0 * len(metrics), 9.0), squeeze=False)
    family_colors: dict[str, str] = {}
    published_colors = dict(zip(groups, cycle(OTHER_COLORS), strict=False))
    legend: dict[str, Any] = {}
    for row, (rate, axis_label) in enumerate(RATE_AXES.items()):
        for ax, metric in zip(axes[row], metrics, strict=True):
            for curve, points in data[rate].items():
                shown = [p for p in points if p[metric] is not None and p["rate"] is not None]
                if not shown:
                    continue
                style = _style(curve, family_colors)
                (line,) = ax.plot([p["rate"] for p in shown], [p[metric] for p in shown], **style)
                legend.setdefault(curve_label(curve), line)
                missed = [p for p in shown if not p["reached"]]
                ax.plot(
                    [p["rate"] for p in missed],
                    [p[metric] for p in missed],
                    **{**style, "linestyle": "none", "markerfacecolor": "white", "markeredgewidth": 1.5},
                )
            if rate == "bpp_payload":  # papers report the bitstream's bpp
                for method, points in groups.items():
                    shown = sorted((p for p in points if p[metric] is not None), key=lambda p: p["bpp"])
                    if shown:
                        (line,) = ax.plot(
                            [p["bpp"] for p in shown],
                            [p[metric] for p in shown],
                            color=published_colors[method],
                            marker="x",
                            markersize=7,
                            linestyle=":",
                            linewidth=1.2,
                        )
                        legend.setdefault(f"{method} (published)", line)
            better = "higher is better ↑" if HIGHER_IS_BETTER[metric] else "lower is better ↓"
            ax.set_title(f"{PANELS[metric]}  ({better})", fontsize=11)
            ax.set_xlabel(axis_label)
            ax.set_ylabel(PANELS[metric])
            if log_x:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(plain)
                ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
                ax.xaxis.set_minor_formatter(plain)
            ax.grid(True, which="both", alpha=0.3)
    columns = min(4, len(legend)) or 1
    legend_rows = math.ceil(len(legend) / columns)
    notes = ["hollow marker: the baseline could not go down to its target on some images (more bits than shown)"]
    if published:
        missing = sorted({m for m in PANELS if m not in metrics and any(p[m] is not None for p in published)})
        notes.append(
            "published points: as the papers report them (bitstream bpp, top row only)"
            + (f"; no measured panel for their {', '.join(missing)}" if missing else "")
        )
    unmeasured = [PANELS[m] for m in PANELS if m not in metrics]
    if unmeasured:
        notes.append(f"not measured here: {', '.join(unmeasured)} (see notes in results.json)")
    bottom_inches = 0.28 * legend_rows + 0.2 * len(notes) + 0.3
    fig.set_size_inches(5.0 * len(metrics), 9.0 + bottom_inches)
    fig.legend(
        list(legend.values()),
        list(legend),
        loc="lower center",
        bbox_to_anchor=(0.5, 0.2 * len(notes) / (9.0 + bottom_inches)),
        ncol=columns,
        frameon=False,
        fontsize=9,
    )
    fig.text(0.5, 0.005, "\n".join(notes), ha="center", va="bottom", fontsize=8, color="dimgray")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, bottom_inches / (9.0 + bottom_inches), 1, 0.97))
    return fig, metrics


def plot_rd(results: dict[str, Any], path: str | os.PathLike[str], title: str) -> list[str]:
    """Write the RD figure to ``path``; returns the metrics that got a column ([] writes nothing)."""
    import matplotlib.pyplot as plt

    fig, metrics = build_figure(results, title)
    if fig is None:
        return []
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return metrics
