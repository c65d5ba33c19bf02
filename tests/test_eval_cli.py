"""``cadc eval`` end to end on small generated images, tiny models and TINY RANDOM metric backbones."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cadc.cli import main
from cadc.evaluation.backbones import TINY, BackboneError, build_dists, build_lpips
from cadc.evaluation.runner import EvalConfig, Evaluator
from cadc.images import save_image
from cadc.weights import build_tiny_random, save_codec
from tests.conftest import make_busy, make_photo


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for seed, (h, w) in enumerate([(256, 256), (256, 320)]):
        save_image(make_photo(h, w, seed=seed), folder / f"photo{seed}.png")
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    """Two λ points: tiny-random as saved, and a 'busy' variant that spends more bits."""
    folder = tmp_path_factory.mktemp("models")
    save_codec(folder / "low.safetensors", build_tiny_random())
    busy = build_tiny_random()
    make_busy(busy)
    busy.update(force=True)
    save_codec(folder / "high.safetensors", busy)
    return [str(folder / "low.safetensors"), str(folder / "high.safetensors")]


def test_cli_writes_json_csv_plot_and_bd_rate(data: Path, models: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    argv = [
        "eval",
        "--data",
        str(data),
        "--model",
        models[0],
        "--model",
        models[1],
        "--baselines",
        "jpeg",
        "--weights-dir",
        TINY,
        "--fid-min-patches",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "CADC aux [low]" in captured.err and "TINY RANDOM" in captured.err  # summary table and notes

    results = json.loads((out / "results.json").read_text())
    assert report["json"] == str(out / "results.json") and report["images"] == 2
    names = [run["name"] for run in results["runs"]]
    assert names == ["CADC aux [low]", "JPEG @ low", "CADC aux [high]", "JPEG @ high"]
    low, high = results["runs"][0], results["runs"][2]
    assert high["mean"]["bpp_payload"] > low["mean"]["bpp_payload"] > 0
    for run in (low, high):
        for record in run["images"]:
            pixels = record["width"] * record["height"]
            assert record["bpp_file"] > record["bpp_payload"]  # the header is counted in bpp_file only
            assert record["bpp_file"] * pixels % 8 == 0  # whole bytes of the real .cadc file
            assert all(record[m] is not None for m in ("psnr", "ms_ssim", "lpips", "dists"))
            assert {"encode", "decode_codec", "metrics"} <= set(record["seconds"])
        assert run["set"]["patches"] == 2 and run["set"]["fid"] is not None  # one tile per image
    jpeg = results["runs"][1]
    for record, cadc in zip(jpeg["images"], low["images"], strict=True):
        assert record["target_bpp"] == cadc["bpp_file"]
        assert record["reached"] == (record["bpp_file"] <= record["target_bpp"])
    assert any("could not go down" in note for note in results["notes"])

    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 3 and rows[2]["image"] == "MEAN" and float(rows[2]["bpp_file"]) > 0
    assert (out / "rd_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["eval", "--bd-rate", str(out / "results.json"), str(out / "results.json"), "--out", str(out)]) == 0
    bd = json.loads(capsys.readouterr().out)
    assert bd["anchor"]["curve"] == bd["test"]["curve"] == "cadc-aux" and bd["anchor"]["points"] == 2
    assert bd["bd_rate_percent"]["psnr"] == pytest.approx(0.0, abs=1e-9)  # a curve against itself
    assert (out / "bd_rate.json").is_file()


def test_generative_mode_and_missing_backbones(data: Path, tmp_path: Path) -> None:
    config = EvalConfig(
        data=str(data),
        models=["tiny-random"],
        out=str(tmp_path),
        modes=("generative",),
        sd_turbo="tiny-random",
        blip="tiny-random",
        weights_dir=str(tmp_path / "empty"),
        limit=1,
        progress=False,
    )
    results = Evaluator(config).run()
    (run,) = results["runs"]
    record = run["images"][0]
    assert run["curve"] == "cadc-generative" and record["caption"]
    assert {"unet", "vae_decode", "caption"} <= set(record["seconds"])
    assert record["psnr"] is not None and record["lpips"] is None and record["dists"] is None
    notes = " ".join(results["notes"])
    assert "alexnet.safetensors not found" in notes and "vgg16.safetensors" in notes and "inception" in notes


def test_backbones_load_local_torchvision_features(tmp_path: Path) -> None:
    from torchvision.models import alexnet

    state = {k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    save_file(state, str(tmp_path / "alexnet.safetensors"))
    lpips_net = build_lpips(tmp_path)
    assert torch.equal(lpips_net.net.slice3._modules["6"].weight, state["features.6.weight"])
    with pytest.raises(BackboneError, match=r"vgg16\.safetensors not found"):
        build_dists(tmp_path)
    save_file({"features.0.weight": torch.zeros(1)}, str(tmp_path / "vgg16.safetensors"))
    with pytest.raises(BackboneError, match="not a torchvision VGG16"):
        build_dists(tmp_path)


def test_bad_inputs_fail_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--data", str(tmp_path), "--model", "tiny-random", "--out", str(tmp_path)]) == 1
    assert "no images" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path), "--model", "tiny-random", "--mode", "generative"]) == 1
    assert "--sd-turbo" in capsys.readouterr().err
