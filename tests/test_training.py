"""cadc.training: config, data, the rate term, codec-path runs, resume, ablation presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cadc import cli
from cadc.model import CADCCodec
from cadc.training.config import ABLATIONS, TrainConfig, load_config, parse_override
from cadc.training.data import CropDataset, StepSampler, list_images, split_holdout
from cadc.training.losses import rate_bpp
from cadc.training.state import load_state
from cadc.training.trainer import MODEL_FILE, STATE_FILE, lr_at, train
from cadc.weights import load_checkpoint
from tests.conftest import make_photo

FAST = dict(crop_size=64, batch_size=2, holdout=1, threads=1, log_every=1, checkpoint_every=0, lr=1e-3)


def write_photos(folder: Path, count: int = 3, size: tuple[int, int] = (96, 128)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        array = (make_photo(*size, seed=i)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(array).save(folder / f"photo{i}.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"))


def codec_params(path: Path) -> dict[str, torch.Tensor]:
    codec = load_checkpoint(path).codec
    return {k: v.detach().clone() for k, v in codec.named_parameters()}


def test_config_file_stage_defaults_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('stage = "stage2"\nsd_turbo = "tiny-random"\nblip = "tiny-random"\nsteps = 7\n')
    config = load_config(toml, {"batch_size": 3})
    assert (config.stage, config.steps, config.batch_size) == ("stage2", 7, 3)
    assert (config.lr, config.lr_end, config.lambda_rate) == (5e-5, 1e-6, 2.0)  # Stage II defaults
    assert lr_at(0, config) == pytest.approx(5e-5) and lr_at(7, config) == pytest.approx(1e-6)
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"stage": "stage1", "sd_turbo": "x", "lambda_rate": 0.25}))
    assert load_config(as_json).lambda_rate == 0.25
    assert parse_override('holdout_names=["a"]') == ("holdout_names", ["a"])
    assert parse_override("sd_turbo=/models/sd") == ("sd_turbo", "/models/sd")
    with pytest.raises(ValueError, match="unknown training config keys"):
        load_config(None, {"lamda": 1})
    with pytest.raises(ValueError, match="needs sd_turbo"):
        load_config(None, {"stage": "stage1"})
    with pytest.raises(ValueError, match="ADGIC"):
        load_config(None, {"ablation": "M0"})  # the codec stage trains x̂_aux


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].joinpath("configs", "training").glob("*.toml")))
def test_shipped_training_configs_load(path):
    assert load_config(path).steps > 0


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_presets_switch_the_model(name):
    switches = ABLATIONS[name]
    config = TrainConfig(stage="stage2", sd_turbo="tiny-random", blip="tiny-random", ablation=name)
    codec = CADCCodec(config.codec_config())
    assert (codec.ugaq is not None) == switches.ugaq == (name not in ("M0", "adgic"))
    assert (codec.g_aux is not None) == switches.aux == (name in ("adgic", "ugaq+adgic", "full"))
    assert config.effective_aux_weight == (4.0 if switches.aux else 0.0)  # Stage II d4: 1 on −1..1 images
    assert switches.caption == (name == "full")
    if not switches.ugaq:  # isotropic rounding: m ≡ 1
        assert torch.equal(codec(make_photo(64, 64))["m"], torch.ones(1, 32, 1, 1))


def test_data_split_crops_and_sampler(photos):
    paths = list_images([photos])
    train_paths, held = split_holdout(paths, 1, seed=3)
    assert len(train_paths) == 2 and len(held) == 1 and held[0] not in train_paths
    assert split_holdout(paths, 0, names=["photo1"])[1] == [photos / "photo1.png"]
    dataset = CropDataset(train_paths, crop=128, seed=0)  # larger than the 96-row photos: padded
    sample = dataset[5]
    assert sample.shape == (3, 128, 128) and 0 <= float(sample.min()) and float(sample.max()) <= 1
    assert torch.equal(sample, CropDataset(train_paths, crop=128, seed=0)[5])
    ranks = [list(StepSampler(start=2, steps=4, batch=2, accum=2, world=2, rank=r)) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == 8
    assert list(StepSampler(3, 4, 2, 2, 2, 0)) == ranks[0][4:]  # resuming at step 3 sees step 3's samples


def test_rate_term_equals_the_bits_the_coder_spends(busy_codec):
    """R from forward (eval mode) × pixels vs the bytes of compress's payload, within 1% (the
    image is large enough that the coder's 32-bit flush is well under 1%)."""
    height, width = 512, 448
    for seed in range(2):
        x = make_photo(height, width, seed=seed)
        with torch.no_grad():
            bits_forward = float(rate_bpp(busy_codec(x)["likelihoods"], height * width)) * height * width
        bits_actual = 8 * len(busy_codec.compress(x)[0].payload)
        assert bits_forward > 5000
        assert bits_actual == pytest.approx(bits_forward, rel=0.01)


