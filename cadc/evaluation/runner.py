"""``cadc eval``'s pipeline.

1. Baseline sweep (``--sweep``): for every target bpp and image, the classical baseline's best
   (factor, quality) at ≤ the target (:mod:`.resampled`), scored; one curve per baseline over the
   whole range. Rate ladders are cached under ``OUT/baseline_cache`` so reruns cost no encodes.
2. CADC models, grouped into families (one curve each): every image is encoded to a real ``.cadc``
   byte string, decoded (aux decoder and/or the generative decoder) and scored; the ``--baselines``
   are then coded at that image's ``.cadc`` file size ("matched" points).
3. Set-level FID/KID, ``results.json``, ``results.csv``, the RD plot (payload and whole-file bpp,
   with the ``--published`` points), and BD-rate of each CADC curve against the ``--bd-anchor``.
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
from PIL import Image
from tqdm import tqdm

from .. import __version__
from ..codec_io import decode_file, encode_image
from ..container import CadcFile
from ..images import LoadedImage, load_image, save_image
from ..weights import TINY_RANDOM, load_checkpoint
from .backbones import TINY, BackboneError, build_inception
from .baselines import BASELINES, CODECS, available, to_pil_rgb8
from .defaults import BD_ANCHOR, SWEEP_BPP
from .fid import DEFAULT_MIN_PATCHES, PatchFeatures, fid_kid
from .metrics import ImageMetrics
from .plots import plot_rd
from .published import read_published
from .resampled import Choice, LadderCache
from .results import FORMAT, bd_rates_in, mean_of, stage_totals, summary_table, write_csv, write_json

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MODES = ("aux", "generative")
DEFAULT_FAMILY = "cadc"


class EvalError(ValueError):
    """A user-facing problem with the evaluation's inputs (one line, exit status 1)."""


@dataclass
class EvalConfig:
    """Settings of one ``cadc eval`` run (the CLI options of the same names).

    ``families`` maps a family name to its checkpoints (one RD curve per family and mode);
    ``models`` is the unnamed family (curves ``cadc-aux``, ``cadc-generative``).
    """

    data: str
    models: list[str]
    out: str
    families: dict[str, list[str]] = field(default_factory=dict)
    modes: tuple[str, ...] = ("aux",)
    baselines: tuple[str, ...] = ()
    sweep: tuple[str, ...] = ()
    sweep_bpp: tuple[float, ...] = SWEEP_BPP
    published: str | None = None
    bd_anchor: str | None = None
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


def cadc_curve(mode: str, family: str) -> str:
    """Curve id of a CADC family: ``cadc-aux`` (unnamed family) or ``cadc-aux:NAME``."""
    return f"cadc-{mode}" if family == DEFAULT_FAMILY else f"cadc-{mode}:{family}"


