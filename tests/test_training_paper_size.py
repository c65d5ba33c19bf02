"""One Stage I and one Stage II optimisation step at the paper's shapes on the CPU (slow).

Random weights, real architectures and sizes: SD-Turbo (UNet 866 M, VAE, OpenCLIP-H text encoder;
stored in float16 as SD-Turbo ships), BLIP base, LPIPS-VGG16, CLIP ViT-L/14, DINOv2-small with
registers, the ``sd-turbo`` codec preset; 512² crops, batch 1, stage1/stage2 defaults (gradient
checkpointing on, EMA on). Each stage runs in a fresh process so that its peak RSS is its own.
Checks: only the codec, the UNet's conv_in and LoRA, and the discriminator heads change; every
frozen weight is bit-identical after the step. Peak RSS and step time are printed and written to
``paper_size_steps.json`` under the test's tmp_path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing
import resource
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(7200)]

CROP = 512
PAPER_SOURCES = Path(__file__).resolve().parents[1] / "scripts" / "gpu" / "paper_sources.py"


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy()).hexdigest()


def _write_sources(folder: str, report: str) -> None:
    """Child process: every frozen source at paper size (``scripts/gpu/paper_sources.py``)."""
    spec = importlib.util.spec_from_file_location("paper_sources", PAPER_SOURCES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Path(report).write_text(json.dumps(module.write_all(Path(folder), stage2=True, photo_size=(CROP + 64, CROP + 128))))


def _modules(run) -> dict[str, torch.nn.Module]:
    """Every network of the run, by role."""
    modules = {"codec": run.codec, "unet": run.branch.denoiser.unet, "vae": run.branch.vae}
    if run.branch.text_encoder is not None:
        modules["text_encoder"] = run.branch.text_encoder
    if run.branch.captioner is not None:
        modules["blip"] = run.branch.captioner.model
    modules |= {"lpips": run.objective.lpips, "clip": run.objective.clip}
    if run.discriminator is not None:
        modules["disc"] = run.discriminator
    return modules


def _fingerprints(run) -> dict[str, str]:
    return {
        f"{role}.{name}": _digest(p)
        for role, module in _modules(run).items()
        for name, p in module.named_parameters()
    }


def _one_step(config: dict, data: str, out: str, report: str) -> None:
    """Child process: build the run, fingerprint, one optimizer step, fingerprint again."""
    from cadc.training import distributed
    from cadc.training.config import TrainConfig
    from cadc.training.records import METRICS_FILE, read_jsonl
    from cadc.training.trainer import TrainingRun

    info = distributed.DistInfo(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    run = TrainingRun(TrainConfig(**config), [data], Path(out), info, "paper-size test")
    before = _fingerprints(run)
    trainable = {id(p) for p in run.branch.trainable_parameters()}
    adapter = [f"unet.{k}" for k, p in run.branch.denoiser.unet.named_parameters() if id(p) in trainable]
    run.run(resume=False)
    after = _fingerprints(run)
    row = read_jsonl(Path(out) / METRICS_FILE)[-1]
    Path(report).write_text(json.dumps({
        "changed": sorted(k for k in before if before[k] != after[k]),
        "unchanged": sorted(k for k in before if before[k] == after[k]),
        "adapter": adapter,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step": row,
        "dtypes": {role: sorted({str(p.dtype) for p in m.parameters()}) for role, m in _modules(run).items()},
    }))


def _spawn(target, *args) -> None:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join()
    assert process.exitcode == 0, f"{target.__name__} failed with exit code {process.exitcode}"


def _frozen(name: str, adapter: set[str]) -> bool:
    """Whether a fingerprinted parameter must stay bit-identical."""
    if name.startswith("codec.") or name.startswith("disc.heads."):
        return False
    return name not in adapter


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("paper")
    _spawn(_write_sources, str(root), str(root / "sources.json"))
    return json.loads((root / "sources.json").read_text())


def test_one_stage1_and_one_stage2_step_at_paper_shapes(sources, tmp_path):
    common = dict(
        preset="sd-turbo", crop_size=CROP, batch_size=1, steps=1, holdout=0, threads=0, log_every=1,
        checkpoint_every=0, sd_turbo=sources["sd_turbo"], lpips=sources["lpips"], clip=sources["clip"],
    )  # fmt: skip
    stage1 = {**common, "stage": "stage1"}
    stage2 = {
        **common, "stage": "stage2", "init": str(tmp_path / "s1" / "model.safetensors"),
        "blip": sources["blip"], "discriminator": sources["discriminator"],
    }  # fmt: skip
    reports = {}
    for name, config, out in (("stage1", stage1, "s1"), ("stage2", stage2, "s2")):
        _spawn(_one_step, config, sources["data"], str(tmp_path / out), str(tmp_path / f"{name}.json"))
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    summary = {}
    for name, report in reports.items():
        adapter = set(report["adapter"])
        changed, unchanged = set(report["changed"]), set(report["unchanged"])
        assert not {k for k in changed if _frozen(k, adapter)}, f"{name}: frozen weights changed"
        assert "unet.conv_in.weight" in changed and any(".lora_B." in k for k in changed)
        assert any(k.startswith("codec.g_a.") for k in changed) and any(k.startswith("codec.g_aux.") for k in changed)
        frozen = {k for k in unchanged if _frozen(k, adapter)}
        assert any(k.startswith("vae.") for k in frozen) and any(k.startswith("lpips.") for k in frozen)
        assert report["dtypes"]["unet"] == ["torch.float32"]  # float16 files, upcast on the CPU
        summary[name] = {"peak_rss_mib": report["peak_rss_mib"], "step_seconds": report["step"]["step_seconds"]}
    assert any(k.startswith("disc.heads.") for k in reports["stage2"]["changed"])
    assert any(k.startswith("blip.") for k in reports["stage2"]["unchanged"])
    assert "text_encoder" not in reports["stage1"]["dtypes"]  # released after c_fix
    (tmp_path / "paper_size_steps.json").write_text(json.dumps(summary, indent=2))
    print("paper-size steps", json.dumps(summary))
