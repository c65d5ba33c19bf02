"""The pack inside a real ComfyUI server (HTTP API) and its frontend (headless Debian chromium).

The server runs on 127.0.0.1 with ``--cpu`` and a temporary base directory; the pack is linked
into its custom_nodes. Models: a random SD 2.x checkpoint that CheckpointLoaderSimple accepts
(tests/comfy_checkpoint.py), the tiny random BLIP in models/blip, and the built-in tiny-random codec.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

import cadc_nodes
from cadc.container import read_cadc
from tests.comfy_checkpoint import comfy_sd2_checkpoint
from tests.comfyui_harness import PACK_NAME, REPO_ROOT, ComfyServer, find_comfyui, ui_to_api
from tests.conftest import make_photo
from tests.test_nodes_workflows import STOCK_NODES, WORKFLOWS

COMFY_DIR, SKIP_REASON = find_comfyui()
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(COMFY_DIR is None, reason=SKIP_REASON)]

IMAGE_SIZE = (150, 100)  # width, height: not multiples of 64, so padding and cropping are exercised
CHECKPOINT_NAME = "sd_turbo.safetensors"
BLIP_NAME = "blip-image-captioning-base"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("CADC_SCREENSHOTS", REPO_ROOT / "out" / "screenshots"))
"""Where the browser test leaves its screenshots (``out/`` is git-ignored)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A running ComfyUI with the pack, the test models and input/example.png."""
    from cadc.testing.tiny_sd import tiny_blip, tiny_blip_processor

    comfy = ComfyServer(COMFY_DIR, tmp_path_factory.mktemp("comfyui"))
    (comfy.models_dir / "checkpoints" / CHECKPOINT_NAME).symlink_to(comfy_sd2_checkpoint())
    blip_dir = comfy.models_dir / "blip" / BLIP_NAME
    tiny_blip().save_pretrained(blip_dir)
    tiny_blip_processor().save_pretrained(blip_dir)
    photo = (make_photo(IMAGE_SIZE[1], IMAGE_SIZE[0])[0].permute(1, 2, 0).numpy() * 255).round()
    Image.fromarray(photo.astype("uint8")).save(comfy.input_dir / "example.png")
    comfy.start()
    yield comfy
    comfy.stop()


@pytest.fixture(scope="module")
def object_info(server: ComfyServer) -> dict:
    return server.get_json("/object_info")


def run_workflow(server: ComfyServer, object_info: dict, name: str) -> tuple[dict, float]:
    workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())
    start = time.perf_counter()
    entry = server.run_prompt(ui_to_api(workflow, object_info))
    return entry, time.perf_counter() - start


def saved_images(entry: dict, server: ComfyServer) -> list[Path]:
    return [
        server.output_dir / image["subfolder"] / image["filename"]
        for output in entry["outputs"].values()
        for image in output.get("images", [])
        if image["type"] == "output"
    ]


def test_object_info_lists_every_node_with_its_display_name(object_info):
    for key, display_name in cadc_nodes.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert key in object_info, f"{key} missing from /object_info"
        assert object_info[key]["display_name"] == display_name
        assert object_info[key]["category"] == "CADC"
    assert "tiny-random" in object_info["CADCLoadCodec"]["input"]["required"]["codec_name"][0]
    assert BLIP_NAME in object_info["CADCLoadCaptioner"]["input"]["required"]["captioner_name"][0]


def test_stock_node_table_matches_this_comfyui(object_info):
    for node, (inputs, outputs) in STOCK_NODES.items():
        info = object_info[node]
        assert tuple(info["output"]) == outputs, node
        declared = {**info["input"]["required"], **info["input"].get("optional", {})}
        for name, kind in inputs.items():
            actual = declared[name][0]
            assert (kind == "COMBO" and isinstance(actual, list)) or actual == kind, f"{node}.{name}"


def test_workflows_are_served_as_templates(server):
    templates = server.get_json("/api/workflow_templates")
    assert sorted(templates[PACK_NAME]) == sorted(WORKFLOWS)
    served = server.get_json(f"/api/workflow_templates/{PACK_NAME}/cadc_roundtrip.json")
    assert served["nodes"]


def test_roundtrip_workflow_saves_a_cadc_file_and_the_reconstruction(server, object_info):
    entry, seconds = run_workflow(server, object_info, "cadc_roundtrip")
    cadc_files = sorted((server.output_dir / "CADC").glob("roundtrip_*.cadc"))
    assert len(cadc_files) == 1
    header = read_cadc(cadc_files[0]).header
    assert (header.width, header.height) == IMAGE_SIZE
    (reconstruction,) = saved_images(entry, server)
    assert Image.open(reconstruction).size == IMAGE_SIZE
    infos = [o["cadc_info"] for o in entry["outputs"].values() if "cadc_info" in o]
    assert any("bpp" in line for lines in infos for line in lines)
    assert any(line.startswith("caption:") for lines in infos for line in lines)
    print(f"round-trip workflow: {seconds:.1f} s")


def test_compress_then_decompress_workflows(server, object_info):
    _, compress_seconds = run_workflow(server, object_info, "cadc_compress")
    (cadc_file,) = sorted((server.output_dir / "CADC").glob("cadc_*.cadc"))
    shutil.copy(cadc_file, server.input_dir / "example.cadc")
    entry, decompress_seconds = run_workflow(server, object_info, "cadc_decompress")
    (decoded,) = saved_images(entry, server)
    assert Image.open(decoded).size == IMAGE_SIZE
    print(f"compress workflow: {compress_seconds:.1f} s, decompress workflow: {decompress_seconds:.1f} s")


def test_upload_route_accepts_a_cadc_file(server):
    data = read_cadc_bytes(server)
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="uploaded.cadc"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server.url + "/upload/image",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["name"] == "uploaded.cadc"
    choices = server.get_json("/object_info/CADCLoadBitstream")["CADCLoadBitstream"]["input"]["required"]
    assert "uploaded.cadc" in choices["cadc_file"][0]


def read_cadc_bytes(server: ComfyServer) -> bytes:
    """Bytes of any .cadc the workflows wrote (run a compress if none yet)."""
    existing = sorted(server.output_dir.glob("CADC/*.cadc"))
    if not existing:
        server.run_prompt(ui_to_api(json.loads((REPO_ROOT / "workflows" / "cadc_compress.json").read_text()),
                                    server.get_json("/object_info")))  # fmt: skip
        existing = sorted(server.output_dir.glob("CADC/*.cadc"))
    return existing[0].read_bytes()


@pytest.mark.browser
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"
)
def test_frontend_loads_every_workflow_without_missing_nodes(server):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    server.post_json("/settings/Comfy.TutorialCompleted", True)  # no template picker on first start
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_function("!!window.comfyAPI?.app?.app?.graph", timeout=60_000)
            page.wait_for_function("!!LiteGraph.registered_node_types['CADCLoadBitstream']", timeout=30_000)
            for name in WORKFLOWS:
                workflow = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text())
                page.evaluate("async (w) => await window.comfyAPI.app.app.loadGraphData(w)", workflow)
                page.wait_for_timeout(1000)
                assert page.get_by_text("Some Nodes Are Missing").count() == 0, name
                assert page.get_by_text("Invalid workflow").count() == 0, name
                missing = page.evaluate(
                    "() => window.comfyAPI.app.app.graph.nodes"
                    ".filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)"
                )
                assert missing == [], f"{name}: {missing}"
                assert page.evaluate("() => window.comfyAPI.app.app.graph.nodes.length") == len(
                    workflow["nodes"]
                )
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
                buttons = page.evaluate(
                    "() => window.comfyAPI.app.app.graph.nodes.filter(n => n.type === 'CADCLoadBitstream')"
                    ".flatMap(n => n.widgets.filter(w => w.type === 'button').map(w => w.name))"
                )
                expected = sum(node["type"] == "CADCLoadBitstream" for node in workflow["nodes"])
                assert buttons == ["upload .cadc file"] * expected, name
            assert not [e for e in errors if "cadc" in e.lower()], errors
        finally:
            browser.close()
