"""A stand-in for ComfyUI's ``folder_paths`` so the nodes can be called without ComfyUI.

It implements only what the nodes use, with ComfyUI's semantics (input/output folders, the
``name_00001_`` counter of ``get_save_image_path``, model folders as lists of directories).
The real module is exercised by the tests that run a ComfyUI server.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest


def fake_folder_paths(base: Path) -> types.ModuleType:
    """A ``folder_paths`` module rooted at ``base`` (input/, output/, models/)."""
    module = types.ModuleType("folder_paths")
    module.models_dir = str(base / "models")
    module.folder_names_and_paths = {}
    for sub in ("input", "output", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        paths, _ = module.folder_names_and_paths.setdefault(folder_name, ([], set()))
        if full_folder_path not in paths:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    def get_filename_list(folder_name: str) -> list[str]:
        paths, extensions = module.folder_names_and_paths.get(folder_name, ([], set()))
        names = set()
        for folder in map(Path, paths):
            if folder.is_dir():
                names.update(
                    p.name
                    for p in folder.iterdir()
                    if p.is_file() and (not extensions or p.suffix in extensions)
                )
        return sorted(names)

    def get_full_path_or_raise(folder_name: str, filename: str) -> str:
        for folder in module.folder_names_and_paths.get(folder_name, ([], set()))[0]:
            if (Path(folder) / filename).is_file():
                return str(Path(folder) / filename)
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")

    def get_save_image_path(prefix: str, output_dir: str, width: int = 0, height: int = 0):
        subfolder, name = os.path.split(os.path.normpath(prefix))
        folder = Path(output_dir, subfolder)
        folder.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(rf"{re.escape(name)}_(\d+)_")
        counters = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
        return str(folder), name, max(counters, default=0) + 1, subfolder, prefix

    module.add_model_folder_path = add_model_folder_path
    module.get_folder_paths = lambda folder_name: list(module.folder_names_and_paths[folder_name][0])
    module.get_filename_list = get_filename_list
    module.get_full_path_or_raise = get_full_path_or_raise
    module.get_save_image_path = get_save_image_path
    module.get_input_directory = lambda: str(base / "input")
    module.get_output_directory = lambda: str(base / "output")
    module.get_annotated_filepath = lambda name: str(base / "input" / name)
    module.exists_annotated_filepath = lambda name: (base / "input" / name).is_file()
    return module


@pytest.fixture
def folder_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Install the stand-in as ``folder_paths`` and register the pack's model folders in it."""
    from cadc_nodes import host

    module = fake_folder_paths(tmp_path / "comfy")
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    host.register_model_folders()
    return module
