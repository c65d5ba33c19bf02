"""The codec nodes called directly, without ComfyUI (tiny-random codec, stand-in folder_paths)."""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

import cadc_nodes
from cadc.config import get_preset
from cadc.container import CadcFormatError, read_cadc
from cadc.model_lookup import DEFAULT_MODEL_FILE, PACKAGE_MODELS_DIR, ModelNotFoundError
from cadc.weights import TINY_RANDOM, build_tiny_random, save_codec, weights_hash
from cadc_nodes import host
from cadc_nodes.codec_nodes import (
    AuxReconstruct,
    CropToOriginal,
    DecodedFiles,
    DecodeLatent,
    EncodeBitstream,
    LoadBitstream,
    LoadCodec,
    SaveBitstream,
    image_to_tensor,
)
from tests.comfyui_harness import REPO_ROOT
from tests.conftest import make_photo
from tests.nodes_fakes import folder_paths

__all__ = ["folder_paths"]  # the fixture is used by name


def comfy_image(height: int, width: int, batch: int = 1) -> torch.Tensor:
    """A ComfyUI IMAGE [B, H, W, 3] of smooth test photos."""
    return torch.cat([make_photo(height, width, seed=i).permute(0, 2, 3, 1) for i in range(batch)])


@pytest.fixture(scope="module")
def encoded() -> tuple[torch.Tensor, list, float]:
    """A batch of two 50x70 images, encoded with tiny-random (shared: encoding is the slow part)."""
    image = comfy_image(50, 70, batch=2)
    (codec,) = LoadCodec().load(TINY_RANDOM)
    out = EncodeBitstream().encode(codec, image)
    return image, *out["result"], out["ui"]


def test_every_node_documents_itself_and_its_inputs(folder_paths):
    for key, cls in cadc_nodes.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "CADC", key
        assert cls.DESCRIPTION.strip(), key
        assert callable(getattr(cls, cls.FUNCTION)), key
        for section in cls.INPUT_TYPES().values():
            for name, spec in section.items():
                assert spec[1].get("tooltip"), f"{key}.{name} has no tooltip"
        if cls.RETURN_TYPES:
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS), key
        assert key in cadc_nodes.NODE_DISPLAY_NAME_MAPPINGS


def test_load_codec_lists_the_best_shipped_model_first_and_tiny_random(folder_paths):
    choices = LoadCodec.INPUT_TYPES()["required"]["codec_name"][0]
    assert choices[0] == DEFAULT_MODEL_FILE and choices[-1] == TINY_RANDOM
    assert set(choices[:-1]) == {p.name for p in PACKAGE_MODELS_DIR.glob("*.safetensors")}


def test_load_codec_keeps_no_copy_of_its_own(folder_paths):
    """ComfyUI's node cache owns a loaded codec: once the output is dropped, it is freed."""
    (first,) = LoadCodec().load(TINY_RANDOM)
    (second,) = LoadCodec().load(TINY_RANDOM)
    assert first is not second and weights_hash(first.codec) == weights_hash(second.codec)
    DecodeLatent().decode(first, [])
    gone = weakref.ref(first.codec)
    del first
    gc.collect()
    assert gone() is None


def test_encode_gives_one_bitstream_per_image(encoded):
    _, files, bpp, ui = encoded
    assert len(files) == 2
    assert all((f.header.height, f.header.width) == (50, 70) for f in files)
    per_image = [8 * sum(map(len, f.streams)) / (50 * 70) for f in files]
    assert bpp == pytest.approx(sum(per_image) / 2)
    assert len(ui["cadc_info"]) == 2 and "bpp" in ui["cadc_info"][0]


def test_image_to_tensor_drops_alpha_and_reorders():
    rgba = torch.rand(2, 5, 7, 4)
    x = image_to_tensor(rgba)
    assert x.shape == (2, 3, 5, 7)
    assert torch.equal(x[1, 2], rgba[1, :, :, 2])


def test_save_writes_numbered_files_that_read_back(folder_paths, encoded, tmp_path):
    _, files, _, _ = encoded
    ui = SaveBitstream().save(files, "CADC/test")["ui"]
    second = SaveBitstream().save(files[:1], "CADC/test")["ui"]
    names = [f["filename"] for f in ui["cadc_files"] + second["cadc_files"]]
    assert names == ["test_00001_.cadc", "test_00002_.cadc", "test_00003_.cadc"]
    out_dir = tmp_path / "comfy" / "output" / "CADC"
    assert read_cadc(out_dir / names[1]) == files[1]
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert "bytes" in ui["cadc_info"][0]


