"""Run records (issue 13, item 2): per-step log, step checkpoints with retention, last/best, EMA,
and --resume that stays exact with all of them."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors import safe_open

from cadc.training.checkpoints import BEST_INFO_FILE, BEST_MODEL_FILE, step_checkpoints
from cadc.training.config import TrainConfig
from cadc.training.ema import EMA
from cadc.training.records import METRICS_FILE, VALIDATION_FILE, read_jsonl
from cadc.training.state import load_state
from cadc.training.trainer import MODEL_FILE, STATE_FILE, train
from cadc.weights import load_checkpoint
from tests.test_training import FAST, write_photos

RECORDED = dict(FAST, steps=4, checkpoint_every=1, keep_checkpoints=2, keep_every=2, eval_every=1, ema_decay=0.5)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def recorded_run(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, train(TrainConfig(**RECORDED), [photos], out)


def test_ema_closed_form():
    """A parameter held at c from an initial 0: after n updates the shadow is c·(1 − Π d_u),
    with d_u = min(decay, (1 + u)/(10 + u))."""
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"p": p}, decay=0.9)
    with torch.no_grad():
        p.fill_(2.0)
    product = 1.0
    for u in range(1, 40):
        ema.update(u)
        product *= min(0.9, (1 + u) / (10 + u))
        torch.testing.assert_close(ema.shadow["p"], torch.full((3,), 2.0 * (1 - product)), rtol=1e-6, atol=0)
    average = ema.shadow["p"].clone()
    with ema.applied():
        assert torch.equal(p.detach(), average)
    assert torch.equal(p.detach(), torch.full((3,), 2.0))  # the trained value comes back exactly
    assert torch.equal(ema.shadow["p"], average)


def test_per_step_log(recorded_run):
    out, summary = recorded_run
    rows = read_jsonl(out / METRICS_FILE)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert {"loss", "bpp", "aux", "quantile", "psnr", "lr", "grad_norm", "step_seconds", "rss_peak_mib"} <= set(row)
        assert all(math.isfinite(v) for v in row.values())
    assert rows[-1]["rss_peak_mib"] > 50
    assert summary["tensorboard"]  # where the events went, or why there are none


def test_checkpoint_retention_last_and_best(recorded_run):
    out, summary = recorded_run
    assert list(step_checkpoints(out)) == [2, 3, 4]  # the two newest, plus multiples of keep_every = 2
    newest = step_checkpoints(out)[4]
    for name in (MODEL_FILE, STATE_FILE):
        assert os.path.samefile(out / name, newest / name)  # "last" is the newest step's files
    validations = read_jsonl(out / VALIDATION_FILE)
    assert [v["step"] for v in validations] == [1, 2, 3, 4]  # every step; the last one is the final validation
    best = min(validations, key=lambda v: v["score"])
    info = json.loads((out / BEST_INFO_FILE).read_text())
    assert (info["step"], info["score"]) == (best["step"], best["score"])
    assert summary["best"]["step"] == best["step"]
    assert load_checkpoint(out / BEST_MODEL_FILE).codec is not None
    with safe_open(str(out / BEST_MODEL_FILE), framework="pt") as handle:
        assert json.loads(handle.metadata()["cadc.provenance"])["step"] == best["step"]


def test_exported_model_holds_the_ema(recorded_run):
    out, _ = recorded_run
    tensors = load_state(out / STATE_FILE, {}, {}, torch.device("cpu"))["tensors"]
    exported = {f"codec.{k}": v for k, v in load_checkpoint(out / MODEL_FILE).codec.named_parameters()}
    differs = 0
    for name, value in exported.items():
        assert torch.equal(value.detach(), tensors[f"ema.{name}"]), name
        differs += not torch.equal(tensors[f"weights.{name}"], tensors[f"ema.{name}"])
    assert differs > 10  # the EMA is not the trained weights


def test_resume_is_exact_with_ema_and_rewrites_the_log(photos, tmp_path):
    config = TrainConfig(**{**RECORDED, "eval_every": 0, "lr_end": FAST["lr"]})
    straight = train(config, [photos], tmp_path / "straight")
    train(config.replace(steps=2), [photos], tmp_path / "split")
    resumed = train(config, [photos], tmp_path / "split", resume=True)
    assert resumed["resumed_from"] == 2 and resumed["parameters_sha256"] == straight["parameters_sha256"]
    for name in (MODEL_FILE,):
        a = load_checkpoint(tmp_path / "straight" / name).codec.state_dict()
        b = load_checkpoint(tmp_path / "split" / name).codec.state_dict()
        for key, value in a.items():
            assert torch.equal(b[key], value), key
    assert [r["step"] for r in read_jsonl(tmp_path / "split" / METRICS_FILE)] == [1, 2, 3, 4]
