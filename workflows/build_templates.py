"""Write the pack's workflow templates (UI format) into ``example_workflows/``.

This script is their single source: ``python workflows/build_templates.py`` rewrites the JSON files,
and ``tests/test_nodes_workflows.py`` fails when a file differs from what it builds. ComfyUI serves
``example_workflows/*.json`` under *Workflow → Browse Templates*, each with its ``<name>.jpg``
thumbnail: ``python workflows/build_templates.py --thumbnails DIR`` makes them from the
screenshots the browser test leaves in its temporary folder (see :data:`THUMBNAIL_SHOTS`) (run it with
``pytest --basetemp DIR -m browser tests/test_nodes_comfyui.py``, then look in DIR's sub-folders).

Every template uses the best shipped model (``cadc.model_lookup.DEFAULT_MODEL_FILE``), the sample
inputs the pack copies into ComfyUI's input folder (``cadc_nodes.host.SAMPLE_INPUTS``), SD-Turbo as
``models/checkpoints/sd_turbo.safetensors`` and BLIP as ``models/blip/blip-image-captioning-base``
(the fast-preview template also TAESD, ``taesd_encoder``/``taesd_decoder`` in ``models/vae_approx``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = REPO_ROOT / "example_workflows"
SAMPLE_PHOTO = "cadc_astronaut.png"
SAMPLE_CADC = "cadc_astronaut.cadc"
SD_TURBO_CHECKPOINT = "sd_turbo.safetensors"
BLIP_FOLDER = "blip-image-captioning-base"

THUMBNAIL_CROP = (64, 80, 1600, 720)
"""The canvas part of the browser test's 1600×1000 screenshots (no menu bar, no side bar)."""
GROUP_COLOURS = {"input": "#3f789e", "encode": "#8A8", "decode": "#a1309b", "denoise": "#b58b2a"}


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int]
    outputs: list[tuple[str, str]]
    widgets: list[Any]
    title: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    output_links: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class Graph:
    """A UI-format workflow under construction: nodes, links and coloured groups."""

    number: int
    nodes: list[Node] = field(default_factory=list)
    links: list[list[Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)

    def add(self, type_: str, pos, size, outputs=(), widgets=(), title=None) -> Node:
        node = Node(len(self.nodes) + 1, type_, tuple(pos), tuple(size), list(outputs), list(widgets), title)
        self.nodes.append(node)
        return node

    def link(self, origin: Node, slot: int, target: Node, name: str, widget: bool = False) -> None:
        """Connect output ``slot`` of ``origin`` to input ``name`` of ``target`` (inputs listed in call order)."""
        link_id = len(self.links) + 1
        kind = origin.outputs[slot][1]
        entry: dict[str, Any] = {"name": name, "type": kind, "link": link_id}
        if widget:
            entry["widget"] = {"name": name}
        target.inputs.append(entry)
        origin.output_links.setdefault(slot, []).append(link_id)
        self.links.append([link_id, origin.id, slot, target.id, len(target.inputs) - 1, kind])

    def group(self, title: str, colour: str, x: int, width: int) -> None:
        self.groups.append(
            {
                "id": len(self.groups) + 1,
                "title": title,
                "bounding": [x, 0, width, 760],
                "color": GROUP_COLOURS[colour],
                "font_size": 22,
                "flags": {},
            }
        )

    def to_json(self) -> dict[str, Any]:
        nodes = []
        for order, node in enumerate(self.nodes):
            entry = {
                "id": node.id,
                "type": node.type,
                "pos": list(node.pos),
                "size": list(node.size),
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": node.inputs,
                "outputs": [
                    {"name": name, "type": kind, "links": node.output_links.get(slot, []), "slot_index": slot}
                    for slot, (name, kind) in enumerate(node.outputs)
                ],
                "properties": {"Node name for S&R": node.type},
                "widgets_values": node.widgets,
            }
            if node.title:
                entry["title"] = node.title
            nodes.append(entry)
        return {
            "id": f"c4dc0001-0000-4000-8000-{self.number:012d}",
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": nodes,
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {"ds": {"scale": 0.75, "offset": [20, 30]}},
            "version": 0.4,
        }


def _codec_model() -> str:
    sys.path.insert(0, str(REPO_ROOT))
    from cadc.model_lookup import DEFAULT_MODEL_FILE

    return DEFAULT_MODEL_FILE


def _compress_part(g: Graph, x: int, prefix: str) -> tuple[Node, Node, Node]:
    """Load Image + Load CADC Codec → Encode → Save CADC; returns (image, codec, encode) nodes."""
    image = g.add("LoadImage", (x, 80), (280, 330), [("IMAGE", "IMAGE"), ("MASK", "MASK")], [SAMPLE_PHOTO, "image"])
    codec = g.add("CADCLoadCodec", (x, 470), (280, 60), [("codec", "CADC_CODEC")], [_codec_model()])
    encode = g.add("CADCEncode", (x + 330, 80), (280, 110), [("bitstream", "CADC_BITSTREAM"), ("bpp", "FLOAT")])
    g.link(codec, 0, encode, "codec")
    g.link(image, 0, encode, "image")
    save = g.add("CADCSave", (x + 330, 250), (280, 130), [], [prefix])
    g.link(encode, 0, save, "bitstream")
    g.group("Input", "input", x - 20, 320)
    g.group("Compress → .cadc", "encode", x + 310, 320)
    return image, codec, encode


def _load_and_decode(g: Graph) -> tuple[Node, Node]:
    """Load CADC (the sample .cadc and its codec) → Decode Latent → Aux Reconstruct; returns the last two."""
    outputs = [("bitstream", "CADC_BITSTREAM"), ("codec", "CADC_CODEC")]
    load = g.add("CADCLoadBitstream", (30, 80), (280, 150), outputs, [SAMPLE_CADC])
    decode = g.add("CADCDecodeLatent", (360, 80), (280, 50), [("cadc_latent", "CADC_LATENT")])
    g.link(load, 1, decode, "codec")
    g.link(load, 0, decode, "bitstream")
    aux = g.add("CADCAuxReconstruct", (360, 190), (280, 30), [("image", "IMAGE")])
    g.link(decode, 0, aux, "cadc_latent")
    return decode, aux


def _generative_part(g: Graph, latent: Node, x: int, prefix: str, title: str, taesd: bool = False) -> Node:
    """Caption + CLIP Text Encode + One-Step Denoise + VAE Decode + crop + Save Image, from a CADC_LATENT.

    ``taesd``: decode with the stock VAE Loader's ``taesd`` (fast preview) instead of SD-Turbo's VAE.
    """
    captioner = g.add("CADCLoadCaptioner", (x, 300), (280, 60), [("captioner", "CADC_CAPTIONER")], [BLIP_FOLDER])
    caption = g.add("CADCCaption", (x, 420), (280, 150), [("prompt", "STRING"), ("caption", "STRING")])
    g.link(latent, 0, caption, "cadc_latent")
    g.link(captioner, 0, caption, "captioner")
    checkpoint = g.add(
        "CheckpointLoaderSimple",
        (x + 330, 80),
        (290, 100),
        [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
        [SD_TURBO_CHECKPOINT],
    )
    encode_text = g.add("CLIPTextEncode", (x + 330, 240), (290, 90), [("CONDITIONING", "CONDITIONING")], [""])
    g.link(caption, 0, encode_text, "text", widget=True)
    g.link(checkpoint, 1, encode_text, "clip")
    denoise = g.add("CADCOneStepDenoise", (x + 330, 390), (290, 80), [("latent", "LATENT")])
    g.link(checkpoint, 0, denoise, "model")
    g.link(encode_text, 0, denoise, "positive")
    g.link(latent, 0, denoise, "cadc_latent")
    vae_decode = g.add("VAEDecode", (x + 330, 530), (290, 50), [("IMAGE", "IMAGE")])
    g.link(denoise, 0, vae_decode, "samples")
    if taesd:
        vae = g.add("VAELoader", (x, 640), (280, 60), [("VAE", "VAE")], ["taesd"], title="TAESD (models/vae_approx)")
        g.link(vae, 0, vae_decode, "vae")
    else:
        g.link(checkpoint, 2, vae_decode, "vae")
    crop = g.add("CADCCropToOriginal", (x + 330, 640), (290, 50), [("image", "IMAGE")])
    g.link(vae_decode, 0, crop, "image")
    g.link(latent, 0, crop, "cadc_latent")
    save = g.add("SaveImage", (x + 680, 80), (300, 340), [], [prefix], title=title)
    g.link(crop, 0, save, "images")
    g.group("One-step denoise (SD-Turbo)", "denoise", x + 310, 330)
    return save


def compress() -> Graph:
    """Sample photo → .cadc in output/CADC (best shipped model)."""
    g = Graph(1)
    _compress_part(g, 30, "CADC/cadc")
    return g


def decompress() -> Graph:
    """Sample .cadc → aux preview and the full generative decode (BLIP caption, one-step SD-Turbo)."""
    g = Graph(2)
    decode, aux = _load_and_decode(g)
    g.group("Load .cadc", "input", 10, 320)
    g.group("Decode + caption", "decode", 340, 320)
    _generative_part(g, decode, 360, "CADC/decoded", "Decoded")
    preview = g.add("PreviewImage", (1040, 460), (300, 280), [], title="Aux preview")
    g.link(aux, 0, preview, "images")
    return g


def decompress_fast_preview() -> Graph:
    """As ``cadc_decompress``, decoding the latent with TAESD (models/vae_approx) instead of SD-Turbo's VAE."""
    g = Graph(5)
    decode, aux = _load_and_decode(g)
    g.group("Load .cadc", "input", 10, 320)
    g.group("Decode + caption", "decode", 340, 320)
    _generative_part(g, decode, 360, "CADC/fast_preview", "Fast preview (TAESD)", taesd=True)
    preview = g.add("PreviewImage", (1040, 460), (300, 280), [], title="Aux preview")
    g.link(aux, 0, preview, "images")
    return g


def roundtrip() -> Graph:
    """Sample photo → .cadc → generative decode, with the original beside the reconstruction."""
    g = Graph(3)
    image, codec, encode = _compress_part(g, 30, "CADC/roundtrip")
    decode = g.add("CADCDecodeLatent", (690, 80), (280, 50), [("cadc_latent", "CADC_LATENT")])
    g.link(codec, 0, decode, "codec")
    g.link(encode, 0, decode, "bitstream")
    g.group("Decode + caption", "decode", 670, 320)
    _generative_part(g, decode, 690, "CADC/roundtrip_decoded", "Reconstruction")
    original = g.add("PreviewImage", (1370, 460), (300, 280), [], title="Original")
    g.link(image, 0, original, "images")
    return g


def decompress_aux() -> Graph:
    """Sample .cadc → the codec's light aux decoder alone (needs nothing but the pack)."""
    g = Graph(4)
    _, aux = _load_and_decode(g)
    save = g.add("SaveImage", (690, 80), (320, 360), [], ["CADC/aux"], title="Aux reconstruction")
    g.link(aux, 0, save, "images")
    g.group("Load .cadc", "input", 10, 320)
    g.group("Aux decode", "decode", 340, 320)
    return g


TEMPLATES = {
    "cadc_compress": compress,
    "cadc_decompress": decompress,
    "cadc_roundtrip": roundtrip,
    "cadc_decompress_aux": decompress_aux,
    "cadc_decompress_fast_preview": decompress_fast_preview,
}


def render(name: str) -> str:
    """The JSON text of template ``name`` as it is stored."""
    return json.dumps(TEMPLATES[name]().to_json(), indent=1, ensure_ascii=False) + "\n"


THUMBNAIL_SHOTS = {
    "cadc_compress": "done",
    "cadc_decompress_aux": "done",
    "cadc_decompress": "loaded",
    "cadc_decompress_fast_preview": "loaded",
    "cadc_roundtrip": "loaded",
}
"""Which screenshot each thumbnail shows: the finished run where the pack alone made the pictures,
the graph before the run where the browser test's random stand-in for SD-Turbo would show noise."""


def write_thumbnails(screenshots: Path, width: int = 640) -> None:
    """``<name>.jpg`` from the newest ``<name>_<done|loaded>.png`` under ``screenshots``."""
    from PIL import Image

    for name in TEMPLATES:
        shot_name = f"{name}_{THUMBNAIL_SHOTS[name]}.png"
        found = sorted(screenshots.rglob(shot_name), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SystemExit(f"no {shot_name} under {screenshots}")
        with Image.open(found[-1]) as shot:
            image = shot.convert("RGB").crop(THUMBNAIL_CROP)
        image = image.resize((width, round(image.height * width / image.width)), Image.Resampling.LANCZOS)
        image.save(OUTPUT_DIR / f"{name}.jpg", quality=85)
        print(f"wrote {OUTPUT_DIR / name}.jpg from {found[-1]}")


def main() -> None:
    OUTPUT_DIR.mkdir(exist_ok=True)
    if sys.argv[1:2] == ["--thumbnails"]:
        write_thumbnails(Path(sys.argv[2]))
        return
    for name in TEMPLATES:
        (OUTPUT_DIR / f"{name}.json").write_text(render(name), encoding="utf-8")
        print(f"wrote {OUTPUT_DIR / name}.json")


if __name__ == "__main__":
    main()
