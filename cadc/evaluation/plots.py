"""Rate-distortion plots: one PNG with a panel per metric (bpp on x, metric on y), one line per curve."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .metrics import HIGHER_IS_BETTER
from .results import CURVE_LABELS, curves

PANELS = {"lpips": "LPIPS (Alex)", "dists": "DISTS", "psnr": "PSNR [dB]", "ms_ssim": "MS-SSIM", "fid": "FID/256"}
STYLES = {
    "cadc-aux": ("tab:blue", "o"),
    "cadc-generative": ("tab:red", "*"),
    "jpeg": ("tab:gray", "s"),
    "webp": ("tab:green", "^"),
    "avif": ("tab:purple", "D"),
}


def plot_rd(results: dict[str, Any], path: str | os.PathLike[str], title: str) -> list[str]:
    """Write the RD figure to ``path``; returns the metrics that got a panel (those with any value).

    x: mean bpp of the whole files (headers included); filled markers are points that met their
    target bpp, hollow ones are baselines that could not go that low (lowest quality shown).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    data = curves(results)
    metrics = [m for m in PANELS if any(p[m] is not None for points in data.values() for p in points)]
    if not metrics:
        return []
    columns = 2 if len(metrics) == 4 else min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows + 0.8), squeeze=False)
    rates = [p["rate"] for points in data.values() for p in points if p["rate"]]
    log_x = bool(rates) and max(rates) / min(rates) > 8
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for curve, points in data.items():
            color, marker = STYLES.get(curve, ("black", "x"))
            shown = [p for p in points if p[metric] is not None and p["rate"] is not None]
            if not shown:
                continue
            ax.plot(
                [p["rate"] for p in shown],
                [p[metric] for p in shown],
                color=color,
                marker=marker,
                markersize=8,
                linewidth=1.5,
                label=CURVE_LABELS.get(curve, curve),
            )
            missed = [p for p in shown if not p["reached"]]
            ax.plot(
                [p["rate"] for p in missed],
                [p[metric] for p in missed],
                linestyle="none",
                marker=marker,
                markersize=8,
                color=color,
                markerfacecolor="white",
                markeredgewidth=1.5,
            )
        better = "higher is better ↑" if HIGHER_IS_BETTER[metric] else "lower is better ↓"
        ax.set_title(f"{PANELS[metric]}  ({better})", fontsize=11)
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(PANELS[metric])
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(plain)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.03), ncol=len(labels), frameon=False, fontsize=10
    )
    missing = [PANELS[m] for m in PANELS if m not in metrics]
    footnote = "hollow marker: the baseline could not go down to CADC's bpp (its lowest quality is shown)"
    if missing:
        footnote += f"; no values for {', '.join(missing)} (see notes in results.json)"
    fig.text(0.5, 0.005, footnote, ha="center", va="bottom", fontsize=9, color="dimgray")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.8 / (4.2 * rows + 0.8) + 0.02, 1, 0.96))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return metrics
