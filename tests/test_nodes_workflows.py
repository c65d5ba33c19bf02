"""Static checks of the bundled UI-format workflow templates, without ComfyUI.

Every node is a pack node or one of the stock nodes below; every link joins an output and an input
of the same type, as declared by RETURN_TYPES / INPUT_TYPES; every required link input is
connected; widget values line up with the widget inputs; the files are exactly what
``workflows/build_templates.py`` builds; they use the best shipped model, the sample inputs and
the SD-Turbo/BLIP names users have. The stock signatures are checked against a real ComfyUI in
test_nodes_comfyui.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

import cadc_nodes
from cadc.model_lookup import DEFAULT_MODEL_FILE, PACKAGE_MODELS_DIR
from cadc_nodes.host import SAMPLE_INPUTS
from tests.comfyui_harness import REPO_ROOT, WIDGET_TYPES
from tests.nodes_fakes import folder_paths

__all__ = ["folder_paths"]  # the fixture is used by name

TEMPLATES_DIR = REPO_ROOT / "example_workflows"
WORKFLOWS = [
    "cadc_compress",
    "cadc_decompress",
    "cadc_decompress_aux",
    "cadc_decompress_fast_preview",
    "cadc_roundtrip",
]
STOCK_NODES: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "LoadImage": ({"image": "COMBO"}, ("IMAGE", "MASK")),
    "SaveImage": ({"images": "IMAGE", "filename_prefix": "STRING"}, ()),
    "PreviewImage": ({"images": "IMAGE"}, ()),
    "CheckpointLoaderSimple": ({"ckpt_name": "COMBO"}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": ({"text": "STRING", "clip": "CLIP"}, ("CONDITIONING",)),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "VAELoader": ({"vae_name": "COMBO"}, ("VAE",)),
}
"""Inputs (name → type, in declaration order) and outputs of the stock nodes the workflows use."""
EXTRA_WIDGET_VALUES = {"LoadImage": 1}
"""Widget values stored beyond the declared inputs (LoadImage's upload button)."""
MODEL_WIDGETS = {
    "CADCLoadCodec": [DEFAULT_MODEL_FILE],
    "CheckpointLoaderSimple": ["sd_turbo.safetensors"],
    "CADCLoadCaptioner": ["blip-image-captioning-base"],
    "LoadImage": ["cadc_astronaut.png", "image"],
    "CADCLoadBitstream": ["cadc_astronaut.cadc"],
    "VAELoader": ["taesd"],
}
"""The widget values every template must use: what a user has after installing the pack (and
SD-Turbo/BLIP/TAESD under their usual names)."""


def signature(node_type: str) -> tuple[dict[str, str], tuple[str, ...]]:
    """Inputs (name → type, COMBO for lists) and outputs of a pack or stock node."""
    if node_type in STOCK_NODES:
        return STOCK_NODES[node_type]
    cls = cadc_nodes.NODE_CLASS_MAPPINGS[node_type]
    declared = cls.INPUT_TYPES()
    inputs = {
        name: "COMBO" if isinstance(spec[0], list) else spec[0]
        for section in ("required", "optional")
        for name, spec in declared.get(section, {}).items()
    }
    return inputs, tuple(cls.RETURN_TYPES)


def load(name: str) -> dict:
    return json.loads((TEMPLATES_DIR / f"{name}.json").read_text())


def builder():
    spec = importlib.util.spec_from_file_location("build_templates", REPO_ROOT / "workflows" / "build_templates.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_templates_are_the_builders_output_one_copy_each():
    build = builder()
    assert sorted(build.TEMPLATES) == WORKFLOWS
    for name in WORKFLOWS:
        assert (TEMPLATES_DIR / f"{name}.json").read_text() == build.render(name), (
            f"{name}.json differs from workflows/build_templates.py: run python workflows/build_templates.py"
        )
        assert (TEMPLATES_DIR / f"{name}.jpg").is_file(), f"{name} has no thumbnail"
    assert sorted(p.stem for p in TEMPLATES_DIR.glob("*.json")) == WORKFLOWS
    assert not list((REPO_ROOT / "workflows").glob("*.json")), "workflows/ holds sources only, no second copy"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_templates_use_the_shipped_model_the_samples_and_the_usual_names(name):
    assert (PACKAGE_MODELS_DIR / DEFAULT_MODEL_FILE).is_file()
    nodes = load(name)["nodes"]
    for node in nodes:
        if node["type"] in MODEL_WIDGETS:
            assert node["widgets_values"] == MODEL_WIDGETS[node["type"]], f"{name}: {node['type']}"
    for sample in ("cadc_astronaut.png", "cadc_astronaut.cadc"):
        assert SAMPLE_INPUTS[sample].is_file()
    assert "tiny-random" not in json.dumps(nodes)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_nodes_exist_and_links_type_check(name, folder_paths):
    workflow = load(name)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for node in nodes.values():
        assert node["type"] in cadc_nodes.NODE_CLASS_MAPPINGS or node["type"] in STOCK_NODES, node["type"]
    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        _, outputs = signature(nodes[origin]["type"])
        assert outputs[origin_slot] == link_type, f"link {link_id}: output type"
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"], f"link {link_id}: origin"
        socket = nodes[target]["inputs"][target_slot]
        assert socket["link"] == link_id, f"link {link_id}: target slot"
        inputs, _ = signature(nodes[target]["type"])
        assert inputs[socket["name"]] == link_type, f"link {link_id}: {socket['name']} type"
    assert workflow["last_link_id"] == len(workflow["links"]) and workflow["last_node_id"] == len(nodes)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_inputs_are_connected_and_widgets_line_up(name, folder_paths):
    for node in load(name)["nodes"]:
        inputs, _ = signature(node["type"])
        linked = {s["name"] for s in node["inputs"] if s.get("link") is not None}
        widgets = [n for n, kind in inputs.items() if kind in WIDGET_TYPES]
        sockets = [n for n, kind in inputs.items() if n not in widgets]
        assert set(sockets) <= linked, f"{node['type']} {node['id']}: unconnected {set(sockets) - linked}"
        expected = len(widgets) + EXTRA_WIDGET_VALUES.get(node["type"], 0)
        assert len(node.get("widgets_values", [])) == expected, f"{node['type']} {node['id']}: widget values"


def test_every_pack_node_is_used_by_some_workflow():
    used = {node["type"] for name in WORKFLOWS for node in load(name)["nodes"]}
    assert set(cadc_nodes.NODE_CLASS_MAPPINGS) <= used


def test_the_aux_template_needs_nothing_but_the_pack():
    types = {node["type"] for node in load("cadc_decompress_aux")["nodes"]}
    assert types <= set(cadc_nodes.NODE_CLASS_MAPPINGS) | {"SaveImage", "PreviewImage"}
