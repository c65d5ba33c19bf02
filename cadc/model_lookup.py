"""Find the CADC checkpoint a ``.cadc`` file was made with, from the model id and weights hash in its header.

A ``.cadc`` header names its model twice: a short id (``CodecConfig.model_id``, e.g.
``cadc-photo-3``) and the sha256 of the codec weights. :func:`find_model` looks for a checkpoint
with both among folders of ``*.safetensors`` files (searched recursively, in the order given)
and the built-in seeded ``tiny-random`` codec. Where the search runs:

* ``cadc decompress`` / ``cadc info`` (:func:`cli_model_folders`): the shipped ``models/`` folder
  and, when this package sits in ``<ComfyUI>/custom_nodes/``, ComfyUI's ``models/cadc`` plus the
  ``cadc`` entries of its ``extra_model_paths.yaml``;
* the ComfyUI nodes: every folder ComfyUI knows for ``cadc`` (``folder_paths``), which includes
  the shipped ``models/``.

Hashing a checkpoint needs only its ``codec.*`` tensors (no model is built); the hash of each file
is cached per (path, mtime, size), so a second search costs a ``stat`` per file. This module only
needs torch and safetensors: the node pack imports it at start-up.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .config import CodecConfig

TINY_RANDOM = "tiny-random"
"""The seeded untrained codec (``cadc.weights.build_tiny_random``), for tests and demos."""
PACKAGE_DIR = Path(__file__).resolve().parent.parent
PACKAGE_MODELS_DIR = PACKAGE_DIR / "models"
"""The shipped checkpoints (``models/`` beside the ``cadc`` package)."""
DEFAULT_MODEL_FILE = "cadc-photo-3.safetensors"
"""The best shipped model: the default of ``cadc compress``, the demo and the workflow templates."""
CHECKPOINT_SUFFIX = ".safetensors"

_FILE_CACHE: dict[tuple[str, int, int], tuple[str, bytes] | None] = {}
_TINY_RANDOM_KEY: tuple[str, bytes] | None = None


class ModelNotFoundError(ValueError):
    """No known checkpoint has the model id and weights hash a ``.cadc`` file names."""


def state_hash(state: Mapping[str, torch.Tensor]) -> bytes:
    """sha256 over named tensors: for each tensor, sorted by name, ``name|dtype|shape`` and its bytes.

    This is the weights hash ``.cadc`` headers carry (``cadc.weights.weights_hash`` of a codec's
    state dict, CDF tables included).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.digest()


def checkpoint_identity(path: str | os.PathLike[str]) -> tuple[str, bytes] | None:
    """(model id, weights sha256) of a CADC checkpoint file, or None if it is not one.

    Cached per (real path, mtime, size): a changed file is hashed again.
    """
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return None
    key = (real, stat.st_mtime_ns, stat.st_size)
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = _read_identity(real)
    return _FILE_CACHE[key]


def _read_identity(path: str) -> tuple[str, bytes] | None:
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            if "cadc.config" not in metadata:
                return None
            model_id = CodecConfig.from_json(metadata["cadc.config"]).model_id
            prefix = "codec."
            state = {k[len(prefix) :]: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}
    except Exception:  # a damaged or foreign file in a model folder is simply not a candidate
        return None
    return model_id, state_hash(state)


def tiny_random_identity() -> tuple[str, bytes]:
    """(model id, weights sha256) of ``tiny-random`` (built once per process to hash it)."""
    global _TINY_RANDOM_KEY
    if _TINY_RANDOM_KEY is None:
        from .weights import build_tiny_random, weights_hash

        codec = build_tiny_random()
        _TINY_RANDOM_KEY = (codec.config.model_id, weights_hash(codec))
    return _TINY_RANDOM_KEY


def checkpoint_files(folders: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """``*.safetensors`` files under ``folders`` (recursively), folder by folder, sorted by path."""
    seen: set[str] = set()
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob(f"*{CHECKPOINT_SUFFIX}")):
            real = os.path.realpath(path)
            if path.is_file() and real not in seen:
                seen.add(real)
                yield path


@dataclass(frozen=True)
class ModelMatch:
    """Where a file's model was found: a checkpoint path, or ``tiny-random``."""

    source: str
    model_id: str

    @property
    def is_tiny_random(self) -> bool:
        return self.source == TINY_RANDOM


def find_model(
    model_id: str,
    weights_sha256: bytes,
    folders: Iterable[str | os.PathLike[str]],
    put_it: str,
    include_tiny_random: bool = True,
) -> ModelMatch:
    """The checkpoint whose model id and weights hash are the file's.

    Args:
        model_id, weights_sha256: from the ``.cadc`` header.
        folders: where to look, in order of preference.
        put_it: the end of the error line, saying where the user should put the checkpoint.
        include_tiny_random: also consider the built-in ``tiny-random`` codec (last).

    Raises:
        ModelNotFoundError: one line naming the id, the hash, the folders searched and ``put_it``.
    """
    folders = [Path(f) for f in folders]
    wanted = (model_id, bytes(weights_sha256))
    for path in checkpoint_files(folders):
        if checkpoint_identity(path) == wanted:
            return ModelMatch(str(path), model_id)
    if include_tiny_random and tiny_random_identity() == wanted:
        return ModelMatch(TINY_RANDOM, model_id)
    searched = ", ".join(str(f) for f in folders) or "no folders"
    raise ModelNotFoundError(
        f"no CADC checkpoint with model id {model_id!r} and weights sha256 {wanted[1].hex()} in {searched}"
        f"{' or tiny-random' if include_tiny_random else ''}: {put_it}"
    )


def comfyui_root() -> Path | None:
    """The ComfyUI folder this package is installed in (``<ComfyUI>/custom_nodes/<pack>/``), if any."""
    if PACKAGE_DIR.parent.name == "custom_nodes" and (PACKAGE_DIR.parent.parent / "main.py").is_file():
        return PACKAGE_DIR.parent.parent
    return None


def comfyui_cadc_folders(root: Path) -> list[Path]:
    """``<root>/models/cadc`` and the ``cadc`` folders of ``<root>/extra_model_paths.yaml``.

    The YAML file is read as ComfyUI reads it (``base_path`` + one path per line; relative paths
    against the file's folder); it is skipped when PyYAML is not installed or the file is invalid.
    """
    folders = [root / "models" / "cadc"]
    config = root / "extra_model_paths.yaml"
    if not config.is_file():
        return folders
    try:
        import yaml

        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except Exception:  # no PyYAML, or a file ComfyUI itself would reject
        return folders
    for section in data.values() if isinstance(data, dict) else ():
        if not isinstance(section, dict) or not isinstance(section.get("cadc"), str):
            continue
        base = section.get("base_path")
        base_dir = None
        if isinstance(base, str):
            base_dir = os.path.abspath(os.path.join(config.parent, os.path.expandvars(os.path.expanduser(base))))
        for line in section["cadc"].split("\n"):
            if line.strip():
                folders.append(Path(os.path.normpath(os.path.join(base_dir or config.parent, line.strip()))))
    return folders


def cli_model_folders() -> list[Path]:
    """Where ``cadc decompress`` / ``cadc info`` look for a file's model when ``--model`` is not given."""
    root = comfyui_root()
    return [PACKAGE_MODELS_DIR, *(comfyui_cadc_folders(root) if root is not None else [])]


def cli_put_it() -> str:
    """What the CLI's not-found line tells the user to do."""
    root = comfyui_root()
    where = f"{PACKAGE_MODELS_DIR}" + (f" or {root / 'models' / 'cadc'}" if root is not None else "")
    return f"put the checkpoint the file was made with into {where}, or pass --model PATH"