def test_load_bitstream_lists_validates_and_hashes(folder_paths, encoded, tmp_path):
    _, files, _, _ = encoded
    input_dir = tmp_path / "comfy" / "input"
    (input_dir / "a.cadc").write_bytes(files[0].to_bytes())
    (input_dir / "photo.png").write_bytes(b"not listed")
    assert LoadBitstream.INPUT_TYPES()["required"]["cadc_file"][0] == ["a.cadc"]
    assert LoadBitstream.VALIDATE_INPUTS("a.cadc") is True
    assert "Invalid" in LoadBitstream.VALIDATE_INPUTS("missing.cadc")
    assert "Not a .cadc" in LoadBitstream.VALIDATE_INPUTS("photo.png")
    before = LoadBitstream.IS_CHANGED("a.cadc")
    (bitstream, codec) = LoadBitstream().load("a.cadc")["result"]
    assert bitstream == [files[0]]
    assert weights_hash(codec.codec) == files[0].header.weights_sha256
    (input_dir / "a.cadc").write_bytes(b"replaced")
    assert LoadBitstream.IS_CHANGED("a.cadc") != before


def test_load_bitstream_finds_the_files_model_by_its_weights_hash(folder_paths, tmp_path):
    """Among models/cadc, the shipped models and tiny-random, the checkpoint whose hash the file names."""
    models = tmp_path / "comfy" / "models" / "cadc"
    models.mkdir(parents=True)
    decoy = build_tiny_random(get_preset("tiny").replace(name="node-test"), seed=3)
    save_codec(models / "decoy.safetensors", decoy)  # same id as the file's model, other weights
    wanted = build_tiny_random(get_preset("tiny").replace(name="node-test"), seed=4)
    (models / "sub").mkdir()
    save_codec(models / "sub" / "wanted.safetensors", wanted)
    (file_a,) = EncodeBitstream().encode(type("C", (), {"codec": wanted})(), comfy_image(40, 60))["result"][0]
    (tmp_path / "comfy" / "input" / "a.cadc").write_bytes(file_a.to_bytes())
    out = LoadBitstream().load("a.cadc")
    _, codec = out["result"]
    assert codec.source == str(models / "sub" / "wanted.safetensors")
    assert "model: wanted.safetensors" in out["ui"]["cadc_info"]
    (latents,) = DecodeLatent().decode(codec, [file_a])
    assert latents.images[0].x_aux.shape == (1, 3, 40, 60)

    shipped = min(PACKAGE_MODELS_DIR.glob("*.safetensors"))
    shutil.copy(shipped, models / "copy-of-shipped.safetensors")  # the first folder wins
    (file_b,) = EncodeBitstream().encode(LoadCodec().load(shipped.name)[0], comfy_image(40, 60))["result"][0]
    (tmp_path / "comfy" / "input" / "b.cadc").write_bytes(file_b.to_bytes())
    assert LoadBitstream().load("b.cadc")["result"][1].source == str(models / "copy-of-shipped.safetensors")


def test_load_bitstream_names_an_unknown_model_and_where_to_put_it(folder_paths, tmp_path):
    unknown = build_tiny_random(get_preset("tiny").replace(name="nowhere"), seed=5)
    (cadc_file,) = EncodeBitstream().encode(type("C", (), {"codec": unknown})(), comfy_image(40, 60))["result"][0]
    (tmp_path / "comfy" / "input" / "u.cadc").write_bytes(cadc_file.to_bytes())
    with pytest.raises(ModelNotFoundError) as raised:
        LoadBitstream().load("u.cadc")
    message = str(raised.value)
    assert "\n" not in message and "'cadc-nowhere'" in message
    assert weights_hash(unknown).hex() in message
    assert str(Path(folder_paths.models_dir) / "cadc") in message


