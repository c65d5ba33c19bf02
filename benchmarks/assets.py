"""Paper-size models with random weights, cached on disk so every benchmark run *loads* them.

Nothing here downloads anything. The first call builds, from the configs bundled in
``cadc/configs/sd-turbo/`` and from ``transformers``' default BLIP config (= the layout of
``Salesforce/blip-image-captioning-base``), seeded random models and writes them where the real
loaders read real weights:

* ``<cache>/sd-turbo/`` — a diffusers folder (``unet/``, ``vae/``, ``text_encoder/`` in float16
  safetensors, as the ``.fp16`` variant of ``stabilityai/sd-turbo``; ``tokenizer/`` is the tiny
  BPE vocabulary of :mod:`cadc.testing.tiny_sd`, whose ids fit the 49,408-token embedding);
* ``<cache>/blip/`` — ``BlipForConditionalGeneration`` (ViT-B/16 at 384², 12-layer BERT decoder)
  plus a processor with a synthetic 30,524-entry WordPiece vocabulary. The end-of-caption token is
  suppressed, so every caption runs the full ``MAX_NEW_TOKENS`` greedy steps (an upper bound of
  the caption cost; real BLIP captions stop after ~10-15 tokens);
* ``<cache>/codec-<preset>.safetensors`` — ``build_tiny_random(get_preset(...))`` checkpoints;
* ``<cache>/vae_approx/taesd_decoder.safetensors`` — a seeded random TAESD decoder (diffusers'
  ``AutoencoderTiny`` defaults) in the original layout ComfyUI keeps in ``models/vae_approx``.

Timing a run then includes real loading code paths (safetensors → module, float16 → float32
cast), and the weights are identical across runs and machines (seeded).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from cadc.config import CodecConfig, get_preset

DEFAULT_CACHE = Path(os.environ.get("CADC_BENCH_CACHE", Path.home() / ".cache" / "cadc-bench"))
SEED = 20260
CACHE_VERSION = "1"
"""Bump when the cached layout changes; stale caches are rebuilt."""

PRESETS: dict[str, tuple[str, dict[str, object]]] = {
    "cadc": ("sd-turbo", {}),
    "m0": ("sd-turbo", {"ugaq": False}),
}
"""Benchmark preset → (codec preset, config changes). M0 also decodes without a caption."""


def codec_config(preset: str) -> CodecConfig:
    """The codec config of a benchmark preset (``cadc`` = full CADC, ``m0`` = no UGAQ)."""
    base, changes = PRESETS[preset]
    return get_preset(base).replace(rate_tag=f"random-{preset}", **changes)


def _ready(folder: Path) -> bool:
    marker = folder / ".complete"
    return marker.is_file() and marker.read_text().strip() == CACHE_VERSION


def _finish(tmp: Path, folder: Path) -> Path:
    (tmp / ".complete").write_text(CACHE_VERSION)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def sd_turbo_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """A diffusers SD-Turbo folder with seeded random float16 weights (built once, ~2.6 GB)."""
    folder = cache / "sd-turbo"
    if _ready(folder):
        return folder
    from safetensors.torch import save_file

    from cadc.generative.sd_turbo import CONFIG_DIR
    from cadc.testing.tiny_sd import random_sd_turbo, write_tiny_tokenizer_files

    tmp = cache / f".sd-turbo.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    unet, vae, text_encoder = random_sd_turbo(SEED)
    parts = {"unet": (unet, "diffusion_pytorch_model"), "vae": (vae, "diffusion_pytorch_model"),
             "text_encoder": (text_encoder, "model")}
    for name, (module, stem) in parts.items():
        (tmp / name).mkdir(parents=True)
        shutil.copy(CONFIG_DIR / name / "config.json", tmp / name / "config.json")
        state = {k: v.detach().to(torch.float16).contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / name / f"{stem}.fp16.safetensors"))
    write_tiny_tokenizer_files(tmp / "tokenizer")
    print(f"[assets] built random SD-Turbo in {time.perf_counter() - start:.0f} s", flush=True)
    return _finish(tmp, folder)


def blip_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """A BLIP-base-shaped captioner folder with seeded random weights (built once, ~1 GB)."""
    folder = cache / "blip"
    if _ready(folder):
        return folder
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tmp = cache / f".blip.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = BlipConfig()  # defaults = blip-image-captioning-base (ViT-B/16 @ 384, BERT-base decoder)
    text = config.text_config
    vocab = [f"w{i}" for i in range(text.vocab_size)]
    specials = {text.pad_token_id: "[PAD]", 100: "[UNK]", 101: "[CLS]", text.sep_token_id: "[SEP]",
                103: "[MASK]", text.bos_token_id: "[DEC]", text.bos_token_id + 1: "[ENC]"}
    for index, token in specials.items():
        vocab[index] = token
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab_file=str(tmp / "vocab.txt"), bos_token="[DEC]", model_max_length=512)
    image_processor = BlipImageProcessor(
        size={"height": 384, "width": 384},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 3)
        model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # no special token, in particular no [SEP]: captions run MAX_NEW_TOKENS steps
        specials_ids = sorted(specials)
        model.text_decoder.cls.predictions.bias[specials_ids] = -1e4
    model.save_pretrained(tmp, safe_serialization=True)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
    return _finish(tmp, folder)


def codec_checkpoint(preset: str, cache: Path = DEFAULT_CACHE) -> Path:
    """A seeded random paper-size codec checkpoint for a benchmark preset (built once)."""
    from cadc.weights import build_tiny_random, save_codec

    path = cache / f"codec-{preset}-v{CACHE_VERSION}.safetensors"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        save_codec(path, build_tiny_random(codec_config(preset)))
    return path


def taesd_folder(cache: Path = DEFAULT_CACHE) -> Path:
    """A ``vae_approx`` folder with a seeded random TAESD decoder (original layout, float32, ~5 MB)."""
    folder = cache / "vae_approx"
    path = folder / "taesd_decoder.safetensors"
    if not path.is_file():
        from diffusers import AutoencoderTiny
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED + 4)
            decoder = AutoencoderTiny().decoder
        # diffusers' decoder.layers.{i} is the original's {i+1} (its layer 0 is the tanh clamp)
        state = {}
        for key, value in decoder.state_dict().items():
            index, _, rest = key.removeprefix("layers.").partition(".")
            state[f"{int(index) + 1}.{rest}"] = value.detach().contiguous()
        tmp = folder / f".taesd.tmp-{os.getpid()}"
        save_file(state, str(tmp))
        os.replace(tmp, path)
    return folder


def ensure_all(presets: list[str], cache: Path = DEFAULT_CACHE) -> dict[str, str]:
    """Build whatever is missing; return the paths the child processes load from."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = {"sd_turbo": str(sd_turbo_folder(cache)), "blip": str(blip_folder(cache))}
    paths["taesd"] = str(taesd_folder(cache))
    for preset in presets:
        paths[f"codec_{preset}"] = str(codec_checkpoint(preset, cache))
    return paths
