"""Stage I and Stage II train only what the paper trains: the codec, the new UNet conv_in, the
UNet LoRA and (Stage II) the discriminator heads. Every other weight and buffer — the SD-Turbo
UNet base, VAE and text encoder, BLIP, the LPIPS and CLIP networks, the discriminator's backbone —
must be bit-identical after training to the freshly loaded tiny-random source, and to what it
was when training started.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cadc.generative.sd_turbo import SDTurboSource
from cadc.training import trainer
from cadc.training.config import TrainConfig
from cadc.training.trainer import MODEL_FILE, train
from tests.test_training import FAST, write_photos

STAND_INS = dict(sd_turbo="tiny-random", lpips="tiny-random", clip="tiny-random")
DROPPED_VAE = ("encoder.", "quant_conv.")


def frozen_modules(run) -> dict[str, torch.nn.Module]:
    """The frozen networks of a training run (``trainer.TrainingRun``); the text encoder is kept only
    when captions change the prompt, the VAE's encoder is never kept."""
    branch = run.branch
    modules = {"unet": branch.denoiser.unet, "vae": branch.vae}
    if branch.text_encoder is not None:
        modules["text_encoder"] = branch.text_encoder
    if branch.captioner is not None:
        modules["blip"] = branch.captioner.model
    if run.objective.lpips is not None:
        modules["lpips"] = run.objective.lpips
    if run.objective.clip is not None:
        modules["clip"] = run.objective.clip
    if run.discriminator is not None:
        modules["discriminator_backbone"] = run.discriminator.backbone
    return modules


def trainable(run) -> list[torch.Tensor]:
    """What the run trains: codec, adapter (conv_in + LoRA) and, in Stage II, the discriminator heads."""
    heads = list(run.discriminator.heads.parameters()) if run.discriminator is not None else []
    return [*run.branch.trainable_parameters(), *run.codec.parameters(), *heads]




def frozen_state(run) -> dict[str, torch.Tensor]:
    """Copies of every frozen parameter and buffer, by ``<network>.<state-dict key>``."""
    skip = {id(p) for p in trainable(run)}
    return {
        f"{name}.{key}": tensor.detach().clone()
        for name, module in frozen_modules(run).items()
        for key, tensor in module.state_dict(keep_vars=True).items()
        if id(tensor) not in skip
    }


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Each training run's frozen state and trainable tensors, at its start and at its end."""
    runs: list[dict] = []
    original = trainer.TrainingRun.run

    def run(self, resume: bool) -> dict:
        record = {
            "before": frozen_state(self),
            "trainable_before": [p.detach().clone() for p in trainable(self)],
        }
        summary = original(self, resume)
        record.update(
            run=self,
            after=frozen_state(self),
            trainable_after=[p.detach().clone() for p in trainable(self)],
        )
        runs.append(record)
        return summary

    monkeypatch.setattr(trainer.TrainingRun, "run", run)
    return runs


def assert_bit_identical(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], what: str) -> None:
    assert before.keys() == after.keys()
    changed = [k for k, v in before.items() if v.dtype != after[k].dtype or not torch.equal(v, after[k])]
    assert changed == [], f"{what}: {len(changed)} frozen tensors changed, e.g. {changed[:5]}"


def assert_equals_fresh_sources(record: dict) -> None:
    """The SD parts equal a fresh tiny-random load (LoRA-wrapped UNet layers: their base_layer)."""
    source = SDTurboSource("tiny-random")
    fresh = {"vae": source.load_vae(), "text_encoder": source.load_text_encoder(), "unet": source.load_unet()}
    after = record["after"]
    networks = {key.split(".")[0] for key in after}
    for name, module in fresh.items():
        if name not in networks:
            continue
        for key, tensor in module.state_dict().items():
            if (name == "unet" and key.startswith("conv_in.")) or (name == "vae" and key.startswith(DROPPED_VAE)):
                continue  # conv_in: replaced by the adapter's (trainable); the VAE encoder is not kept
            wrapped = key.rpartition(".")
            candidates = [f"{name}.{key}", f"{name}.{wrapped[0]}.base_layer.{wrapped[2]}"]
            found = [after[c] for c in candidates if c in after]
            assert found, f"{name}.{key} missing from the run"
            assert torch.equal(found[0], tensor), f"{name}.{key} differs from the fresh source"


def assert_trained(record: dict) -> None:
    pairs = zip(record["trainable_before"], record["trainable_after"], strict=True)
    changed = sum(not torch.equal(a, b) for a, b in pairs)
    assert changed >= 0.5 * len(record["trainable_before"]), "training left most trainable tensors unchanged"


def test_stage1_and_stage2_leave_every_frozen_weight_bit_identical(recorded, tmp_path: Path):
    photos = write_photos(tmp_path / "photos")
    train(TrainConfig(stage="stage1", steps=2, **STAND_INS, **FAST), [photos], tmp_path / "s1")
    stage2 = TrainConfig(
        stage="stage2", steps=2, init=str(tmp_path / "s1" / MODEL_FILE), blip="tiny-random",
        discriminator="tiny-random", **STAND_INS, **FAST,
    )  # fmt: skip
    train(stage2, [photos], tmp_path / "s2")
    assert len(recorded) == 2
    for record, stage in zip(recorded, ("Stage I", "Stage II"), strict=True):
        assert_bit_identical(record["before"], record["after"], stage)
        assert_equals_fresh_sources(record)
        assert_trained(record)
    stage1_networks = {key.split(".")[0] for key in recorded[0]["after"]}
    assert stage1_networks == {"unet", "vae", "lpips", "clip"}  # fixed prompt: encoded once, encoder dropped
    stage2_networks = {key.split(".")[0] for key in recorded[1]["after"]}
    assert stage2_networks == {*stage1_networks, "text_encoder", "blip", "discriminator_backbone"}
