"""The file-safety tests of the Save/Load CADC nodes, run against ComfyUI's REAL ``folder_paths``.

``tests/test_reliability.py`` runs them with the stand-in of ``tests/nodes_fakes.py``. Here the
same test functions get a ``folder_paths`` fixture that is ComfyUI's own module (from the checkout
that ``find_comfyui`` finds), with its input/output/temp/models folders moved under tmp_path. Real
ComfyUI refuses most escaping prefixes itself with a bare multi-line ``Exception``; the nodes
check first and raise the same one-line ``ValueError`` for every case, with either module.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.comfyui_harness import find_comfyui
from tests.test_reliability import (
    huge_claim,
    test_load_node_refuses_paths_outside_the_input_folder,
    test_save_node_interrupted_mid_write_leaves_no_partial_file,
    test_save_node_refuses_prefixes_that_leave_the_output_folder,
    test_tiny_file_claiming_a_huge_image_is_refused_by_the_load_node,
    valid_cadc,
)

__all__ = [  # collected here again, with the real folder_paths below
    "huge_claim",
    "test_load_node_refuses_paths_outside_the_input_folder",
    "test_save_node_interrupted_mid_write_leaves_no_partial_file",
    "test_save_node_refuses_prefixes_that_leave_the_output_folder",
    "test_tiny_file_claiming_a_huge_image_is_refused_by_the_load_node",
    "valid_cadc",
]

COMFY_DIR, SKIP_REASON = find_comfyui()
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(COMFY_DIR is None, reason=SKIP_REASON)]


@pytest.fixture
def folder_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """ComfyUI's own ``folder_paths`` (a fresh copy), rooted at tmp_path/comfy, installed as the
    module the nodes import; the pack's model folders registered in it as ComfyUI would."""
    from cadc_nodes import host

    monkeypatch.setattr(sys, "path", [*sys.path, str(COMFY_DIR)])  # for its `comfy.cli_args` import
    spec = importlib.util.spec_from_file_location("folder_paths", COMFY_DIR / "folder_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = tmp_path / "comfy"
    for sub in ("input", "output", "temp", "models"):
        (base / sub).mkdir(parents=True)
    module.set_input_directory(str(base / "input"))
    module.set_output_directory(str(base / "output"))
    module.set_temp_directory(str(base / "temp"))
    module.models_dir = str(base / "models")
    module.folder_names_and_paths = copy.deepcopy(module.folder_names_and_paths)
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    host.register_model_folders()
    return module


def test_the_fixture_is_comfyuis_own_module(folder_paths):
    assert Path(folder_paths.__file__).resolve() == (COMFY_DIR / "folder_paths.py").resolve()
    assert "checkpoints" in folder_paths.folder_names_and_paths  # a real ComfyUI registry
    with pytest.raises(Exception, match="outside the output folder is not allowed"):
        folder_paths.get_save_image_path("../evil", folder_paths.get_output_directory())
