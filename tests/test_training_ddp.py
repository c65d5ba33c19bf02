"""Two CPU processes (gloo), launched like torchrun: both ranks end with identical weights."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch.multiprocessing as mp

from cadc.training.config import TrainConfig
from cadc.training.trainer import train
from tests.test_training import FAST, write_photos


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, config: dict, data: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    summary = train(TrainConfig(**config), [data], out)
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary))


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    photos = write_photos(tmp_path / "photos")
    config = {**FAST, "steps": 3, "grad_accum": 2}
    out = tmp_path / "run"
    mp.spawn(_rank, args=(2, _free_port(), config, str(photos), str(out)), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
    single = train(TrainConfig(**config), [photos], tmp_path / "single")
    assert single["parameters_sha256"] != ranks[0]["parameters_sha256"]  # the ranks did exchange gradients
    assert (out / "model.safetensors").is_file()
    assert ranks[0]["held_out"] == ranks[1]["held_out"] and ranks[0]["held_out"]["images"]  # gathered on every rank
