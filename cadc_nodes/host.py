"""The few ComfyUI services the nodes use, imported lazily.

Inside ComfyUI these are ``folder_paths``, ``comfy.utils.ProgressBar`` and
``comfy.model_management``. Outside it (unit tests, plain Python) progress and interruption
checks do nothing, models stay where they are, and ``folder_paths`` must be provided by the
caller (tests put a stand-in module into ``sys.modules``).

Nothing here keeps models alive: the nodes' outputs (cached by ComfyUI's execution cache) own the
codec and the captioner, and ComfyUI's model management decides where their weights live.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path
from types import ModuleType

import torch

from cadc.model_lookup import PACKAGE_DIR, PACKAGE_MODELS_DIR

log = logging.getLogger(__name__)

CODEC_FOLDER = "cadc"
"""ComfyUI model folder for CADC checkpoints (``models/cadc``; the pack's ``models/`` too)."""
CAPTIONER_FOLDER = "blip"
"""ComfyUI model folder for BLIP captioners saved with ``save_pretrained`` (one folder each)."""
SAMPLE_INPUTS = {
    "cadc_astronaut.png": PACKAGE_DIR / "cadc" / "assets" / "astronaut.png",
    "cadc_astronaut.cadc": PACKAGE_DIR / "cadc" / "assets" / "astronaut.cadc",
}
"""Files copied into ComfyUI's input folder (if absent) so the bundled templates run as installed:
the sample photo, and the same photo compressed with the best shipped model."""


def folder_paths() -> ModuleType:
    """ComfyUI's ``folder_paths`` module (ImportError outside ComfyUI)."""
    return importlib.import_module("folder_paths")


def _add_model_folder(paths: ModuleType, name: str, folders: list[str], extensions: set[str]) -> None:
    """Add ``folders`` to ComfyUI's model folder ``name``, keeping entries made earlier (for example
    by ``extra_model_paths.yaml``), and add ``extensions`` to its file filter."""
    for folder in folders:
        paths.add_model_folder_path(name, folder)
    registered, known = paths.folder_names_and_paths[name]
    paths.folder_names_and_paths[name] = (registered, set(known) | extensions)


def register_model_folders() -> None:
    """Register the ``cadc`` and ``blip`` model folders additively; a no-op outside ComfyUI.

    ``cadc``: ``models/cadc``, then the pack's shipped ``models/``; only ``.safetensors`` files.
    ``blip``: ``models/blip`` (one sub-folder per captioner). Folders that ``extra_model_paths.yaml``
    already named for these keys stay, ahead of ours.
    """
    try:
        paths = folder_paths()
    except ImportError:
        return
    codec_folders = [os.path.join(paths.models_dir, CODEC_FOLDER), str(PACKAGE_MODELS_DIR)]
    _add_model_folder(paths, CODEC_FOLDER, codec_folders, {".safetensors"})
    _add_model_folder(paths, CAPTIONER_FOLDER, [os.path.join(paths.models_dir, CAPTIONER_FOLDER)], set())


def install_sample_inputs() -> None:
    """Copy :data:`SAMPLE_INPUTS` into ComfyUI's input folder where no file of that name exists yet.

    A no-op outside ComfyUI. A user's own file of the same name is never replaced.
    """
    try:
        input_dir = Path(folder_paths().get_input_directory())
    except ImportError:
        return
    for name, source in SAMPLE_INPUTS.items():
        target = input_dir / name
        if source.is_file() and not target.exists():
            try:
                input_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            except OSError as error:  # a read-only input folder must not stop ComfyUI from starting
                log.warning("CADC: could not copy the sample %s into %s: %s", name, input_dir, error)


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


def load_small_model(owner: object, module: torch.nn.Module) -> None:
    """Load a small model (the codec, BLIP) whole onto ComfyUI's device through its model management.

    ``module`` is wrapped once in a ``ModelPatcher`` (load device: ComfyUI's torch device; offload
    device: its UNet offload device) that is kept on ``owner``, the node output holding the module
    (a ``Checkpoint``, a ``Captioner``): when ComfyUI's node cache drops the output, the patcher dies
    with it and ComfyUI frees the weights (no reference cycle delays that). It is loaded with
    ``force_full_load``, so it is never split between the CPU and the GPU; other models are
    offloaded to make room, as for ComfyUI's own. The patcher holds a plain container around the
    module, because it writes a ``device`` attribute that some models (transformers' BLIP) expose
    read-only. Outside ComfyUI nothing moves.
    """
    try:
        import comfy.model_management as management
        import comfy.model_patcher
    except ImportError:
        return
    patcher = getattr(owner, "_cadc_model_patcher", None)
    if patcher is None:
        patcher = comfy.model_patcher.ModelPatcher(
            torch.nn.ModuleList([module]),
            load_device=management.get_torch_device(),
            offload_device=management.unet_offload_device(),
        )
        owner._cadc_model_patcher = patcher  # type: ignore[attr-defined]
    management.load_models_gpu([patcher], force_full_load=True)
