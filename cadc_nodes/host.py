"""The few ComfyUI services the nodes use, imported lazily.

Inside ComfyUI these are ``folder_paths``, ``comfy.utils.ProgressBar`` and
``comfy.model_management``. Outside it (unit tests, plain Python) progress and interruption
checks do nothing, and ``folder_paths`` must be provided by the caller (tests put a stand-in
module into ``sys.modules``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

from cadc.weights import PACKAGE_MODELS_DIR

CODEC_FOLDER = "cadc"
"""ComfyUI model folder for CADC checkpoints (``models/cadc``; the pack's ``models/`` too)."""
CAPTIONER_FOLDER = "blip"
"""ComfyUI model folder for BLIP captioners saved with ``save_pretrained`` (one folder each)."""


def folder_paths() -> ModuleType:
    """ComfyUI's ``folder_paths`` module (ImportError outside ComfyUI)."""
    return importlib.import_module("folder_paths")


def register_model_folders() -> None:
    """Register the ``cadc`` and ``blip`` model folders; a no-op outside ComfyUI."""
    try:
        paths = folder_paths()
    except ImportError:
        return
    if CODEC_FOLDER not in paths.folder_names_and_paths:
        paths.folder_names_and_paths[CODEC_FOLDER] = (
            [os.path.join(paths.models_dir, CODEC_FOLDER)],
            {".safetensors"},
        )
    paths.add_model_folder_path(CODEC_FOLDER, str(PACKAGE_MODELS_DIR))
    if CAPTIONER_FOLDER not in paths.folder_names_and_paths:
        paths.folder_names_and_paths[CAPTIONER_FOLDER] = (
            [os.path.join(paths.models_dir, CAPTIONER_FOLDER)],
            set(),
        )


class _NoProgress:
    def update(self, value: int) -> None:
        """Ignore progress outside ComfyUI."""


def progress_bar(total: int) -> object:
    """ComfyUI's ProgressBar (shown on the node) or a stand-in that ignores updates."""
    try:
        from comfy.utils import ProgressBar
    except ImportError:
        return _NoProgress()
    return ProgressBar(total)


def check_interrupted() -> None:
    """Raise ComfyUI's interruption exception if the user cancelled the run."""
    try:
        from comfy.model_management import throw_exception_if_processing_interrupted
    except ImportError:
        return
    throw_exception_if_processing_interrupted()



def load_managed(module: torch.nn.Module) -> None:
    """Load ``module`` through ComfyUI's model management, as ComfyUI does for its own models.

    The module is wrapped once in a ``ModelPatcher`` (load device: ComfyUI's torch device;
    offload device: its UNet offload device), so VRAM is accounted for and other models are
    offloaded to make room. The patcher holds a plain container around the module, because it
    writes a ``device`` attribute that some models (transformers' BLIP) expose read-only.
    Outside ComfyUI, or on a CPU-only ComfyUI, nothing moves.
    """
    try:
        import comfy.model_management as management
        import comfy.model_patcher
    except ImportError:
        return
    patcher = getattr(module, "_cadc_model_patcher", None)  # lives and dies with the module
    if patcher is None:
        patcher = comfy.model_patcher.ModelPatcher(
            torch.nn.ModuleList([module]),
            load_device=management.get_torch_device(),
            offload_device=management.unet_offload_device(),
        )
        module._cadc_model_patcher = patcher
    management.load_models_gpu([patcher])
