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
from cadc.evaluation.baselines import PillowCodec
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
    assert jpeg["curve"] == "jpeg@cadc"
    for record, cadc in zip(jpeg["images"], low["images"], strict=True):
        assert record["target_bpp"] == cadc["bpp_file"] and record["factor"] == 1
        assert record["reached"] == (record["bpp_file"] <= record["target_bpp"])
        assert 0 < record["bpp_payload"] < record["bpp_file"]
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


def test_sweep_families_published_and_bd_rate_in_one_command(
    data: Path, models: list[str], tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "rd"
    published = tmp_path / "published.csv"
    published.write_text("method,bpp,psnr,ms_ssim,source\nPaper,0.05,25.0,0.8,table 2\nPaper,0.1,27.0,,table 2\n")
    argv = [
        "eval", "--data", str(data), "--model", models[0], "--model", models[1],
        "--family", f"busy={models[1]}", "--sweep", "jpeg-rs,jpeg", "--sweep-bpp", "0.06,0.12,0.25",
        "--baselines", "jpeg-rs", "--bd-anchor", "jpeg-rs", "--published", str(published),
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    results = json.loads((out / "results.json").read_text())
    by_curve: dict[str, list[dict]] = {}
    for run in results["runs"]:
        by_curve.setdefault(run["curve"], []).append(run)
    assert {"jpeg-rs", "jpeg", "cadc-aux", "cadc-aux:busy", "jpeg-rs@cadc", "jpeg-rs@busy"} == set(by_curve)
    assert len(by_curve["cadc-aux"]) == 2 and len(by_curve["cadc-aux:busy"]) == 1  # one curve per family
    for run in by_curve["jpeg-rs"]:  # each sweep point: per image the factor, quality and target
        target = float(run["point"].lstrip("≤"))
        for record in run["images"]:
            assert record["factor"] in (1, 2, 3, 4, 6, 8) and record["target_bpp"] == target
            pixels = record["width"] * record["height"]
            assert (record["bpp_file"] * pixels / 8) % 1 == pytest.approx(0, abs=1e-6)  # whole bytes, ORIGINAL px
            assert record["reached"] == (record["bpp_file"] <= target)
    assert any(r["factor"] > 1 for run in by_curve["jpeg-rs"] for r in run["images"])  # resampling is used
    assert results["published"][1]["ms_ssim"] is None and (out / "rd_curves.png").is_file()
    assert [(r["test"], r["rate"]) for r in results["bd_rate"]] == [
        ("cadc-aux", "bpp_payload"), ("cadc-aux:busy", "bpp_payload"),
        ("cadc-aux", "bpp_file"), ("cadc-aux:busy", "bpp_file"),
    ]  # fmt: skip
    assert report["bd_rate"] == results["bd_rate"] and (out / "bd_rate.json").is_file()
    assert "BD-rate cadc-aux vs jpeg-rs (payload bpp)" in captured.err
    assert "not computed: test curve needs at least 2" in json.dumps(results["bd_rate"][1])  # 1-point family

    cache = sorted(p.relative_to(out).as_posix() for p in (out / "baseline_cache").rglob("*.json"))
    assert cache == ["baseline_cache/jpeg/photo0.json", "baseline_cache/jpeg/photo1.json"]
    encodes = []
    original = PillowCodec.encode
    monkeypatch.setattr(PillowCodec, "encode", lambda self, *a, **k: encodes.append(1) or original(self, *a, **k))
    rerun = ["eval", "--data", str(data), "--sweep", "jpeg-rs,jpeg", "--sweep-bpp", "0.06,0.12,0.25"]
    assert main([*rerun, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert encodes == []  # sizes, PSNR and scores all came from the cache
    again = json.loads((out / "results.json").read_text())
    sweep_means = [r["mean"] for r in results["runs"] if r["curve"] in ("jpeg", "jpeg-rs")]
    assert [r["mean"] for r in again["runs"] if r["curve"] in ("jpeg", "jpeg-rs")] == sweep_means


def test_bad_sweep_options_fail_in_one_line(data: Path, tmp_path: Path, capsys) -> None:
    for extra, message in [
        (["--sweep", "jpeg", "--sweep-bpp", "0.1,abc"], "--sweep-bpp"),
        (["--sweep", "jpeg", "--sweep-bpp", "-0.1"], "--sweep-bpp"),
        (["--sweep", "jpeg", "--bd-anchor", "avif-rs"], "--bd-anchor avif-rs"),
        (["--sweep", "bpg"], "unknown baseline"),
        (["--family", "x"], "--family"),
        (["--family", "cadc=a.safetensors"], "--family"),
    ]:
        assert main(["eval", "--data", str(data), *extra, "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
    assert not (tmp_path / "o").exists()
