"""The pack inside a real ComfyUI server (HTTP API) and its frontend (headless Debian chromium).

The server runs on 127.0.0.1 with ``--cpu`` and a temporary base directory; the pack is linked
into its custom_nodes and copies its sample inputs into input/ at start-up. Models: a random
SD 2.x checkpoint that CheckpointLoaderSimple accepts (tests/comfy_checkpoint.py) as
``sd_turbo.safetensors``, random TAESD weights in models/vae_approx, the tiny random BLIP in
models/blip, the shipped CADC models, and two extra tiny codecs (one in models/cadc, one in a
folder named by ``extra_model_paths.yaml``).

Parity: the decompress template on a file written by ``cadc compress`` gives the image
``cadc decompress`` gives with the same models, within :data:`PARITY_MAX_LEVELS` 8-bit levels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cadc_nodes
from cadc.config import get_preset
from cadc.container import read_cadc, write_cadc
from cadc.model_lookup import DEFAULT_MODEL_FILE, PACKAGE_MODELS_DIR, checkpoint_identity
from cadc.weights import build_tiny_random, save_codec, weights_hash
from cadc_nodes.host import SAMPLE_INPUTS
from tests.comfy_checkpoint import comfy_sd2_checkpoint
from tests.comfyui_harness import (
    PACK_NAME,
    REPO_ROOT,
    ComfyServer,
    browser_skip_reason,
    checkpoint_with_metadata,
    find_comfyui,
    frontend_page,
    next_frames,
    ui_to_api,
)
from tests.conftest import make_photo
from tests.test_nodes_workflows import STOCK_NODES, TEMPLATES_DIR, WORKFLOWS

COMFY_DIR, SKIP_REASON = find_comfyui()
pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(COMFY_DIR is None, reason=SKIP_REASON)]

IMAGE_SIZE = (150, 100)  # width, height: not multiples of 64, so padding and cropping are exercised
SAMPLE_SIZE = (512, 512)  # the bundled astronaut
CHECKPOINT_NAME = "sd_turbo.safetensors"
BLIP_NAME = "blip-image-captioning-base"
EXTRA_CODEC, LOCAL_CODEC = "extra-codec.safetensors", "local-codec.safetensors"
PARITY_MAX_LEVELS = 2
"""Largest per-pixel difference (of 255) allowed between the graph's and the CLI's 8-bit images:
ComfyUI's Save Image truncates where the CLI rounds (1 level), plus float noise of two different
implementations of the same UNet/VAE/text encoder (its own and diffusers')."""
PARITY_MEAN_LEVELS = 0.75
"""Largest mean absolute difference (8-bit levels) over all pixels and channels."""
BROWSER_SKIP_REASON = browser_skip_reason()
needs_browser = pytest.mark.skipif(bool(BROWSER_SKIP_REASON), reason=BROWSER_SKIP_REASON or "browser present")


def diffusers_configs() -> dict[str, str]:
    """The diffusers configs of the random SD 2.x checkpoint (metadata the CLI's single-file loader reads)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from cadc.generative.sd_turbo import CONFIGS_METADATA_KEY
    from tests.comfy_checkpoint import COMFY_UNET_CONFIG, OPEN_CLIP_H_CONFIG, SD_VAE_CONFIG

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**COMFY_UNET_CONFIG), AutoencoderKL(**SD_VAE_CONFIG)
    text_encoder = CLIPTextConfig(**OPEN_CLIP_H_CONFIG).to_dict()
    configs = {"unet": dict(unet.config), "vae": dict(vae.config), "text_encoder": text_encoder}
    return {CONFIGS_METADATA_KEY: json.dumps(configs, default=list)}


def write_random_taesd(folder: Path) -> None:
    """Seeded random TAESD weights (ComfyUI's own Encoder/Decoder classes), so VAE Loader offers "taesd"."""
    import torch
    from safetensors.torch import save_file

    if str(COMFY_DIR) not in sys.path:
        sys.path.append(str(COMFY_DIR))
    from comfy.cli_args import args

    args.cpu = True
    from comfy.taesd.taesd import Decoder, Encoder

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(11)
    for name, module in (("taesd_encoder", Encoder()), ("taesd_decoder", Decoder())):
        state = {k: torch.randn(v.shape, generator=generator) * 0.05 for k, v in module.state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """A running ComfyUI with the pack, the test models, input/example.png and an extra_model_paths.yaml."""
    from cadc.testing.tiny_sd import tiny_blip, tiny_blip_processor

    base = tmp_path_factory.mktemp("comfyui")
    extra = base / "extra"
    (extra / "cadc").mkdir(parents=True)
    (extra / "blip" / "blip-extra").mkdir(parents=True)
    (extra / "blip" / "blip-extra" / "config.json").write_text("{}")
    save_codec(extra / "cadc" / EXTRA_CODEC, build_tiny_random(get_preset("tiny").replace(name="extra"), seed=7))
    config = base / "extra_model_paths.yaml"
    config.write_text(f"cadc_test:\n    base_path: {extra}\n    cadc: cadc\n    blip: blip\n")
    comfy = ComfyServer(COMFY_DIR, base, ("--extra-model-paths-config", str(config)))
    (comfy.models_dir / "cadc").mkdir(parents=True)
    local = build_tiny_random(get_preset("tiny").replace(name="local"), seed=8)
    save_codec(comfy.models_dir / "cadc" / LOCAL_CODEC, local)
    # one SD file for ComfyUI and the CLI: the random SD 2.x checkpoint with its diffusers configs,
    # and ComfyUI's own CLIP vocabulary beside it (the CLI's tokenizer/ folder)
    checkpoint = comfy.models_dir / "checkpoints" / CHECKPOINT_NAME
    checkpoint_with_metadata(comfy_sd2_checkpoint(), checkpoint, diffusers_configs())
    (checkpoint.parent / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(COMFY_DIR / "comfy" / "sd1_tokenizer" / name, checkpoint.parent / "tokenizer" / name)
    write_random_taesd(comfy.models_dir / "vae_approx")
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


def template_prompt(server: ComfyServer, object_info: dict, name: str, **changes: dict) -> dict:
    """A template as an API prompt; ``changes`` maps a node's class or title to input overrides."""
    workflow = json.loads((TEMPLATES_DIR / f"{name}.json").read_text())
    prompt = ui_to_api(workflow, object_info)
    for node in workflow["nodes"]:
        for key in (node["type"], node.get("title")):
            if key in changes:
                prompt[str(node["id"])]["inputs"].update(changes[key])
    return prompt


def saved_images(entry: dict, server: ComfyServer) -> list[Path]:
    return [
        server.output_dir / image["subfolder"] / image["filename"]
        for output in entry["outputs"].values()
        for image in output.get("images", [])
        if image["type"] == "output"
    ]


def info_lines(entry: dict) -> list[str]:
    return [line for output in entry["outputs"].values() for line in output.get("cadc_info", [])]


def test_object_info_lists_every_node_and_the_models_of_every_folder(object_info):
    for key, display_name in cadc_nodes.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert key in object_info, f"{key} missing from /object_info"
        assert object_info[key]["display_name"] == display_name
        assert object_info[key]["category"] == "CADC"
    codecs = object_info["CADCLoadCodec"]["input"]["required"]["codec_name"][0]
    shipped = sorted(p.name for p in PACKAGE_MODELS_DIR.glob("*.safetensors"))
    assert codecs[0] == DEFAULT_MODEL_FILE and codecs[-1] == "tiny-random"
    # additive folder registration: extra_model_paths.yaml's folder, models/cadc and the shipped models
    assert sorted(codecs[:-1]) == sorted([*shipped, EXTRA_CODEC, LOCAL_CODEC])
    captioners = object_info["CADCLoadCaptioner"]["input"]["required"]["captioner_name"][0]
    assert {BLIP_NAME, "blip-extra", "tiny-random"} <= set(captioners)
    assert object_info["CADCCaption"]["output_is_list"] == [True, True]


def test_stock_node_table_matches_this_comfyui(object_info):
    for node, (inputs, outputs) in STOCK_NODES.items():
        info = object_info[node]
        assert tuple(info["output"]) == outputs, node
        declared = {**info["input"]["required"], **info["input"].get("optional", {})}
        for name, kind in inputs.items():
            actual = declared[name][0]
            assert (kind == "COMBO" and isinstance(actual, list)) or actual == kind, f"{node}.{name}"


def test_templates_are_served_from_example_workflows_without_a_rename_hint(server):
    templates = server.get_json("/api/workflow_templates")
    assert sorted(templates[PACK_NAME]) == sorted(WORKFLOWS)
    for name in WORKFLOWS:
        assert server.get_json(f"/api/workflow_templates/{PACK_NAME}/{name}.json") == json.loads(
            (TEMPLATES_DIR / f"{name}.json").read_text()
        )
        assert server.get_bytes(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")[:2] == b"\xff\xd8"
    log = server.log_tail(10**7)
    assert "consider renaming" not in log
    assert f"custom_nodes/{PACK_NAME}" in log
    assert not [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_NAME in line]


def test_the_sample_inputs_are_installed(server, object_info):
    for name, source in SAMPLE_INPUTS.items():
        assert (server.input_dir / name).read_bytes() == source.read_bytes()
    assert "cadc_astronaut.cadc" in object_info["CADCLoadBitstream"]["input"]["required"]["cadc_file"][0]
    assert "cadc_astronaut.png" in object_info["LoadImage"]["input"]["required"]["image"][0]


def test_compress_and_aux_templates_run_as_installed(server, object_info):
    prompt = template_prompt(server, object_info, "cadc_compress", CADCSave={"filename_prefix": "api/c"})
    entry = server.run_prompt(prompt)
    (written,) = sorted((server.output_dir / "api").glob("c_*.cadc"))
    header = read_cadc(written).header
    assert (header.width, header.height) == SAMPLE_SIZE
    assert (header.model_id, header.weights_sha256) == checkpoint_identity(PACKAGE_MODELS_DIR / DEFAULT_MODEL_FILE)
    assert any("bpp" in line for line in info_lines(entry))

    entry = server.run_prompt(
        template_prompt(server, object_info, "cadc_decompress_aux", SaveImage={"filename_prefix": "api/aux"})
    )
    (aux,) = saved_images(entry, server)
    assert Image.open(aux).size == SAMPLE_SIZE
    assert f"model: {DEFAULT_MODEL_FILE}" in info_lines(entry)


def run_cli(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "cadc.cli", *args, "--json"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_decompress_template_equals_cadc_decompress(server, object_info, tmp_path):
    """The graph and the command decode a file written by ``cadc compress`` to the same image."""
    cadc_path = server.input_dir / "parity.cadc"
    run_cli("compress", str(server.input_dir / "example.png"), "-o", str(cadc_path))  # the shipped model
    started = time.perf_counter()
    changes = {"CADCLoadBitstream": {"cadc_file": "parity.cadc"}, "Decoded": {"filename_prefix": "api/parity"}}
    entry = server.run_prompt(template_prompt(server, object_info, "cadc_decompress", **changes))
    graph_seconds = time.perf_counter() - started
    (graph_png,) = [p for p in saved_images(entry, server) if p.name.startswith("parity")]
    cli_png = tmp_path / "cli.png"
    report = run_cli(
        "decompress", str(cadc_path), "-o", str(cli_png),
        "--sd-turbo", str(server.models_dir / "checkpoints" / CHECKPOINT_NAME),
        "--blip", str(server.models_dir / "blip" / BLIP_NAME),
    )  # fmt: skip
    assert report["model"] == str(PACKAGE_MODELS_DIR / DEFAULT_MODEL_FILE)  # found by the file's weights hash
    assert f"caption: {report['caption']}" in info_lines(entry)
    graph = np.asarray(Image.open(graph_png).convert("RGB"), dtype=np.int16)
    cli = np.asarray(Image.open(cli_png).convert("RGB"), dtype=np.int16)
    assert graph.shape == cli.shape == (IMAGE_SIZE[1], IMAGE_SIZE[0], 3)
    difference = np.abs(graph - cli)
    print(
        f"parity: max {difference.max()} mean {difference.mean():.3f} levels; graph {graph_seconds:.1f} s, "
        f"CLI {sum(report['seconds'].values()):.1f} s; image std {cli.std():.1f}"
    )
    assert cli.std() > 5, "a flat image would make the comparison meaningless"
    assert difference.max() <= PARITY_MAX_LEVELS and difference.mean() <= PARITY_MEAN_LEVELS


def test_a_file_from_an_unknown_model_is_named_in_one_line(server, object_info):
    unknown = build_tiny_random(get_preset("tiny").replace(name="nowhere"), seed=9)
    from cadc.codec_io import encode_tensor

    write_cadc(server.input_dir / "unknown.cadc", encode_tensor(unknown, make_photo(64, 64))[0].file)
    changes = {"CADCLoadBitstream": {"cadc_file": "unknown.cadc"}}
    prompt = template_prompt(server, object_info, "cadc_decompress_aux", **changes)
    with pytest.raises(RuntimeError) as raised:
        server.run_prompt(prompt)
    message = str(raised.value)
    for part in ("no CADC checkpoint with model id 'cadc-nowhere'", weights_hash(unknown).hex()):
        assert part in message
    assert str(server.models_dir / "cadc") in message


def test_upload_route_accepts_a_cadc_file(server):
    data = SAMPLE_INPUTS["cadc_astronaut.cadc"].read_bytes()
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
    window.__cadcCached = [];
    if (window.__cadcListening) return;
    window.__cadcListening = true;
    const api = window.comfyAPI.api.api;
    api.addEventListener('execution_cached', (e) => { window.__cadcCached = e.detail.nodes.map(String); });
    api.addEventListener('execution_success', (e) => { window.__cadcRun = {ok: true, ...e.detail}; });
    api.addEventListener('execution_error', (e) => { window.__cadcRun = {ok: false, ...e.detail}; });
}"""
"""Records how the next run ends (``__cadcRun``) and which nodes it took from ComfyUI's cache
(``__cadcCached``: those do not run again, so they show no new info box)."""

SHOWN_IMAGE_JS = "(id) => window.comfyAPI.app.app.graph.getNodeById(id)?.imgs?.[0]?.naturalWidth > 0"
"""Whether an image node (Save/Preview Image) shows a loaded picture."""

GRAPH_READY_JS = """(count) => {
    const graph = window.comfyAPI.app.app.graph;
    return graph.nodes.length === count && graph.nodes.every(n => LiteGraph.registered_node_types[n.type]);
}"""

EXPECTED_OUTPUTS = {
    "cadc_compress": {"cadc": 1, "images": []},
    "cadc_decompress_aux": {"cadc": 0, "images": ["Aux reconstruction"]},
    "cadc_decompress": {"cadc": 0, "images": ["Aux preview", "Decoded"]},
    "cadc_decompress_fast_preview": {"cadc": 0, "images": ["Aux preview", "Fast preview (TAESD)"]},
    "cadc_roundtrip": {"cadc": 1, "images": ["Original", "Reconstruction"]},
}
"""Per template: .cadc files it writes and the titles of the image nodes that must show a picture."""


def distinct_colours(png: bytes) -> int:
    """How many different colours a PNG screenshot has (an empty node has few, a picture many)."""
    import io

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


@pytest.mark.browser
@needs_browser
def test_a_new_user_opens_and_runs_every_template_in_the_browser(server, tmp_path):
    """As a user does it: Templates → comfyui-cadc → <template> → Run, for each template.

    Each run succeeds; compress templates write a new .cadc; every image node shows its picture;
    the CADC info boxes (size and bpp, the found model, the caption) are on screen. Screenshots go
    to the test's temporary folder.
    """
    assert sorted(EXPECTED_OUTPUTS) == sorted(WORKFLOWS)
    ran_info: set[str] = set()
    with frontend_page(server) as page:
        for name in WORKFLOWS:
            workflow = json.loads((TEMPLATES_DIR / f"{name}.json").read_text())
            ids = {node.get("title", node["type"]): node["id"] for node in workflow["nodes"]}  # title, else type
            before = set(server.output_dir.rglob("*.cadc"))
            page.get_by_role("button", name="Templates").first.click()
            page.get_by_role("option", name=PACK_NAME).click()
            page.get_by_role("heading", name=name, exact=True).click()
            page.wait_for_function(GRAPH_READY_JS, arg=len(workflow["nodes"]), timeout=30_000)
            next_frames(page)
            assert page.get_by_text("Some Nodes Are Missing").count() == 0, name
            image_nodes = [ids[title] for title in EXPECTED_OUTPUTS[name]["images"]]
            empty = {i: page.screenshot(clip=page.evaluate(NODE_RECT_JS, i)) for i in image_nodes}
            page.screenshot(path=str(tmp_path / f"{name}_loaded.png"))

            page.evaluate(RUN_STATE_JS)
            started = time.perf_counter()
            page.get_by_test_id("queue-button").get_by_role("button", name="Run").first.click()
            page.wait_for_function("() => window.__cadcRun !== null", timeout=900_000, polling=250)
            run = page.evaluate("() => window.__cadcRun")
            assert run["ok"], f"{name}: the run failed: {json.dumps(run)[:3000]}\n{server.log_tail(3000)}"
            print(f"{name} from the UI: {time.perf_counter() - started:.1f} s")
            for node_id in image_nodes:
                page.wait_for_function(SHOWN_IMAGE_JS, arg=node_id, timeout=60_000)
            next_frames(page)
            page.screenshot(path=str(tmp_path / f"{name}_done.png"))

            for node_id in image_nodes:  # drawn on the canvas: the node changed from empty to a picture
                rect = page.evaluate(NODE_RECT_JS, node_id)
                assert rect["x"] >= 0 and rect["x"] + rect["width"] <= 1600, f"{name}: {node_id} off screen"
                assert rect["y"] >= 0 and rect["y"] + rect["height"] <= 1000, f"{name}: {node_id} off screen"
                assert distinct_colours(page.screenshot(clip=rect)) > distinct_colours(empty[node_id]) + 500
            new_files = sorted(set(server.output_dir.rglob("*.cadc")) - before)
            assert len(new_files) == EXPECTED_OUTPUTS[name]["cadc"], f"{name}: {new_files}"
            cached = set(page.evaluate("() => window.__cadcCached"))
            info_nodes = [
                ids[k] for k in ("CADCEncode", "CADCSave", "CADCLoadBitstream", "CADCCaption") if k in ids
            ]
            info_nodes = [i for i in info_nodes if str(i) not in cached]
            for node_id in info_nodes:
                info = page.evaluate(INFO_JS, node_id)
                assert info and info["shown"] and info["width"] > 50 and info["height"] > 20, f"{name}: {info}"
                assert 0 <= info["x"] < 1600 and 0 <= info["y"] < 1000, f"{name}: info box off screen: {info}"
            if "CADCSave" in ids:
                text = page.evaluate(INFO_JS, ids["CADCSave"])["text"]
                assert text.startswith(f"{new_files[0].name}: 512x512") and "bpp" in text, text
            if ids.get("CADCLoadBitstream") in info_nodes:
                assert f"model: {DEFAULT_MODEL_FILE}" in page.evaluate(INFO_JS, ids["CADCLoadBitstream"])["text"]
            if ids.get("CADCCaption") in info_nodes:
                assert page.evaluate(INFO_JS, ids["CADCCaption"])["text"].startswith("caption: ")
            ran_info.update(f"{name}:{k}" for k, i in ids.items() if i in info_nodes)
        errors = page.cadc_errors
    assert not [e for e in errors if "cadc" in e.lower()], errors
    # every kind of info box was checked on a node that really ran (the first template using it)
    expected_info = {"cadc_compress:CADCEncode", "cadc_compress:CADCSave", "cadc_decompress:CADCLoadBitstream"}
    assert expected_info | {"cadc_decompress:CADCCaption", "cadc_roundtrip:CADCSave"} <= ran_info, ran_info
    assert os.listdir(tmp_path), "screenshots"
