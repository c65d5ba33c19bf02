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
from tests.comfyui_harness import (
    PACK_NAME,
    REPO_ROOT,
    ComfyServer,
    browser_skip_reason,
    find_comfyui,
    frontend_page,
    ui_to_api,
)
from tests.conftest import make_photo
from tests.test_nodes_workflows import STOCK_NODES, WORKFLOWS

COMFY_DIR, SKIP_REASON = find_comfyui()
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(COMFY_DIR is None, reason=SKIP_REASON)]

IMAGE_SIZE = (150, 100)  # width, height: not multiples of 64, so padding and cropping are exercised
CHECKPOINT_NAME = "sd_turbo.safetensors"
BLIP_NAME = "blip-image-captioning-base"
BROWSER_SKIP_REASON = browser_skip_reason()
needs_browser = pytest.mark.skipif(bool(BROWSER_SKIP_REASON), reason=BROWSER_SKIP_REASON or "browser present")
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
@needs_browser
def test_frontend_loads_every_workflow_without_missing_nodes(server):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with frontend_page(server) as page:
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
            assert page.evaluate("() => window.comfyAPI.app.app.graph.nodes.length") == len(workflow["nodes"])
            page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
            buttons = page.evaluate(
                "() => window.comfyAPI.app.app.graph.nodes.filter(n => n.type === 'CADCLoadBitstream')"
                ".flatMap(n => n.widgets.filter(w => w.type === 'button').map(w => w.name))"
            )
            expected = sum(node["type"] == "CADCLoadBitstream" for node in workflow["nodes"])
            assert buttons == ["upload .cadc file"] * expected, name
        errors = page.cadc_errors
        assert not [e for e in errors if "cadc" in e.lower()], errors


NODE_RECT_JS = """(id) => {
    const app = window.comfyAPI.app.app;
    const node = app.graph.getNodeById(id);
    const box = app.canvas.canvas.getBoundingClientRect();
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    const [x, y] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title]);
    const scale = app.canvas.ds.scale;
    return {x: box.left + x, y: box.top + y, width: node.size[0] * scale, height: (node.size[1] + title) * scale};
}"""
"""The on-screen rectangle (page pixels) of a node, title bar included."""

INFO_JS = """(id) => {
    const widget = window.comfyAPI.app.app.graph.getNodeById(id).widgets?.find(w => w.name === 'cadc_info');
    const el = widget?.inputEl;
    if (!el) return null;
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    return {text: el.value, width: r.width, height: r.height, x: r.left, y: r.top,
            shown: style.display !== 'none' && style.visibility !== 'hidden' && el.isConnected};
}"""
"""The text box web/cadc.js puts on a node for ``cadc_info``: its text and where it is on the page."""

RUN_STATE_JS = """() => {
    window.__cadcRun = null;
    const api = window.comfyAPI.api.api;
    api.addEventListener('execution_success', (e) => { window.__cadcRun = {ok: true, ...e.detail}; });
    api.addEventListener('execution_error', (e) => { window.__cadcRun = {ok: false, ...e.detail}; });
}"""


def distinct_colours(png: bytes) -> int:
    """How many different colours a PNG screenshot has (an empty node has few, a picture many)."""
    import io

    import numpy as np

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


