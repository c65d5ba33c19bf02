"""Offline loading of SD-Turbo's frozen parts: UNet, VAE, text encoder (OpenCLIP ViT-H) and tokenizer.

Sources (``SDTurboSource(spec)``):

* ``"tiny-random"``: seeded tiny models of the same family (:mod:`cadc.testing.tiny_sd`), for tests
  and demos.
* a diffusers folder (``stabilityai/sd-turbo`` layout): ``unet/``, ``vae/``, ``text_encoder/`` each
  with ``config.json`` (optional: the bundled SD-Turbo configs are used if absent) and
  ``diffusion_pytorch_model[.fp16].safetensors`` / ``model[.fp16].safetensors``; ``tokenizer/`` with
  ``vocab.json`` + ``merges.txt``.
* one single-file ``.safetensors`` checkpoint in the original LDM/SD2 layout, as ComfyUI keeps it
  (``models/checkpoints/sd_turbo.safetensors``): ``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.model.*``. It is converted with diffusers' own
  single-file conversion functions and the configs bundled in ``cadc/configs/sd-turbo/`` (a file
  may carry its own diffusers configs in the metadata key ``cadc.diffusers_configs``, as the
  tiny test checkpoints do). Its tokenizer comes from, in order: a ``tokenizer/`` folder beside the
  file, ComfyUI's ``comfy/sd1_tokenizer/`` when the file sits in ``<ComfyUI>/models/checkpoints/``,
  or the BPE file of an installed ``open_clip_torch``.

Models are built with parameters on the meta device and the weights assigned (no random init), and
returned on the CPU in the file's dtype; the caller moves and casts them. The weights are memory-mapped
from the file (copy-on-write, no read into a second buffer): a float16 UNet costs its file size once,
and its pages go back to the system when the model is released.

Fast-preview VAE decoder (:func:`load_taesd_decoder`): TAESD (madebyollin/taesd) as diffusers'
``AutoencoderTiny``, from a diffusers folder, a single decoder file in the original layout
(``taesd_decoder.safetensors`` / ``.pth`` as ComfyUI keeps it in ``models/vae_approx``) or in diffusers'
layout, or a ``vae_approx`` folder holding ``taesd_decoder.*``.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .clip_tokenizer import find_clip_tokenizer
from .errors import SourceError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "sd-turbo"
TINY = "tiny-random"
CHECKPOINT_HINT = (
    "put the SD-Turbo checkpoint (sd_turbo.safetensors from stabilityai/sd-turbo) at "
    "<ComfyUI>/models/checkpoints/sd_turbo.safetensors, or a diffusers copy of stabilityai/sd-turbo "
    "in a folder, and pass --sd-turbo PATH (or 'tiny-random' for a demo)"
)
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
CONFIGS_METADATA_KEY = "cadc.diffusers_configs"
"""Optional single-file metadata: JSON {"unet": {...}, "vae": {...}, "text_encoder": {...}}."""

_TEXT_PREFIX = "text_model."
"""Files name CLIP text weights ``text_model.*``; transformers 5's CLIPTextModel has no such level."""

M = TypeVar("M", bound=torch.nn.Module)


