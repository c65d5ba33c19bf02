"""Validation that cannot sink a run (issue 13, item 3): spread over ranks, failures recorded,
tiled at large sizes, held-out folders, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from cadc.generative.adapter import AdapterConfig
from cadc.generative.sd_turbo import SDTurboSource
from cadc.model import CADCCodec
from cadc.training import distributed, validation
from cadc.training.config import TrainConfig
from cadc.training.generative_branch import GenerativeBranch
from cadc.training.objective import Objective
from cadc.training.trainer import TrainingRun
from tests.test_training import FAST, write_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"), count=5, size=(192, 176))


def _info(rank: int, world: int) -> distributed.DistInfo:
    return distributed.DistInfo(rank=rank, world=world, local_rank=rank, device=torch.device("cpu"))


def _codec_objective() -> Objective:
    config = TrainConfig()
    torch.manual_seed(0)
    return Objective(CADCCodec(config.codec_config()), config)


def test_images_are_spread_over_ranks(photos, monkeypatch):
    paths = sorted(photos.iterdir())
    monkeypatch.setattr(distributed, "gather_dicts", lambda rows, info: dict(rows))  # this rank's share only
    objective = _codec_objective()
    shares = [validation.Validator(paths, TrainConfig(), _info(r, 2), None)(objective)["images"] for r in (0, 1)]
    assert list(shares[0]) == [p.name for p in paths[0::2]] and list(shares[1]) == [p.name for p in paths[1::2]]
    whole = validation.Validator(paths, TrainConfig(), _info(0, 1), None)(objective)
    assert whole["images"] == {**shares[0], **shares[1]}
    assert {"bpp", "psnr_aux", "ms_ssim_aux"} <= set(whole["mean"]) and math.isfinite(whole["score"])


def test_an_out_of_memory_image_is_recorded_not_fatal(photos, monkeypatch):
    paths = sorted(photos.iterdir())
    real = validation.Validator.score_image

    def flaky(self, objective, path):
        if path == paths[1]:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, objective, path)

    monkeypatch.setattr(validation.Validator, "score_image", flaky)
    result = validation.Validator(paths, TrainConfig(), _info(0, 1), None)(_codec_objective())
    assert result["failed"] == [paths[1].name] and result["images"][paths[1].name] == {"error": "out of memory"}
    good = [row["bpp"] for name, row in result["images"].items() if name != paths[1].name]
    assert result["mean"]["bpp"] == pytest.approx(sum(good) / len(good))


def test_large_latents_are_reconstructed_in_tiles(monkeypatch):
    branch = GenerativeBranch(SDTurboSource("tiny-random"), None, AdapterConfig(latent_channels=8))
    calls = []
    denoise = branch.denoiser.forward
    monkeypatch.setattr(
        branch.denoiser, "forward", lambda l_t, text: calls.append(tuple(l_t.shape[-2:])) or denoise(l_t, text)
    )
    l_t = torch.randn(1, 8, 160, 104, generator=torch.Generator().manual_seed(0)) * 0.5
    whole = branch.reconstruct(l_t, None, tile_above=1000)
    assert calls == [(160, 104)]
    calls.clear()
    tiles = branch.reconstruct(l_t, None, tile_above=128)
    assert len(calls) == 2 * 2 and all(max(shape) <= 96 for shape in calls)  # 160 → 2 tiles, 104 → 2
    assert tiles.shape == whole.shape == (1, 3, 1280, 832) and torch.isfinite(tiles).all()


def test_val_data_folder_is_validated_never_trained(photos, tmp_path):
    held_out = write_photos(tmp_path / "kodak-like", count=2, size=(176, 192))
    for path in held_out.iterdir():
        path.rename(path.with_name(f"val-{path.name}"))
    config = TrainConfig(**{**FAST, "steps": 1, "holdout": 0}, val_data=(str(held_out),))
    run = TrainingRun(config, [photos], tmp_path / "run", _info(0, 1), "")
    assert {p.name for p in run.eval_paths} == {"val-photo0.png", "val-photo1.png"}
    assert not {p.name for p in run.train_paths} & {p.name for p in run.eval_paths}
    summary = run.run(resume=False)
    assert set(summary["held_out"]["images"]) == {"val-photo0.png", "val-photo1.png"}


def test_missing_metric_weights_fail_at_the_start(photos, tmp_path):
    config = TrainConfig(**{**FAST, "steps": 1}, val_metrics_weights=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"val_metrics_weights: .*alexnet.safetensors not found"):
        TrainingRun(config, [photos], tmp_path / "run", _info(0, 1), "")
