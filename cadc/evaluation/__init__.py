"""``cadc eval``: rate-distortion evaluation of CADC models against classical codecs.

One module per concern:

* :mod:`.runner` — the pipeline (encode to real ``.cadc`` bytes, decode, score, baselines);
* :mod:`.metrics` — PSNR, MS-SSIM, LPIPS (Alex), DISTS per image;
* :mod:`.fid` — FID/KID on 256×256 patches (FID/256, MS-ILLM protocol);
* :mod:`.backbones` — the metric networks, from local files only (never downloaded);
* :mod:`.baselines` — JPEG / WebP / AVIF through Pillow, plain and resampled (``avif-rs``, ...);
* :mod:`.resampled` — per image the best (downscale factor, quality) at ≤ a target bpp, cached;
* :mod:`.payload` — the coded bitstream inside a Pillow file (the baselines' payload bpp);
* :mod:`.published` — RD points that papers report, from a CSV (``--published``);
* :mod:`.bdrate` — Bjøntegaard delta rate (piecewise cubic);
* :mod:`.results`, :mod:`.plots` — ``results.json`` / ``.csv``, RD plots, BD-rate between files;
* :mod:`.cli`, :mod:`.defaults` — the ``eval`` subcommand and its defaults.

Submodules are imported on demand so that ``cadc --help`` stays fast.
"""