class SDTurboSource:
    """Where SD-Turbo comes from; each ``load_*`` builds a fresh CPU module.

    Args:
        spec: ``"tiny-random"``, a diffusers folder, or a single-file ``.safetensors`` checkpoint.

    Raises:
        SourceError: the path does not exist or is neither a folder nor a ``.safetensors`` file.
    """

    def __init__(self, spec: str | os.PathLike):
        self.spec = str(spec)
        if self.spec == TINY:
            self.kind, self.path = "tiny", None
            return
        path = Path(spec).expanduser()
        if path.is_dir():
            self.kind = "diffusers"
        elif path.is_file() and path.suffix == ".safetensors":
            self.kind = "single_file"
        elif path.is_file():
            raise SourceError(f"{path} is not a .safetensors file; {CHECKPOINT_HINT}")
        else:
            raise SourceError(f"SD-Turbo not found at {path}; {CHECKPOINT_HINT}")
        self.path = path

    def __repr__(self) -> str:
        return f"SDTurboSource({self.spec!r}, kind={self.kind})"

    # -- components ---------------------------------------------------------------------------
    def load_unet(self) -> UNet2DConditionModel:
        """SD-Turbo's UNet (ε-prediction, 4 → 4 channels)."""
        if self.kind == "tiny":
            from cadc.testing.tiny_sd import tiny_unet

            return tiny_unet()
        config = self._config("unet")
        if self.kind == "diffusers":
            sd = self._folder_weights("unet", "diffusion_pytorch_model")
        else:
            sd = convert_ldm_unet_checkpoint(self._read_prefix(UNET_PREFIX, "UNet"), config)
        return _assign(lambda: UNet2DConditionModel.from_config(config), sd, f"UNet from {self.path}")

    def load_vae(self) -> AutoencoderKL:
        """SD's KL autoencoder (8× downsampling, 4 latent channels, scaling factor 0.18215)."""
        if self.kind == "tiny":
            from cadc.testing.tiny_sd import tiny_vae

            return tiny_vae()
        config = self._config("vae")
        if self.kind == "diffusers":
            sd = self._folder_weights("vae", "diffusion_pytorch_model")
        else:
            sd = convert_ldm_vae_checkpoint(self._read_prefix(VAE_PREFIX, "VAE"), config)
        return _assign(lambda: AutoencoderKL.from_config(config), sd, f"VAE from {self.path}")

    def load_text_encoder(self) -> CLIPTextModel:
        """OpenCLIP ViT-H/14 text tower as diffusers' SD2 ``CLIPTextModel`` (hidden states [B, 77, 1024])."""
        if self.kind == "tiny":
            from cadc.testing.tiny_sd import tiny_text_encoder

            return tiny_text_encoder()
        config = CLIPTextConfig.from_dict(self._config("text_encoder"))
        if self.kind == "diffusers":
            sd = self._folder_weights("text_encoder", "model")
            return _assign(lambda: CLIPTextModel(config), sd, f"text encoder from {self.path}", _TEXT_PREFIX)
        ckpt = self._read_prefix(OPEN_CLIP_PREFIX, "text encoder")
        # OpenCLIP has one more block than SD2 uses (penultimate-layer features); drop it.
        n = config.num_hidden_layers
        ckpt = {
            k: v
            for k, v in ckpt.items()
            if not k.startswith(f"{OPEN_CLIP_PREFIX}transformer.resblocks.")
            or int(k[len(f"{OPEN_CLIP_PREFIX}transformer.resblocks.") :].split(".")[0]) < n
        }
        with _parameters_on_meta():
            model = CLIPTextModel(config)
        sd = convert_open_clip_checkpoint(model, ckpt, prefix=OPEN_CLIP_PREFIX)
        sd.pop("text_projection.weight", None)
        return _assign(lambda: model, sd, f"text encoder from {self.path}", _TEXT_PREFIX)

    def load_tokenizer(self) -> CLIPTokenizer:
        """CLIP BPE tokenizer (pad "!", 77 tokens); see :mod:`cadc.generative.clip_tokenizer`."""
        if self.kind == "tiny":
            from cadc.testing.tiny_sd import tiny_tokenizer

            return tiny_tokenizer()
        assert self.path is not None
        if self.kind == "diffusers":
            folders = [self.path / "tokenizer"]
        else:
            folders = [self.path.parent / "tokenizer"]
            if self.path.parent.name == "checkpoints" and self.path.parent.parent.name == "models":
                folders.append(self.path.parent.parent.parent / "comfy" / "sd1_tokenizer")
        tok = find_clip_tokenizer(folders)
        if tok is None:
            raise SourceError(
                "SD-Turbo's CLIP tokenizer was not found: put vocab.json and merges.txt (from "
                f"stabilityai/sd-turbo's tokenizer/ folder) in {folders[0]}, or install the "
                "open_clip_torch package, which ships the same vocabulary"
            )
        return tok

    # -- helpers ------------------------------------------------------------------------------
    def _config(self, name: str) -> dict:
        """Diffusers/transformers config dict: the folder's own, the file's metadata, or bundled."""
        if self.kind == "diffusers" and (self.path / name / "config.json").is_file():
            return _read_json(self.path / name / "config.json")
        if self.kind == "single_file":
            with safe_open(self.path, framework="pt") as f:
                meta = (f.metadata() or {}).get(CONFIGS_METADATA_KEY)
            if meta:
                return json.loads(meta)[name]
        return _read_json(CONFIG_DIR / name / "config.json")

    def _folder_weights(self, sub: str, stem: str) -> dict[str, torch.Tensor]:
        folder = self.path / sub
        for fname in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
            if (folder / fname).is_file():
                return _read_safetensors(folder / fname)
        raise SourceError(
            f"{folder / (stem + '.safetensors')} is missing: copy {sub}/{stem}.safetensors (or the .fp16 "
            f"variant) of stabilityai/sd-turbo there; only safetensors weights are read"
        )

    def _read_prefix(self, prefix: str, what: str) -> dict[str, torch.Tensor]:
        sd = _read_safetensors(self.path, prefix)
        if not sd:
            raise SourceError(
                f"{self.path} has no {what} weights (no '{prefix}*' tensors): it is not a full SD 2.x / "
                f"SD-Turbo checkpoint; {CHECKPOINT_HINT}"
            )
        return sd


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_safetensors(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of ``path`` whose names start with ``prefix`` (names kept), memory-mapped.

    The file is first opened with ``safetensors`` (which validates the header: offsets inside the
    file, no overlaps), then mapped copy-on-write: the tensors share the file's pages (nothing is
    read until used, nothing is copied unless written) and keep the mapping alive while they live.
    Tensors of dtypes ``safetensors`` names but :data:`_SAFETENSORS_DTYPES` lacks, or whose offset is
    not aligned to their element size, are read by ``safetensors`` instead.
    """
    with safe_open(path, framework="pt") as f:
        names = [k for k in f.keys() if k.startswith(prefix)]
        with open(path, "rb") as raw:
            header_len = int.from_bytes(raw.read(8), "little")
            header = json.loads(raw.read(header_len))
            mapped = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_COPY) if names else None
        tensors = {}
        for name in names:
            info = header[name]
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            start, end = (8 + header_len + offset for offset in info["data_offsets"])
            if dtype is None or start % dtype.itemsize or end == start:
                tensors[name] = f.get_tensor(name)
                continue
            flat = torch.frombuffer(mapped, dtype=dtype, count=(end - start) // dtype.itemsize, offset=start)
            tensors[name] = flat.reshape(info["shape"])
    return tensors


TAESD_DECODER_NAMES = ("taesd_decoder.safetensors",)
"""File names of the SD 1/2 TAESD decoder in ComfyUI's ``models/vae_approx``."""
TAESD_HINT = (
    "download taesd_decoder.safetensors from madebyollin/taesd into <ComfyUI>/models/vae_approx "
    "and pass that folder or file, or pass a diffusers copy of madebyollin/taesd"
)


