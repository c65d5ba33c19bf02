"""``cadc eval``: rate-distortion evaluation of CADC models against classical codecs.

One module per concern:

* :mod:`.runner` — the pipeline (encode to real ``.cadc`` bytes, decode, score, baselines);
* :mod:`.metrics` — PSNR, MS-SSIM, LPIPS (Alex), DISTS per image;
* :mod:`.fid` — FID/KID on 256×256 patches (FID/256, MS-ILLM protocol);
* :mod:`.backbones` — the metric networks, from local files only (never downloaded);
* :mod:`.baselines` — JPEG / WebP / AVIF through Pillow at a matched bpp;
* :mod:`.bdrate` — Bjøntegaard delta rate (piecewise cubic);
* :mod:`.results`, :mod:`.plots` — ``results.json`` / ``.csv``, RD plots, BD-rate between files;
* :mod:`.cli` — the ``eval`` subcommand.

Submodules are imported on demand so that ``cadc --help`` stays fast.
"""