@pytest.mark.browser
@needs_browser
def test_new_user_queues_the_roundtrip_workflow_in_the_browser(server):
    """The issue's acceptance as a user does it: Templates → comfyui-cadc → cadc_roundtrip → Run.

    Then a new .cadc is in output/, the reconstruction is shown in the "Reconstruction" node, and
    the CADC info boxes (size and bpp on Encode and Save CADC, the caption on Caption) are on screen.
    Screenshots: out/screenshots/roundtrip_ui_*.png.
    """
    workflow = json.loads((REPO_ROOT / "workflows" / "cadc_roundtrip.json").read_text())
    ids = {node.get("title", node["type"]): node["id"] for node in workflow["nodes"]}  # title, else type
    # Earlier tests in this module may have run the same graph through the API; empty the server's
    # cache so that every node really runs again, as on a fresh start.
    server.post_json("/free", {"unload_models": True, "free_memory": True})
    before = set((server.output_dir / "CADC").glob("*.cadc"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with frontend_page(server) as page:
        page.get_by_role("button", name="Templates").first.click()
        page.get_by_role("option", name=PACK_NAME).click()
        page.get_by_role("heading", name="cadc_roundtrip").click()
        page.wait_for_function(f"() => window.comfyAPI.app.app.graph.nodes.length === {len(workflow['nodes'])}")
        page.wait_for_timeout(500)
        assert page.get_by_text("Some Nodes Are Missing").count() == 0
        page.screenshot(path=str(SCREENSHOTS / "roundtrip_ui_loaded.png"))
        before_run = page.screenshot(clip=page.evaluate(NODE_RECT_JS, ids["Reconstruction"]))

        page.evaluate(RUN_STATE_JS)
        start = time.perf_counter()
        page.get_by_test_id("queue-button").get_by_role("button", name="Run").first.click()
        page.wait_for_function("() => window.__cadcRun !== null", timeout=180_000, polling=250)
        run = page.evaluate("() => window.__cadcRun")
        assert run["ok"], f"the run failed: {json.dumps(run)[:3000]}\n{server.log_tail(3000)}"
        seconds = time.perf_counter() - start
        # The reconstruction: SaveImage's preview loads the saved PNG into node.imgs and draws it.
        page.wait_for_function(
            f"() => window.comfyAPI.app.app.graph.getNodeById({ids['Reconstruction']})?.imgs?.[0]?.naturalWidth > 0",
            timeout=30_000,
        )
        page.wait_for_timeout(500)  # let the canvas draw the images and the info boxes
        page.screenshot(path=str(SCREENSHOTS / "roundtrip_ui_done.png"))
        for key in ("Original", "Reconstruction", "CADCEncode", "CADCSave", "CADCCaption"):
            rect = page.evaluate(NODE_RECT_JS, ids[key])
            assert rect["x"] >= 0 and rect["x"] + rect["width"] <= 1600, f"{key} is off screen: {rect}"
            assert rect["y"] >= 0 and rect["y"] + rect["height"] <= 1000, f"{key} is off screen: {rect}"
        after_run = page.screenshot(
            clip=page.evaluate(NODE_RECT_JS, ids["Reconstruction"]),
            path=str(SCREENSHOTS / "roundtrip_ui_reconstruction.png"),
        )
        infos = {kind: page.evaluate(INFO_JS, ids[kind]) for kind in ("CADCEncode", "CADCSave", "CADCCaption")}
        shown = page.evaluate(
            f"() => window.comfyAPI.app.app.graph.getNodeById({ids['Reconstruction']}).imgs"
            ".map(i => ({src: i.src, width: i.naturalWidth, height: i.naturalHeight}))"
        )
        history = server.get_json(f"/history/{run['prompt_id']}")[run["prompt_id"]]
        (saved,) = history["outputs"][str(ids["Reconstruction"])]["images"]
        # the Queue panel lists the finished run with the reconstruction as its cover image
        page.get_by_role("button", name="Queue").first.click()
        queue_image = page.locator(f'img[src*="filename={saved["filename"]}"]').first
        queue_image.wait_for(state="visible", timeout=10_000)
        page.wait_for_timeout(300)
        page.screenshot(path=str(SCREENSHOTS / "roundtrip_ui_queue.png"))
        errors = page.cadc_errors
    print(f"round-trip workflow from the UI: {seconds:.1f} s")

    new_files = sorted(set((server.output_dir / "CADC").glob("*.cadc")) - before)
    assert len(new_files) == 1, new_files
    header = read_cadc(new_files[0]).header
    assert (header.width, header.height) == IMAGE_SIZE

    assert (server.output_dir / saved["subfolder"] / saved["filename"]).is_file()
    assert len(shown) == 1 and f"filename={saved['filename']}" in shown[0]["src"], shown
    assert (shown[0]["width"], shown[0]["height"]) == IMAGE_SIZE
    # drawn on the canvas: the node's pixels changed from the empty node to a picture
    assert distinct_colours(after_run) > distinct_colours(before_run) + 500

    for kind, info in infos.items():
        assert info and info["shown"] and info["width"] > 50 and info["height"] > 20, f"{kind}: {info}"
        assert 0 <= info["x"] < 1600 and 0 <= info["y"] < 1000, f"{kind} info box is off screen: {info}"
    size = f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}"
    assert size in infos["CADCEncode"]["text"] and "bpp" in infos["CADCEncode"]["text"]
    assert infos["CADCSave"]["text"].startswith(f"{new_files[0].name}: {size}")
    assert "bpp" in infos["CADCSave"]["text"] and "bytes" in infos["CADCSave"]["text"]
    assert infos["CADCCaption"]["text"].startswith("caption: ")
    assert not [e for e in errors if "cadc" in e.lower()], errors