class _Run:
    """One curve point under construction: per-image records and the tiles' features for FID/KID."""

    def __init__(self, info: dict[str, Any], patch_extractor: torch.nn.Module | None, device: torch.device) -> None:
        self.info = info
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
        self.families = {DEFAULT_FAMILY: list(config.models)} if config.models else {}
        for name, models in config.families.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name == DEFAULT_FAMILY or name in self.families:
                raise EvalError(f"--family {name!r}: use a new name of letters, digits, '.', '_' or '-'")
            if not models:
                raise EvalError(f"--family {name}: no checkpoints")
            self.families[name] = list(models)
        if not self.families and not config.sweep:
            raise EvalError("pass at least one --model/--family (a checkpoint or tiny-random) or a --sweep")
        if any(not 0 < t < 100 for t in config.sweep_bpp) or (config.sweep and not config.sweep_bpp):
            raise EvalError("--sweep-bpp: give positive bits-per-pixel targets, e.g. 0.01,0.02,0.05")
        self.baselines = self._usable(config.baselines)
        self.sweep = self._usable(config.sweep)
        if config.bd_anchor is not None and config.bd_anchor not in config.sweep:
            raise EvalError(f"--bd-anchor {config.bd_anchor}: the anchor must be one of the --sweep baselines")
        self.published = read_published(config.published) if config.published else None

    def _usable(self, names: tuple[str, ...]) -> list[str]:
        usable = []
        for name in names:
            if name not in BASELINES:
                raise EvalError(f"unknown baseline {name}; choose from {', '.join(BASELINES)}")
            if available(name):
                usable.append(name)
            else:
                note = f"{BASELINES[name].label} skipped: this Pillow build cannot write it (PIL.features)"
                if note not in self.notes:
                    self.notes.append(note)
        return usable

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
        scores_key = f"{sorted(self.metrics.available)}@{self.config.weights_dir}"
        self.ladders = LadderCache(self.out / "baseline_cache", scores_key)
        self.setup_seconds["metric_networks"] = time.perf_counter() - t

    def _new_run(self, **info: Any) -> _Run:
        return _Run(info, self.patch_extractor, self.device)

    def _score(
        self,
        run: _Run,
        x_hat: torch.Tensor | None,
        x: torch.Tensor,
        record: dict[str, Any],
        name: str,
        scores: dict[str, float | None] | None = None,
    ) -> dict[str, float | None]:
        """Score ``x_hat`` (or take ``scores`` already computed for the same pixels) and file the record.
        ``x_hat`` may be None only when ``scores`` is given and neither FID features nor images are kept."""
        t = time.perf_counter()
        if scores is None:
            assert x_hat is not None
            scores = self.metrics(x_hat, x)
        record.update(scores)
        if run.features is not None:
            assert x_hat is not None
            run.features.add(x_hat)
        record["seconds"]["metrics"] = time.perf_counter() - t
        run.records.append(record)
        if self.config.save_images and x_hat is not None:
            save_image(x_hat.clamp(0, 1), self.out / "images" / _slug(run.info["name"]) / f"{name}.png")
        return scores

    # -- classical baselines -------------------------------------------------------------------------
    def _evaluate_choice(
        self, run: _Run, name: str, stem: str, path: Path, x: torch.Tensor, pil: Image.Image, target_bpp: float
    ) -> Choice:
        """Pick baseline ``name``'s best (factor, quality) at ≤ ``target_bpp`` for one image (``x`` [1, 3, H, W]
        in 0..1, ``pil`` the same as 8-bit RGB); score; file it."""
        base = BASELINES[name].base
        ladder = self.ladders.get(base, CODECS[base], stem, pil)
        t = time.perf_counter()
        choice = ladder.select(BASELINES[name].factors, target_bpp)
        search_seconds = time.perf_counter() - t
        scores = ladder.scores.get(choice.key)
        need_pixels = scores is None or run.features is not None or self.config.save_images
        t = time.perf_counter()
        x_hat = ladder.reconstruction(choice.factor, choice.quality) if need_pixels else None
        height, width = x.shape[-2:]
        record = {
            "image": path.name,
            "width": width,
            "height": height,
            "bpp_file": choice.bpp_file,
            "bpp_payload": choice.bpp_payload,
            "factor": choice.factor,
            "quality": choice.quality,
            "coded_width": choice.coded_width,
            "coded_height": choice.coded_height,
            "target_bpp": target_bpp,
            "reached": choice.reached,
            "seconds": {"search": search_seconds, "decode": time.perf_counter() - t},
        }
        ladder.scores[choice.key] = self._score(run, x_hat, x, record, stem, scores)
        return choice

    def _sweep(self, images: list[tuple[Path, str]]) -> list[dict[str, Any]]:
        """One run per (sweep baseline, target); targets that change nothing are dropped (with a note)."""
        targets = sorted(set(self.config.sweep_bpp))
        runs = {
            (name, target): self._new_run(
                name=f"{BASELINES[name].label} ≤{target:g} bpp",
                curve=name,
                codec=BASELINES[name].base,
                mode="sweep",
                model=None,
                point=f"≤{target:g}",
            )
            for name in self.sweep
            for target in targets
        }
        picks: dict[tuple[str, float], list[tuple[int, int]]] = {key: [] for key in runs}
        for path, stem in tqdm(images, desc="baseline sweep", unit="img", disable=not self.config.progress):
            x = load_image(path).tensor
            pil = to_pil_rgb8(x)
            for name in self.sweep:
                for target in targets:
                    choice = self._evaluate_choice(runs[name, target], name, stem, path, x, pil, target)
                    picks[name, target].append((choice.factor, choice.quality))
                self.ladders.save(BASELINES[name].base, stem)
            for ladder in self.ladders.loaded.values():
                ladder.release()
        kept = []
        for name in self.sweep:
            previous, dropped = None, []
            for target in targets:
                if picks[name, target] == previous:
                    dropped.append(f"{target:g}")
                    continue
                previous = picks[name, target]
                kept.append(runs[name, target].finish(self.reference, self.config.fid_min_patches))
            if dropped:
                self.notes.append(f"{name}: targets {', '.join(dropped)} bpp pick the same files as a lower target")
        return kept

    # -- one model point -----------------------------------------------------------------------------
    def _evaluate_model(self, family: str, model: str, images: list[tuple[Path, str]]) -> list[dict[str, Any]]:
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
        self.setup_seconds[f"load_model[{family}/{label}]"] = time.perf_counter() - t

        prefix = "" if family == DEFAULT_FAMILY else f"{family} "
        runs = {
            mode: self._new_run(
                name=f"CADC {mode} [{prefix}{label}]",
                curve=cadc_curve(mode, family),
                codec="cadc",
                mode=mode,
                model=model,
                point=label,
                family=family,
            )
            for mode in self.config.modes
        }
        matched = {
            b: self._new_run(
                name=f"{BASELINES[b].label} @ {prefix}{label}",
                curve=f"{b}@{family}",
                codec=BASELINES[b].base,
                mode="matched",
                model=model,
                point=label,
                family=family,
            )
            for b in self.baselines
        }
        for path, stem in tqdm(images, desc=f"eval {prefix}{label}", unit="img", disable=not self.config.progress):
            image = load_image(path)
            cadc_bpp = self._evaluate_cadc(codec, decoder, image, path, stem, runs)
            pil = to_pil_rgb8(image.tensor)
            for name, run in matched.items():
                self._evaluate_choice(run, name, stem, path, image.tensor, pil, cadc_bpp)
                self.ladders.save(BASELINES[name].base, stem)
            for ladder in self.ladders.loaded.values():
                ladder.release()
        if decoder is not None:
            decoder.free()
        min_patches = self.config.fid_min_patches
        return [run.finish(self.reference, min_patches) for run in (*runs.values(), *matched.values())]

    def _evaluate_cadc(self, codec, decoder, image: LoadedImage, path: Path, stem: str, runs: dict[str, _Run]) -> float:
        """Encode → bytes → decode; score each mode. Returns the whole-file bpp (the matched baselines' target)."""
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
            self._score(runs["aux"], decoded.x_aux, x, record, stem)
        if decoder is not None:
            result = decoder.decode(decoded.latent.l_T, decoded.latent.x_aux, out_hw=(height, width))
            record = {
                **base,
                "caption": result.captions[0] if result.captions else None,
                "seconds": {"encode": encode_seconds, "decode_codec": decode_seconds, **result.seconds},
            }
            self._score(runs["generative"], result.image, x, record, stem)
        return bpp_file

    # -- everything ----------------------------------------------------------------------------------
    def _images(self) -> list[tuple[Path, str]]:
        """(path, stem) per image; the stem names the image's cache file and saved reconstructions."""
        root = Path(self.config.data)
        paths = list_images(root, self.config.limit)
        return [(p, _slug(str(p.relative_to(root).with_suffix("")) if root.is_dir() else p.stem)) for p in paths]

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        images = self._images()
        self.out.mkdir(parents=True, exist_ok=True)
        self._setup_metrics()
        if self.reference is not None:
            for path, _ in images:
                self.reference.add(load_image(path).tensor)
        if TINY_RANDOM in (m for models in self.families.values() for m in models):
            self.notes.append("model tiny-random is an untrained codec: its numbers only test the pipeline")
        runs: list[dict[str, Any]] = self._sweep(images) if self.sweep else []
        for family, models in self.families.items():
            for model in models:
                runs.extend(self._evaluate_model(family, model, images))
        unreached = sorted({r["name"] for r in runs if r["mean"].get("reached_fraction", 1.0) < 1.0})
        if unreached:
            self.notes.append(
                "baselines that could not go down to their target bpp on some images (smallest file used, "
                f"so they spend MORE bits): {', '.join(unreached)}"
            )
        config = {k: v for k, v in asdict(self.config).items() if k not in ("notes", "progress")}
        results: dict[str, Any] = {
            "format": FORMAT,
            "config": {**config, "images": len(images), "baselines_run": self.baselines, "sweep_run": self.sweep},
            "environment": {
                "cadc": __version__,
                "torch": torch.__version__,
                "pillow": PIL.__version__,
                "python": platform.python_version(),
            },
            "notes": self.notes,
            "runs": runs,
            "published": self.published,
            "seconds": {**self.setup_seconds, "total": time.perf_counter() - started},
        }
        anchor = self.config.bd_anchor or (BD_ANCHOR if BD_ANCHOR in self.sweep else None)
        results["bd_rate"] = bd_rates_in(results, anchor) if anchor else []
        write_json(self.out / "results.json", results)
        write_csv(self.out / "results.csv", results)
        if results["bd_rate"]:
            write_json(self.out / "bd_rate.json", {"format": FORMAT, "bd_rate": results["bd_rate"]})
        title = f"{Path(self.config.data).name}: {len(images)} image(s)"
        if self.config.weights_dir == TINY:
            title += "  (TINY RANDOM metric backbones: test only)"
        plotted = plot_rd(results, self.out / "rd_curves.png", title)
        results["files"] = {
            "json": str(self.out / "results.json"),
            "csv": str(self.out / "results.csv"),
            "plot": str(self.out / "rd_curves.png") if plotted else None,
            "bd_rate": str(self.out / "bd_rate.json") if results["bd_rate"] else None,
        }
        results["summary"] = summary_table(results)
        return results
