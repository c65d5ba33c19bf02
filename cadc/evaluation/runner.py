"""``cadc eval``'s pipeline: for every model (λ point) and image, encode to a real ``.cadc`` byte
string, decode it (aux decoder and/or the generative decoder), score it, and score the Pillow
baselines at the same bpp; then set-level FID/KID, ``results.json``, ``results.csv`` and the plot.
"""

from __future__ import annotations

import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import PIL
import torch
from tqdm import tqdm

from .. import __version__
from ..codec_io import decode_file, encode_image
from ..container import CadcFile
from ..images import LoadedImage, load_image, save_image
from ..weights import TINY_RANDOM, load_checkpoint
from .backbones import TINY, BackboneError, build_inception
from .baselines import CODECS, available, match_bpp, to_pil_rgb8
from .fid import DEFAULT_MIN_PATCHES, PatchFeatures, fid_kid
from .metrics import ImageMetrics
from .plots import plot_rd
from .results import FORMAT, mean_of, stage_totals, summary_table, write_csv, write_json

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MODES = ("aux", "generative")


class EvalError(ValueError):
    """A user-facing problem with the evaluation's inputs (one line, exit status 1)."""


@dataclass
class EvalConfig:
    """Settings of one ``cadc eval`` run (the CLI options of the same names)."""

    data: str
    models: list[str]
    out: str
    modes: tuple[str, ...] = ("aux",)
    baselines: tuple[str, ...] = ()
    weights_dir: str | None = None
    sd_turbo: str | None = None
    blip: str | None = None
    device: str = "cpu"
    limit: int | None = None
    fid_min_patches: int = DEFAULT_MIN_PATCHES
    save_images: bool = False
    progress: bool = True
    notes: list[str] = field(default_factory=list)


