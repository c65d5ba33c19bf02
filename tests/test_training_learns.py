"""A short codec-stage run on real photographs lowers the training objective.

Data: scikit-image's sample photographs (shipped in its wheel): astronaut, coffee and rocket to
train on, chelsea held out. The objective L = λ·R + MSE(x, x̂_aux) of the codec stage (eval mode,
R in bpp as the coder spends it) is measured on fixed 128² centre crops, for the run's starting
weights (the same run with 0 steps) and after 120 steps (64² crops, batch 8, lr 3e-3; ~7 s of CPU).

Measured here: the objective falls 20 % on the training photos (0.0899 → 0.0719) and 29 % on the
held-out photo (0.0403 → 0.0287), while the rate falls from 0.0053 to 0.0017 bpp. The test asks
for 10 % and 20 %: an optimizer that does not step, gradients that do not reach g_a/g_s/g_aux, or
a rate term that pushes the wrong way fail it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from cadc.training.config import TrainConfig
from cadc.training.objective import Objective
from cadc.training.trainer import MODEL_FILE, train
from cadc.weights import load_codec

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket")
HELD_OUT = "chelsea"
CONFIG = TrainConfig(
    stage="codec", steps=120, crop_size=64, batch_size=8, lr=3e-3, lr_end=3e-3, warmup_steps=5,
    holdout_names=(HELD_OUT,), log_every=10, checkpoint_every=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in (*TRAIN_PHOTOS, HELD_OUT):
        Image.fromarray(getattr(skimage_data, name)()).save(folder / f"{name}.png")
    return folder


def center_crop(path: Path, size: int = 128) -> torch.Tensor:
    """[1, 3, size, size] in 0..1 from the middle of an image file."""
    with Image.open(path) as image:
        left, top = (image.width - size) // 2, (image.height - size) // 2
        pixels = np.array(image.convert("RGB").crop((left, top, left + size, top + size)))
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255


@torch.no_grad()
def objective(model: Path, batch: torch.Tensor) -> dict[str, float]:
    """The codec-stage terms (eval mode: rounding, the coder's rate) on ``batch``."""
    codec = load_codec(model)
    _, terms, _ = Objective(codec, CONFIG).eval()(batch)
    return terms


def test_codec_stage_lowers_the_objective_on_real_photos(photos, tmp_path):
    start = train(CONFIG.replace(steps=0), [photos], tmp_path / "start")
    trained = train(CONFIG, [photos], tmp_path / "trained")
    assert trained["train_images"] == [f"{n}.png" for n in sorted(TRAIN_PHOTOS)]
    assert start["held_out"]["images"].keys() == {f"{HELD_OUT}.png"}

    crops = {name: center_crop(photos / f"{name}.png") for name in (*TRAIN_PHOTOS, HELD_OUT)}
    train_batch = torch.cat([crops[n] for n in TRAIN_PHOTOS])
    before = objective(tmp_path / "start" / MODEL_FILE, train_batch)
    after = objective(tmp_path / "trained" / MODEL_FILE, train_batch)
    assert after["loss"] <= 0.9 * before["loss"], (before, after)
    assert after["bpp"] < before["bpp"], (before, after)
    held_before = objective(tmp_path / "start" / MODEL_FILE, crops[HELD_OUT])
    held_after = objective(tmp_path / "trained" / MODEL_FILE, crops[HELD_OUT])
    assert held_after["loss"] <= 0.8 * held_before["loss"], (held_before, held_after)
