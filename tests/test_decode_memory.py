"""Bounded decode memory (file-dtype weights cast per layer, memory-mapped files, models released per
stage) and the TAESD fast-preview decoder (``--vae-decoder``)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from cadc.cli import main
from cadc.generative import GenerativeDecoder, OneStepDenoiser, SDTurboSource
from cadc.generative.adapter import AdapterConfig, AdapterWeights, seeded_adapter
from cadc.generative.sd_turbo import CONFIG_DIR, _read_safetensors, load_taesd_decoder
from cadc.testing.tiny_sd import tiny_text_encoder, tiny_unet, tiny_vae, write_tiny_tokenizer_files
from cadc.weights import build_tiny_random

LATENT_CHANNELS = 16


@pytest.fixture(scope="module")
def fp16_folder(tmp_path_factory) -> Path:
    """The tiny SD-Turbo as a diffusers folder of float16 files, like stabilityai/sd-turbo's .fp16 variant."""
    folder = tmp_path_factory.mktemp("sd-turbo-fp16")
    for name, model, stem in (
        ("unet", tiny_unet(), "diffusion_pytorch_model"),
        ("vae", tiny_vae(), "diffusion_pytorch_model"),
        ("text_encoder", tiny_text_encoder(), "model"),
    ):
        (folder / name).mkdir()
        config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
        (folder / name / "config.json").write_text(json.dumps(config, default=list))
        state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / name / f"{stem}.fp16.safetensors"))
    write_tiny_tokenizer_files(folder / "tokenizer")
    return folder


def _trained_like_adapter(source: SDTurboSource) -> AdapterWeights:
    """An adapter with a random conv_in and non-zero LoRA B (a seeded one has B = 0: ΔW would vanish)."""
    unet = source.load_unet().float()
    probe = OneStepDenoiser(unet, None, AdapterConfig(latent_channels=LATENT_CHANNELS), merge=False)
    shapes = {n: (m.lora_A["default"].weight.shape, m.lora_B["default"].weight.shape)
              for n, m in probe.unet.named_modules() if hasattr(m, "lora_A")}
    seeded = seeded_adapter(source.load_unet().conv_in.float(), shapes, probe.adapter_config)
    gen = torch.Generator().manual_seed(1)
    lora = {n: (a, torch.randn(b.shape, generator=gen) * 0.05) for n, (a, b) in seeded.lora.items()}
    conv_in = seeded.conv_in_weight + 0.01 * torch.randn(seeded.conv_in_weight.shape, generator=gen)
    return AdapterWeights(seeded.config, conv_in, seeded.conv_in_bias, lora)


def test_file_dtype_unet_gives_the_float32_unet_with_its_merged_weights_rounded_once(fp16_folder):
    source = SDTurboSource(fp16_folder)
    adapter = _trained_like_adapter(source)
    unet_file = fp16_folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    file_bytes = unet_file.read_bytes()
    # reference: cast up front, LoRA merged by peft in float32, then every UNet weight but the new
    # conv_in rounded to float16 once (the file's dtype), computed in float32
    reference = OneStepDenoiser(source.load_unet().float(), adapter, merge=True)
    with torch.no_grad():
        for name, param in reference.unet.named_parameters():
            if not name.startswith("conv_in."):
                param.copy_(param.half().float())
    decoder = GenerativeDecoder.from_sources(fp16_folder, latent_channels=LATENT_CHANNELS, device="cpu")
    decoder.adapter = adapter
    denoiser = decoder.denoiser
    assert next(denoiser.unet.down_blocks.parameters()).dtype == torch.float16  # stored as in the file
    l_t, text = torch.randn(1, LATENT_CHANNELS, 16, 24), torch.randn(1, 77, 32)
    with torch.inference_mode():
        assert torch.equal(denoiser(l_t, text), reference(l_t, text))
    assert unet_file.read_bytes() == file_bytes  # merged into copy-on-write pages, never into the file


def test_float32_stored_unet_equals_peft_merge_and_stays_put():
    """float32 files: the merged UNet is peft's float32 merge, bit for bit, and a second call gives the same ε."""
    source = SDTurboSource("tiny-random")
    adapter = _trained_like_adapter(source)
    reference = OneStepDenoiser(source.load_unet(), adapter, merge=True)
    decoder = GenerativeDecoder.from_sources("tiny-random", latent_channels=LATENT_CHANNELS, device="cpu")
    decoder.adapter = adapter
    l_t, text = torch.randn(1, LATENT_CHANNELS, 8, 8), torch.randn(1, 77, 32)
    with torch.inference_mode():
        first, second = decoder.denoiser(l_t, text), decoder.denoiser(l_t, text)
        assert torch.equal(first, second) and torch.equal(first, reference(l_t, text))


