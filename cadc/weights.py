"""CADC checkpoints: safetensors files with the config in their metadata.

Layout of a checkpoint file:

* tensors ``codec.<name>`` — the codec's state dict, CDF tables included (``update()`` first);
* tensors ``adapter.<name>`` — optional: the new UNet conv_in and LoRA weights of the one-step
  denoiser (see :mod:`cadc.generative`); base SD-Turbo weights are never stored here;
* metadata ``cadc.format`` = ``"1"``, ``cadc.config`` = CodecConfig JSON, optionally
  ``cadc.adapter`` = adapter JSON (rank, alpha, targets) and ``cadc.provenance`` (free JSON).

Only safetensors is read: no pickle, no ``torch.load``. The weights hash that ``.cadc`` headers
carry is sha256 over the ``codec.*`` tensors (see :func:`weights_hash`).
"""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import CodecConfig, get_preset
from .model import CADCCodec, tensor_key
from .model_lookup import DEFAULT_MODEL_FILE, PACKAGE_MODELS_DIR, TINY_RANDOM, state_hash

FORMAT_VERSION = "1"
TINY_RANDOM_SEED = 20260225
TINY_RANDOM_CONFIG = get_preset("tiny").replace(name=TINY_RANDOM, rate_tag="random")
"""``tiny-random``'s config: the ``tiny`` preset under its own name, so its model id
(``cadc-tiny-random``) is never that of a trained ``tiny``-sized model."""

__all__ = [
    "DEFAULT_MODEL_FILE",
    "FORMAT_VERSION",
    "PACKAGE_MODELS_DIR",
    "TINY_RANDOM",
    "TINY_RANDOM_CONFIG",
    "Checkpoint",
    "CheckpointError",
    "build_tiny_random",
    "default_model_path",
    "load_checkpoint",
    "load_codec",
    "save_codec",
    "weights_hash",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not match its config."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the codec (eval mode, CDF tables built) and the optional adapter."""

    codec: CADCCodec
    adapter_state: dict[str, torch.Tensor] = field(default_factory=dict)
    adapter_config: dict[str, Any] | None = None
    source: str = ""


_HASH_CACHE: weakref.WeakKeyDictionary[CADCCodec, tuple[tuple, bytes]] = weakref.WeakKeyDictionary()


def weights_hash(codec: CADCCodec) -> bytes:
    """sha256 over the codec's state dict: for each tensor, sorted by name, its name, dtype,
    shape and little-endian bytes. CDF tables are included, so a file only decodes with tables
    identical to the encoder's. Cached until a tensor of the codec changes."""
    state = codec.state_dict()
    key = tuple((k, *tensor_key(v)) for k, v in state.items())
    cached = _HASH_CACHE.get(codec)
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = state_hash(state)
    _HASH_CACHE[codec] = (key, digest)
    return digest


def build_tiny_random(config: CodecConfig | None = None, seed: int = TINY_RANDOM_SEED) -> CADCCodec:
    """A deterministic, seeded, untrained codec (:data:`TINY_RANDOM_CONFIG` unless ``config`` is given).

    For tests and demos only: it reconstructs noise-like images, but its bitstreams are real.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        codec = CADCCodec(config or TINY_RANDOM_CONFIG)
    finally:
        torch.random.set_rng_state(generator_state)
    codec.update(force=True)
    return codec.eval()


def save_codec(
    path: str | os.PathLike[str],
    codec: CADCCodec,
    adapter_state: dict[str, torch.Tensor] | None = None,
    adapter_config: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint (atomically). Calls ``codec.update()`` if tables are missing."""
    if codec.entropy_bottleneck._offset.numel() == 0:
        codec.update()
    tensors = {f"codec.{k}": v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
    for key, value in (adapter_state or {}).items():
        name = key if key.startswith("adapter.") else f"adapter.{key}"
        tensors[name] = value.detach().cpu().contiguous()
    metadata = {"cadc.format": FORMAT_VERSION, "cadc.config": codec.config.to_json()}
    if adapter_config is not None:
        metadata["cadc.adapter"] = json.dumps(adapter_config, sort_keys=True)
    if provenance is not None:
        metadata["cadc.provenance"] = json.dumps(provenance, sort_keys=True)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(temporary), metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def default_model_path() -> Path:
    """The model shipped in the repository's ``models/`` folder."""
    return PACKAGE_MODELS_DIR / DEFAULT_MODEL_FILE


def load_checkpoint(source: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> Checkpoint:
    """Load ``tiny-random``, a checkpoint path, or (``None``) the shipped default model."""
    if source is not None and str(source) == TINY_RANDOM:
        return Checkpoint(codec=build_tiny_random().to(device), source=TINY_RANDOM)
    path = Path(source) if source is not None else default_model_path()
    if not path.is_file():
        hint = (
            f"the default model should be at {path}; reinstall the package or pass --model PATH / tiny-random"
            if source is None
            else "pass a CADC .safetensors checkpoint (cadc train writes them) or 'tiny-random'"
        )
        raise CheckpointError(f"CADC checkpoint not found: {path} ({hint})")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {error}") from error
    if metadata.get("cadc.format") != FORMAT_VERSION or "cadc.config" not in metadata:
        raise CheckpointError(f"{path} is not a CADC checkpoint (metadata cadc.format/cadc.config missing)")
    try:
        config = CodecConfig.from_json(metadata["cadc.config"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: bad codec config: {error}") from error
    codec = CADCCodec(config)
    state = {k.removeprefix("codec."): v for k, v in tensors.items() if k.startswith("codec.")}
    _check_state(codec, state, path)
    codec.load_state_dict(state)
    if codec.entropy_bottleneck._offset.numel() == 0:
        raise CheckpointError(f"{path} has no CDF tables; re-save it after codec.update()")
    adapter_state = {k: v for k, v in tensors.items() if k.startswith("adapter.")}
    adapter_config = json.loads(metadata["cadc.adapter"]) if "cadc.adapter" in metadata else None
    return Checkpoint(codec.eval().to(device), adapter_state, adapter_config, str(path))


def load_codec(source: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> CADCCodec:
    """The codec of :func:`load_checkpoint` alone."""
    return load_checkpoint(source, device).codec


def _check_state(codec: CADCCodec, state: dict[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointError naming the first tensors that do not match the config."""
    expected = codec.state_dict()
    resizable = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and not k.endswith(resizable) and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        *(f"missing {k}" for k in missing[:3]),
        *(f"unexpected {k}" for k in unexpected[:3]),
        *mismatched[:3],
    ]
    if problems:
        raise CheckpointError(
            f"{path}: tensors do not match its config {codec.config.name!r}: " + "; ".join(problems)
        )
