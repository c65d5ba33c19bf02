"""The codec nodes called directly, without ComfyUI (tiny-random codec, stand-in folder_paths)."""

from __future__ import annotations

import pytest
import torch

import cadc_nodes
from cadc.container import CadcFormatError, read_cadc
from cadc.weights import TINY_RANDOM, build_tiny_random
from cadc_nodes.codec_nodes import (
    AuxReconstruct,
    CropToOriginal,
    DecodeLatent,
    EncodeBitstream,
    LoadBitstream,
    LoadCodec,
    SaveBitstream,
    image_to_tensor,
)
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


def test_load_codec_lists_tiny_random_and_caches(folder_paths):
    choices = LoadCodec.INPUT_TYPES()["required"]["codec_name"][0]
    assert TINY_RANDOM in choices
    (first,) = LoadCodec().load(TINY_RANDOM)
    (second,) = LoadCodec().load(TINY_RANDOM)
    assert first is second


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
    (bitstream,) = LoadBitstream().load("a.cadc")["result"]
    assert bitstream == [files[0]]
    (input_dir / "a.cadc").write_bytes(b"replaced")
    assert LoadBitstream.IS_CHANGED("a.cadc") != before


def test_decode_aux_and_crop_give_the_original_size(encoded):
    _, files, _, _ = encoded
    (codec,) = LoadCodec().load(TINY_RANDOM)
    (latents,) = DecodeLatent().decode(codec, files)
    assert [d.latent.l_T.shape for d in latents] == [(1, codec.codec.config.latent_channels, 8, 16)] * 2
    (aux,) = AuxReconstruct().reconstruct(latents)
    assert aux.shape == (2, 50, 70, 3) and aux.dtype == torch.float32
    (cropped,) = CropToOriginal().crop(torch.rand(2, 64, 128, 3), latents)
    assert cropped.shape == (2, 50, 70, 3)
    with pytest.raises(ValueError, match="smaller"):
        CropToOriginal().crop(torch.rand(2, 32, 32, 3), latents)


def test_decode_refuses_a_file_from_another_model(encoded):
    _, files, _, _ = encoded
    other = build_tiny_random(seed=1)
    with pytest.raises(CadcFormatError, match="model mismatch"):
        DecodeLatent().decode(type("C", (), {"codec": other})(), files[:1])