def list_images(data: str | Path, limit: int | None = None) -> list[Path]:
    """Image files under ``data`` (recursively, sorted; hidden files skipped), or ``data`` itself."""
    root = Path(data)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise EvalError(f"--data {root}: no such folder or file")
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.parts)
    )
    if not files:
        raise EvalError(f"--data {root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files[:limit] if limit else files


def _label(model: str) -> str:
    return TINY_RANDOM if model == TINY_RANDOM else Path(model).stem


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


class _Run:
    """One curve point under construction: per-image records and the tiles' features for FID/KID."""

    def __init__(
        self,
        name: str,
        curve: str,
        codec: str,
        mode: str,
        model: str,
        point: str,
        patch_extractor: torch.nn.Module | None,
        device: torch.device,
    ) -> None:
        self.info = {"name": name, "curve": curve, "codec": codec, "mode": mode, "model": model, "point": point}
        self.records: list[dict[str, Any]] = []
        self.features = PatchFeatures(patch_extractor, device) if patch_extractor is not None else None

    def finish(self, reference: PatchFeatures | None, min_patches: int) -> dict[str, Any]:
        if self.features is None or reference is None:
            fid = {"fid": None, "kid": None, "kid_std": None, "patches": 0, "note": "FID/KID skipped (see notes)"}
        else:
            fid = fid_kid(reference.stacked(), self.features.stacked(), min_patches)
        return {
            **self.info,
            "images": self.records,
            "mean": mean_of(self.records),
            "set": fid,
            "seconds": stage_totals(self.records),
        }


class Evaluator:
    """Runs an :class:`EvalConfig`; :meth:`run` returns the results dict (also written to ``out``)."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.out = Path(config.out)
        self.notes = list(config.notes)
        self.setup_seconds: dict[str, float] = {}
        unknown = [m for m in config.modes if m not in MODES]
        if unknown or not config.modes:
            raise EvalError(f"--mode: choose from {', '.join(MODES)} (got {', '.join(config.modes) or 'nothing'})")
        if "generative" in config.modes and config.sd_turbo is None:
            raise EvalError("--mode generative needs --sd-turbo PATH (or tiny-random); --blip is optional")
        if not config.models:
            raise EvalError("pass at least one --model (a checkpoint or tiny-random)")
        self.baselines = []
        for name in config.baselines:
            if available(name):
                self.baselines.append(name)
            else:
                self.notes.append(f"{CODECS[name].name} skipped: this Pillow build cannot write it (PIL.features)")

    # -- set-up ------------------------------------------------------------------------------------
    def _setup_metrics(self) -> None:
        t = time.perf_counter()
        self.metrics = ImageMetrics(self.config.weights_dir, self.device)
        self.notes.extend(self.metrics.notes)
        self.patch_extractor = None
        if self.config.weights_dir is None:
            self.notes.append("fid/kid skipped: no --weights-dir (or $CADC_EVAL_WEIGHTS) given")
        else:
            try:
                self.patch_extractor = build_inception(self.config.weights_dir).to(self.device)
            except BackboneError as error:
                self.notes.append(str(error))
        if self.config.weights_dir == TINY:
            self.notes.append("metric backbones are TINY RANDOM networks: LPIPS/DISTS/FID/KID are for tests only")
        self.reference = PatchFeatures(self.patch_extractor, self.device) if self.patch_extractor is not None else None
        self.setup_seconds["metric_networks"] = time.perf_counter() - t

    def _score(
        self,
        run: _Run,
        x_hat: torch.Tensor,
        x: torch.Tensor,
        record: dict[str, Any],
        name: str,
        scores: dict[str, float | None] | None = None,
    ) -> dict[str, float | None]:
        """Score ``x_hat`` (or take ``scores`` already computed for the same pixels) and file the record."""
        t = time.perf_counter()
        scores = scores if scores is not None else self.metrics(x_hat, x)
        record.update(scores)
        if run.features is not None:
            run.features.add(x_hat)
        record["seconds"]["metrics"] = time.perf_counter() - t
        run.records.append(record)
        if self.config.save_images:
            save_image(x_hat.clamp(0, 1), self.out / "images" / _slug(run.info["name"]) / f"{name}.png")
        return scores

    # -- one model point -----------------------------------------------------------------------------
    def _evaluate_model(self, model: str, images: list[Path], first: bool) -> list[dict[str, Any]]:
        t = time.perf_counter()
        checkpoint = load_checkpoint(model, device=self.device)
        codec = checkpoint.codec
        label = _label(model)
        if "aux" in self.config.modes and codec.g_aux is None:
            raise EvalError(f"{model} has no aux decoder (trained with aux=False); use --mode generative")
        decoder = None
        if "generative" in self.config.modes:
            from ..generative import GenerativeDecoder  # diffusers/transformers only when needed

            decoder = GenerativeDecoder.from_sources(
                sd_turbo=self.config.sd_turbo,
                blip=self.config.blip,
                latent_channels=codec.config.latent_channels,
                adapter_state=checkpoint.adapter_state or None,
                adapter_config=checkpoint.adapter_config,
                caption=self.config.blip is not None and codec.g_aux is not None,
                device=self.device,
            )
        self.setup_seconds[f"load_model[{label}]"] = time.perf_counter() - t

        def new_run(name: str, curve: str, codec_name: str, mode: str) -> _Run:
            return _Run(name, curve, codec_name, mode, model, label, self.patch_extractor, self.device)

        runs = {mode: new_run(f"CADC {mode} [{label}]", f"cadc-{mode}", "cadc", mode) for mode in self.config.modes}
        baseline_runs = {b: new_run(f"{CODECS[b].name} @ {label}", b, b, "pillow") for b in self.baselines}
        for path in tqdm(images, desc=f"eval {label}", unit="img", disable=not self.config.progress):
            image = load_image(path)
            x = image.tensor
            if first and self.reference is not None:
                self.reference.add(x)
            cadc_bpp = self._evaluate_cadc(codec, decoder, image, path, runs)
            for name, run in baseline_runs.items():
                self._evaluate_baseline(name, run, x, path, cadc_bpp)
        if decoder is not None:
            decoder.free()
        min_patches = self.config.fid_min_patches
        return [run.finish(self.reference, min_patches) for run in (*runs.values(), *baseline_runs.values())]

    def _evaluate_cadc(self, codec, decoder, image: LoadedImage, path: Path, runs: dict[str, _Run]) -> float:
        """Encode → bytes → decode; score each mode. Returns the whole-file bpp (the baselines' target)."""
        x = image.tensor
        height, width = x.shape[-2:]
        t = time.perf_counter()
        encoded = encode_image(codec, image)
        data = encoded.file.to_bytes()
        encode_seconds = time.perf_counter() - t
        t = time.perf_counter()
        decoded = decode_file(codec, CadcFile.from_bytes(data), aux=True)
        decode_seconds = time.perf_counter() - t
        bpp_file = 8 * len(data) / (height * width)
        base = {
            "image": path.name,
            "width": width,
            "height": height,
            "bpp_file": bpp_file,
            "bpp_payload": encoded.bits_actual / (height * width),
        }
        if "aux" in runs:
            record = {**base, "seconds": {"encode": encode_seconds, "decode_codec": decode_seconds}}
            self._score(runs["aux"], decoded.x_aux, x, record, path.stem)
        if decoder is not None:
            result = decoder.decode(decoded.latent.l_T, decoded.latent.x_aux, out_hw=(height, width))
            record = {
                **base,
                "caption": result.captions[0] if result.captions else None,
                "seconds": {"encode": encode_seconds, "decode_codec": decode_seconds, **result.seconds},
            }
            self._score(runs["generative"], result.image, x, record, path.stem)
        return bpp_file

    def _evaluate_baseline(self, name: str, run: _Run, x: torch.Tensor, path: Path, target_bpp: float) -> None:
        codec = CODECS[name]
        height, width = x.shape[-2:]
        t = time.perf_counter()
        cache = self._baseline_cache.setdefault((name, str(path)), {})
        match = match_bpp(codec, to_pil_rgb8(x), target_bpp, cache)
        search_seconds = time.perf_counter() - t
        t = time.perf_counter()
        x_hat = codec.decode(match.data)
        record = {
            "image": path.name,
            "width": width,
            "height": height,
            "bpp_file": match.bpp,
            "bpp_payload": None,
            "quality": match.quality,
            "target_bpp": target_bpp,
            "reached": match.reached,
            "seconds": {"search": search_seconds, "decode": time.perf_counter() - t},
        }
        key = (name, str(path), match.quality)  # λ points below the lowest quality share one file
        self._baseline_scores[key] = self._score(run, x_hat, x, record, path.stem, self._baseline_scores.get(key))

    # -- everything ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        images = list_images(self.config.data, self.config.limit)
        self.out.mkdir(parents=True, exist_ok=True)
        self._setup_metrics()
        self._baseline_cache: dict[tuple[str, str], dict[int, bytes]] = {}
        self._baseline_scores: dict[tuple[str, str, int], dict[str, float | None]] = {}
        if TINY_RANDOM in self.config.models:
            self.notes.append("model tiny-random is an untrained codec: its numbers only test the pipeline")
        runs: list[dict[str, Any]] = []
        for index, model in enumerate(self.config.models):
            runs.extend(self._evaluate_model(model, images, first=index == 0))
        unreached = sorted({r["name"] for r in runs if r["mean"].get("reached_fraction", 1.0) < 1.0})
        if unreached:
            self.notes.append(
                "baselines that could not go down to CADC's bpp on some images (lowest quality used, "
                f"so they spend MORE bits): {', '.join(unreached)}"
            )
        config = {k: v for k, v in asdict(self.config).items() if k not in ("notes", "progress")}
        results: dict[str, Any] = {
            "format": FORMAT,
            "config": {**config, "images": len(images), "baselines_run": self.baselines},
            "environment": {
                "cadc": __version__,
                "torch": torch.__version__,
                "pillow": PIL.__version__,
                "python": platform.python_version(),
            },
            "notes": self.notes,
            "runs": runs,
            "seconds": {**self.setup_seconds, "total": time.perf_counter() - started},
        }
        write_json(self.out / "results.json", results)
        write_csv(self.out / "results.csv", results)
        title = f"{Path(self.config.data).name}: {len(images)} image(s)"
        if self.config.weights_dir == TINY:
            title += "  (TINY RANDOM metric backbones: test only)"
        plotted = plot_rd(results, self.out / "rd_curves.png", title)
        results["files"] = {
            "json": str(self.out / "results.json"),
            "csv": str(self.out / "results.csv"),
            "plot": str(self.out / "rd_curves.png") if plotted else None,
        }
        results["summary"] = summary_table(results)
        return results