def test_codec_releases_its_float64_copies_and_decodes_the_same(busy_codec):
    from tests.conftest import make_photo

    compressed = busy_codec.compress(make_photo(128, 192))[0]
    before = busy_codec.decompress(compressed.payload, compressed.y_shape, compressed.z_shape)
    busy_codec.release_float64_copies()
    assert busy_codec._float64_copies == {}
    after = busy_codec.decompress(compressed.payload, compressed.y_shape, compressed.z_shape)
    assert torch.equal(before.l_T, after.l_T)


def test_release_weights_leaves_the_codec_holding_no_memory():
    """``cadc decompress`` hands the codec's memory to the generative models after the entropy decode."""
    codec = build_tiny_random()
    codec.prepare()
    codec.release_weights()
    assert codec._float64_copies == {}
    tensors = list(itertools.chain(codec.parameters(), codec.buffers()))
    assert tensors and all(t.is_meta for t in tensors)


def test_file_dtype_text_encoder_gives_the_float32_one_bit_for_bit(fp16_folder):
    source = SDTurboSource(fp16_folder)
    decoder = GenerativeDecoder.from_sources(fp16_folder, latent_channels=LATENT_CHANNELS, device="cpu")
    ids = torch.randint(0, 40, (2, 77))
    with torch.inference_mode():
        expected = source.load_text_encoder().float()(ids)[0]
        assert torch.equal(decoder.text_encoder(ids)[0], expected)
    assert {p.dtype for p in decoder.text_encoder.parameters()} == {torch.float16}  # stored as in the file


def test_safetensors_are_mapped_not_copied(tmp_path):
    tensors = {"a": torch.arange(10, dtype=torch.float16), "b": torch.randn(3, 5), "c": torch.arange(7)}
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    before = path.read_bytes()
    mapped = _read_safetensors(path)
    reference = load_file(str(path))
    assert all(torch.equal(mapped[k], reference[k]) and mapped[k].dtype == reference[k].dtype for k in tensors)
    header_len = int.from_bytes(before[:8], "little")
    offsets = {k: v["data_offsets"][0] for k, v in json.loads(before[8 : 8 + header_len]).items() if k in tensors}
    # one mapping of the whole file: pointers differ exactly by the offsets in the file
    assert mapped["b"].data_ptr() - mapped["a"].data_ptr() == offsets["b"] - offsets["a"]
    assert mapped["c"].data_ptr() - mapped["a"].data_ptr() == offsets["c"] - offsets["a"]
    mapped["b"].fill_(0)  # copy-on-write: the file is untouched
    assert path.read_bytes() == before


def test_low_memory_releases_each_model_once_its_stage_is_done(fp16_folder):
    decoder = GenerativeDecoder.from_sources(
        fp16_folder, blip="tiny-random", latent_channels=LATENT_CHANNELS, device="cpu", low_memory=True
    )
    loaded: dict[str, set[str]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        loaded.setdefault(stage, set()).update(decoder._models)

    decoder.decode(torch.randn(1, LATENT_CHANNELS, 8, 8), torch.rand(1, 3, 64, 64), progress=progress)
    assert "captioner" in loaded["caption"]
    assert "denoiser" in loaded["unet"] and not {"captioner", "text_encoder"} & loaded["unet"]
    assert "vae" in loaded["vae_decode"] and "denoiser" not in loaded["vae_decode"]
    assert set(decoder._models) <= {"tokenizer"}


# --------------------------------------------------------------------------------------------- TAESD
class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(n, n, 3, padding=1), nn.ReLU(), nn.Conv2d(n, n, 3, padding=1), nn.ReLU(),
            nn.Conv2d(n, n, 3, padding=1),
        )
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def _reference_taesd_decoder() -> nn.Sequential:
    """TAESD's decoder as published (madebyollin/taesd, layout of its taesd_decoder.pth): latent → 0..1."""
    torch.manual_seed(3)

    def up() -> list[nn.Module]:
        return [nn.Upsample(scale_factor=2), nn.Conv2d(64, 64, 3, padding=1, bias=False)]

    layers = [_Clamp(), nn.Conv2d(4, 64, 3, padding=1), nn.ReLU(), *[_Block(64) for _ in range(3)], *up(),
              *[_Block(64) for _ in range(3)], *up(), *[_Block(64) for _ in range(3)], *up(), _Block(64),
              nn.Conv2d(64, 3, 3, padding=1)]
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="module")
def taesd(tmp_path_factory) -> tuple[nn.Sequential, Path]:
    """The reference decoder and a ComfyUI-like models/vae_approx folder holding it (.safetensors)."""
    reference = _reference_taesd_decoder()
    folder = tmp_path_factory.mktemp("vae_approx")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(folder / "taesd_decoder.safetensors"))
    return reference, folder


