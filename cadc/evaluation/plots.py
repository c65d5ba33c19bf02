"""Rate-distortion plots: one PNG with a panel per metric (bpp on x, metric on y), one line per curve."""

from __future__ import annotations

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

    data = curves(results)
    metrics = [m for m in PANELS if any(p[m] is not None for points in data.values() for p in points)]
    if not metrics:
        return []
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.4), squeeze=False)
    rates = [p["rate"] for points in data.values() for p in points if p["rate"]]
    log_x = bool(rates) and max(rates) / min(rates) > 8
    for ax, metric in zip(axes[0], metrics, strict=True):
        for curve, points in data.items():
            color, marker = STYLES.get(curve, ("black", "x"))
            shown = [p for p in points if p[metric] is not None and p["rate"] is not None]
            if not shown:
                continue
            x = [p["rate"] for p in shown]
            y = [p[metric] for p in shown]
            ax.plot(x, y, color=color, linewidth=1.5, label=CURVE_LABELS.get(curve, curve))
            for p in shown:
                ax.plot(p["rate"], p[metric], marker=marker, markersize=8, color=color,
                        markerfacecolor=color if p["reached"] else "white", markeredgewidth=1.5)
        better = "higher is better ↑" if HIGHER_IS_BETTER[metric] else "lower is better ↓"
        ax.set_title(f"{PANELS[metric]}  ({better})", fontsize=11)
        ax.set_xlabel("bits per pixel (whole file)")
        ax.set_ylabel(PANELS[metric])
        if log_x:
            ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False, fontsize=10)
    fig.suptitle(title, fontsize=12)
    fig.text(0.99, 0.01, "hollow marker: baseline could not reach the CADC bpp (lowest quality shown)",
             ha="right", va="bottom", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return metrics