def test_model_folders_are_registered_additively(tmp_path, monkeypatch):
    """Folders extra_model_paths.yaml named for cadc/blip stay; ours are added after them."""
    from tests.nodes_fakes import fake_folder_paths

    module = fake_folder_paths(tmp_path / "comfy")
    monkeypatch.setitem(sys.modules, "folder_paths", module)
    module.add_model_folder_path("cadc", str(tmp_path / "extra" / "cadc"))  # as extra_model_paths does
    module.add_model_folder_path("blip", str(tmp_path / "extra" / "blip"))
    host.register_model_folders()
    host.register_model_folders()  # idempotent
    cadc_paths, extensions = module.folder_names_and_paths["cadc"]
    assert cadc_paths == [
        str(tmp_path / "extra" / "cadc"),
        str(tmp_path / "comfy" / "models" / "cadc"),
        str(PACKAGE_MODELS_DIR),
    ]
    assert extensions == {".safetensors"}
    assert module.folder_names_and_paths["blip"][0] == [
        str(tmp_path / "extra" / "blip"),
        str(tmp_path / "comfy" / "models" / "blip"),
    ]


def test_sample_inputs_are_copied_once_and_never_replace_a_users_file(folder_paths, tmp_path):
    input_dir = tmp_path / "comfy" / "input"
    (input_dir / "cadc_astronaut.png").write_bytes(b"the user's own file")
    host.install_sample_inputs()
    assert (input_dir / "cadc_astronaut.png").read_bytes() == b"the user's own file"
    assert (input_dir / "cadc_astronaut.cadc").read_bytes() == host.SAMPLE_INPUTS["cadc_astronaut.cadc"].read_bytes()


def test_sample_cadc_is_made_with_the_best_shipped_model(folder_paths, tmp_path):
    """The templates' sample .cadc decodes with DEFAULT_MODEL_FILE (regenerate it when that changes:
    cadc compress cadc/assets/astronaut.png -o cadc/assets/astronaut.cadc)."""
    host.install_sample_inputs()
    (_, codec) = LoadBitstream().load("cadc_astronaut.cadc")["result"]
    assert Path(codec.source) == PACKAGE_MODELS_DIR / DEFAULT_MODEL_FILE
    from PIL import Image

    with Image.open(host.SAMPLE_INPUTS["cadc_astronaut.png"]) as photo:
        header = read_cadc(host.SAMPLE_INPUTS["cadc_astronaut.cadc"]).header
        assert (header.width, header.height) == photo.size


def test_decode_aux_and_crop_give_the_original_size(encoded):
    _, files, _, _ = encoded
    (codec,) = LoadCodec().load(TINY_RANDOM)
    (latents,) = DecodeLatent().decode(codec, files)
    assert isinstance(latents, DecodedFiles) and latents.checkpoint is codec
    assert [d.latent.l_T.shape for d in latents.images] == [(1, codec.codec.config.latent_channels, 8, 16)] * 2
    (aux,) = AuxReconstruct().reconstruct(latents)
    assert aux.shape == (2, 50, 70, 3) and aux.dtype == torch.float32
    assert torch.equal(aux[1], latents.images[1].x_aux[0].permute(1, 2, 0))
    (cropped,) = CropToOriginal().crop(torch.rand(2, 64, 128, 3), latents)
    assert cropped.shape == (2, 50, 70, 3)
    with pytest.raises(ValueError, match="smaller"):
        CropToOriginal().crop(torch.rand(2, 32, 32, 3), latents)


def test_decode_refuses_a_file_from_another_model(encoded):
    _, files, _, _ = encoded
    other = build_tiny_random(seed=1)
    with pytest.raises(CadcFormatError, match="model mismatch"):
        DecodeLatent().decode(type("C", (), {"codec": other})(), files[:1])


def test_importing_the_pack_loads_no_heavy_library():
    """ComfyUI imports the pack at start-up: diffusers, peft, transformers and compressai load only
    when a node runs (loaded as ComfyUI loads a custom node: the folder's __init__.py as a package)."""
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('comfyui_cadc', {str(REPO_ROOT / '__init__.py')!r},"
        f" submodule_search_locations=[{str(REPO_ROOT)!r}])\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['comfyui_cadc'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert len(module.NODE_CLASS_MAPPINGS) == 10\n"
        "print(sorted(m for m in ('diffusers', 'peft', 'transformers', 'compressai') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_pack_entry_point_also_imports_as_a_plain_module():
    """pytest imports the checkout's __init__.py as a plain module named ``__init__`` when the folder's
    name is no identifier (``git clone ... comfyui-cadc``): it must still give the node mappings."""
    script = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('__init__', {str(REPO_ROOT / '__init__.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(len(module.NODE_CLASS_MAPPINGS), module.WEB_DIRECTORY)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["10", "./web"]