def test_taesd_loads_from_every_layout_and_decodes_like_the_published_model(taesd, tmp_path):
    reference, folder = taesd
    from_folder = load_taesd_decoder(folder)
    diffusers_dir = tmp_path / "taesd-diffusers"
    diffusers_dir.mkdir()
    (diffusers_dir / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny", "scaling_factor": 1.0}))
    save_file({f"decoder.{k}": v.contiguous() for k, v in from_folder.decoder.state_dict().items()},
              str(diffusers_dir / "diffusion_pytorch_model.safetensors"))
    z = torch.randn(1, 4, 6, 5) * 2
    with torch.inference_mode():
        expected = reference(z) * 2 - 1
        for source in (folder, folder / "taesd_decoder.safetensors", diffusers_dir):
            model = load_taesd_decoder(source)
            assert model.encoder is None
            assert torch.allclose(model.decode(z, return_dict=False)[0], expected, atol=1e-6), source


def test_taesd_refuses_other_files_with_one_clear_error(tmp_path):
    pickled = tmp_path / "taesd_decoder.pt"
    pickled.write_bytes(b"not even opened")
    with pytest.raises(FileNotFoundError, match=r"not a \.safetensors file"):
        load_taesd_decoder(pickled)
    save_file({"encoder.layers.0.weight": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(FileNotFoundError, match="does not look like a TAESD decoder"):
        load_taesd_decoder(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="no TAESD decoder"):
        load_taesd_decoder(tmp_path)


def test_pipeline_decodes_unet_units_with_taesd(taesd):
    reference, folder = taesd
    decoder = GenerativeDecoder.from_sources("tiny-random", latent_channels=LATENT_CHANNELS, vae_decoder=folder)
    l_0 = torch.randn(1, 4, 8, 10)
    with torch.inference_mode():
        image = decoder.vae_decode(l_0)
        expected = (((reference(l_0) * 2 - 1).clamp(-1, 1)) + 1) / 2  # TAESD takes UNet-unit latents
    assert image.shape == (1, 3, 64, 80)
    assert torch.allclose(image, expected, atol=1e-6)


def test_sd_vae_still_divides_by_its_scaling_factor():
    decoder = GenerativeDecoder.from_sources("tiny-random", latent_channels=LATENT_CHANNELS)
    vae = tiny_vae()
    l_0 = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        expected = (vae.decode(l_0 / 0.18215).sample.clamp(-1, 1) + 1) / 2
        assert torch.equal(decoder.vae_decode(l_0), expected)  # in-place SiLUs change no number
    assert decoder.vae.encoder is None  # decoding never needs SD's VAE encoder


def test_cli_decompress_with_vae_decoder(capsys, tmp_path, taesd):
    _, folder = taesd
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    assert main(["compress", str(tmp_path / "p.png"), "-o", str(tmp_path / "p.cadc"), "--model", "tiny-random"]) == 0
    out = tmp_path / "p_fast.png"
    code = main(["decompress", str(tmp_path / "p.cadc"), "-o", str(out), "--model", "tiny-random",
                 "--sd-turbo", "tiny-random", "--no-caption", "--vae-decoder", str(folder)])
    assert code == 0
    with Image.open(out) as image:
        assert image.size == (90, 70)
    capsys.readouterr()
    code = main(["decompress", str(tmp_path / "p.cadc"), "-o", str(tmp_path / "q.png"), "--model", "tiny-random",
                 "--sd-turbo", "tiny-random", "--no-caption", "--vae-decoder", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "VAE decoder not found" in err
    assert not (tmp_path / "q.png").exists()


def test_bundled_vae_config_scaling_factor():
    assert json.loads((CONFIG_DIR / "vae" / "config.json").read_text())["scaling_factor"] == 0.18215


@pytest.mark.comfyui
def test_comfyui_vae_loader_taesd_decodes_like_vae_decoder_option(taesd):
    """The fast-preview template's path (stock VAE Loader "taesd" → VAE Decode) equals --vae-decoder."""
    import sys

    from tests.comfyui_harness import find_comfyui

    comfy_dir, reason = find_comfyui()
    if comfy_dir is None:
        pytest.skip(reason)
    if str(comfy_dir) not in sys.path:
        sys.path.append(str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sd
    from comfy.taesd.taesd import Encoder

    reference, folder = taesd
    sd = {f"taesd_encoder.{k}": v for k, v in Encoder().state_dict().items()}  # VAELoader loads both halves
    sd.update({f"taesd_decoder.{k}": v for k, v in reference.state_dict().items()})
    sd.update(vae_scale=torch.tensor(0.18215), vae_shift=torch.tensor(0.0))  # nodes.VAELoader.load_taesd("taesd")
    vae = comfy.sd.VAE(sd=sd)
    l_0 = torch.randn(1, 4, 8, 10)
    comfy_image = vae.decode(l_0 / 0.18215).reshape(1, 64, 80, 3)  # a LATENT holds raw VAE units
    decoder = GenerativeDecoder.from_sources("tiny-random", latent_channels=LATENT_CHANNELS, vae_decoder=folder)
    with torch.inference_mode():
        ours = decoder.vae_decode(l_0).permute(0, 2, 3, 1)
    assert torch.allclose(comfy_image.float().cpu(), ours, atol=1e-4)