def load_taesd_decoder(spec: str | os.PathLike) -> AutoencoderTiny:
    """TAESD's decoder as diffusers' ``AutoencoderTiny`` (encoder absent), on the CPU in the file's dtype.

    Args:
        spec: a diffusers ``AutoencoderTiny`` folder, a ``vae_approx`` folder with ``taesd_decoder.*``,
            or one ``.safetensors`` decoder file (pickled checkpoints are refused: weights are
            safetensors only), in the original layout (``1.weight``, ``3.conv.0.weight``, …) or
            diffusers' (``decoder.layers.*``).

    Raises:
        SourceError: the path is missing, holds no TAESD decoder, or its tensors do not fit TAESD.
    """
    path = Path(spec).expanduser()
    config: dict = {}
    if path.is_dir() and (path / "config.json").is_file():
        config = _read_json(path / "config.json")
        files = [path / f for f in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")]
    elif path.is_dir():
        files = [path / name for name in TAESD_DECODER_NAMES]
    else:
        files = [path]
    weights = next((f for f in files if f.is_file()), None)
    if weights is None:
        raise SourceError(f"no TAESD decoder at {path}: {TAESD_HINT}")
    if weights.suffix != ".safetensors":
        raise SourceError(f"{weights} is not a .safetensors file (pickled weights are never loaded): {TAESD_HINT}")
    state = _read_safetensors(weights)
    decoder_state = _taesd_decoder_state(state, weights)
    with _parameters_on_meta():
        model = AutoencoderTiny.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    try:
        model.decoder.load_state_dict(decoder_state, strict=True, assign=True)
    except RuntimeError as e:
        raise SourceError(f"{weights}: the tensors do not fit TAESD's decoder: {str(e).splitlines()[0]} ...") from e
    model.encoder = None  # never used for decoding; its parameters were never materialised
    return model.eval().requires_grad_(False)


def _taesd_decoder_state(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """``layers.*`` names of ``DecoderTiny`` from the original TAESD layout or diffusers' layout."""
    if any(k.startswith("decoder.layers.") for k in state):
        return {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.layers.")}
    out = {}
    for key, value in state.items():
        index, _, rest = key.partition(".")
        if not index.isdigit() or int(index) < 1 or not rest:
            raise SourceError(f"{source} does not look like a TAESD decoder (tensor {key!r}): {TAESD_HINT}")
        out[f"layers.{int(index) - 1}.{rest}"] = value  # the original's layer 0 is the tanh clamp
    return out


def fit_prefix(state: dict[str, torch.Tensor], model_keys: Iterable[str], prefix: str) -> dict[str, torch.Tensor]:
    """Add or strip ``prefix`` on every name of ``state`` so it matches ``model_keys``' convention."""
    want = any(k.startswith(prefix) for k in model_keys)
    out = {}
    for k, v in state.items():
        has = k.startswith(prefix)
        out[prefix + k if want and not has else k[len(prefix) :] if has and not want else k] = v
    return out


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create module parameters on the meta device (buffers stay real): no time spent on random init."""
    register = torch.nn.Module.register_parameter

    def on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


def _assign(build: Callable[[], M], state: dict[str, torch.Tensor], what: str, optional_prefix: str = "") -> M:
    """Build a module without initialising its parameters, then assign ``state`` strictly.

    ``optional_prefix`` is added to or stripped from the names in ``state`` to match the module.
    """
    with _parameters_on_meta():
        model = build()
    if optional_prefix:
        state = fit_prefix(state, model.state_dict().keys(), optional_prefix)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise SourceError(
            f"{what}: the weights do not fit the SD-Turbo (SD 2.1-base) architecture: "
            f"{str(e).splitlines()[0]} ...; {CHECKPOINT_HINT}"
        ) from e
    return model.eval().requires_grad_(False)
