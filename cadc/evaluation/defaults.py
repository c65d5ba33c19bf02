"""Defaults shared by the ``eval`` CLI and the runner (no heavy imports, so ``cadc --help`` stays fast)."""

SWEEP_BPP = (0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.15, 0.2)
"""Default targets of ``--sweep``: bits per ORIGINAL pixel of the whole file."""

BD_ANCHOR = "avif-rs"
"""The swept baseline that CADC curves get a BD-rate against when ``--bd-anchor`` is not given."""