def test_codec_stage_trains_and_writes_a_compressible_checkpoint(photos, tmp_path):
    out = tmp_path / "run"
    summary = train(TrainConfig(steps=3, **FAST), [photos], out)
    assert all(np.isfinite(v) for v in summary["final_train"].values())
    assert {"bpp", "aux", "psnr", "quantile"} <= set(summary["final_train"])
    assert json.loads((out / "summary.json").read_text())["steps"] == 3
    assert set(summary["held_out"]["mean"]) == {"bpp", "psnr_aux"}
    provenance = json.loads(_metadata(out / MODEL_FILE)["cadc.provenance"])
    assert provenance["step"] == 3 and provenance["held_out_images"] == ["photo2.png"]
    encoded = tmp_path / "photo.cadc"
    argv = ["compress", str(photos / "photo0.png"), "-o", str(encoded), "--model", str(out / MODEL_FILE)]
    assert cli.main(argv) == 0
    decoded = tmp_path / "photo_aux.png"
    argv = ["decompress", str(encoded), "-o", str(decoded), "--aux-only", "--model", str(out / MODEL_FILE)]
    assert cli.main(argv) == 0
    assert Image.open(decoded).size == (128, 96)


def test_resume_continues_from_the_same_step(photos, tmp_path):
    """2 steps + resume to 4 = 4 steps straight (constant lr, so both runs share the schedule)."""
    config = TrainConfig(steps=4, **{**FAST, "lr_end": FAST["lr"]})
    train(config, [photos], tmp_path / "straight")
    train(config.replace(steps=2), [photos], tmp_path / "split")
    assert load_state(tmp_path / "split" / STATE_FILE, {}, {}, torch.device("cpu"))["step"] == 2
    summary = train(config, [photos], tmp_path / "split", resume=True)
    assert summary["resumed_from"] == 2
    straight, resumed = codec_params(tmp_path / "straight" / MODEL_FILE), codec_params(tmp_path / "split" / MODEL_FILE)
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="differ"):
        train(config.replace(steps=5, crop_size=128), [photos], tmp_path / "split", resume=True)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def test_cli_precedence_file_then_options_then_set(tmp_path):
    """config file < --steps/--ablation options < --set; options left unset never clobber --set."""
    from cadc.cli import build_parser
    from cadc.training.cli import config_from_args

    config_file = tmp_path / "run.toml"
    config_file.write_text('stage = "codec"\nablation = "full"\nsteps = 7\nlambda_rate = 0.5\n')
    parse = build_parser().parse_args
    base = ["train", "--config", str(config_file), "--data", str(tmp_path)]
    assert config_from_args(parse(base)).ablation == "full"
    assert config_from_args(parse(base)).steps == 7
    assert config_from_args(parse([*base, "--set", "ablation=adgic"])).ablation == "adgic"
    assert config_from_args(parse([*base, "--steps", "9"])).steps == 9
    both = config_from_args(parse([*base, "--steps", "9", "--set", "steps=11", "--lambda", "0.25"]))
    assert (both.steps, both.lambda_rate) == (11, 0.25)
