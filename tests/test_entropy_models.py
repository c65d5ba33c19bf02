"""CADC's own EntropyBottleneck / GaussianConditional against compressai's, and checkpoints either way.

Reference: compressai 1.2.8's layers and its compiled ``pmf_to_quantized_cdf`` (the comparisons
skip when compressai is hidden or missing). Everything must be *equal*, not close: the integer CDF
tables decide the bytes of every file, and the same seed must give the same initial weights
(``tiny-random``'s weights hash is pinned by the golden files).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cadc import entropy_models as ours
from cadc._compressai import COMPRESSAI_ERROR
from cadc.entropy import scale_table
from cadc.weights import build_tiny_random
from tests.compressai_hiding import hidden_env

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = sorted((ROOT / "models").glob("*.safetensors"))


@pytest.fixture(scope="module")
def reference():
    """compressai's entropy layers and CDF builder."""
    if COMPRESSAI_ERROR is not None:
        pytest.skip(f"compressai is not importable: {COMPRESSAI_ERROR}")
    from compressai import _CXX, entropy_models
    from compressai.models.utils import update_registered_buffers

    return entropy_models, _CXX, update_registered_buffers


def random_pmfs(rng: np.random.Generator) -> list[np.ndarray]:
    """PMFs the CDF builder sees and its edge cases: peaked, flat, long tails of zeros, exact halves."""
    pmfs = []
    for case in range(400):
        length = int(rng.integers(1, 3200 if case % 5 == 0 else 200))
        kind = case % 4
        if kind == 0:  # a discretised Gaussian with its tail mass, as GaussianConditional builds
            sigma = float(np.exp(rng.uniform(np.log(0.05), np.log(300))))
            x = np.arange(length) - length // 2
            pmf = np.exp(-0.5 * (x / sigma) ** 2)
            pmf = pmf / pmf.sum() * (1 - 1e-9)
        elif kind == 1:  # heavy zeros and tiny values: many zero-frequency symbols to fix
            pmf = rng.random(length) * (rng.random(length) < 0.3) * 10.0 ** rng.integers(-12, 0, length)
            pmf[rng.integers(0, length)] = 1.0
        elif kind == 2:  # exact .5 boundaries of the 16-bit scale (rounding half away from zero)
            pmf = (rng.integers(0, 64, length) + 0.5) / 2**16
        else:  # unnormalised
            pmf = rng.random(length) * rng.uniform(0.1, 3.0)
        pmfs.append(np.append(pmf, 1e-9).astype(np.float64))
    return pmfs


def test_pmf_to_quantized_cdf_matches_compressai(reference):
    _, cxx, _ = reference
    for i, pmf in enumerate(random_pmfs(np.random.default_rng(0))):
        expected = cxx.pmf_to_quantized_cdf(pmf.tolist(), 16)
        assert ours.pmf_to_quantized_cdf(torch.from_numpy(pmf)).tolist() == expected, i


@pytest.mark.parametrize("pmf", [[0.5, -0.1], [float("nan"), 1.0], [0.0, 0.0]])
def test_pmf_to_quantized_cdf_refuses_what_compressai_refuses(pmf, reference):
    _, cxx, _ = reference
    with pytest.raises(ValueError):
        cxx.pmf_to_quantized_cdf(pmf, 16)
    with pytest.raises(ValueError):
        ours.pmf_to_quantized_cdf(pmf)


def perturb(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A trained-looking state: every float tensor moved, quantiles spread around shifted medians."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if key == "quantiles":
            medians = torch.randn(value.shape[0], generator=generator) * 3
            spread = torch.rand(value.shape[0], generator=generator) * 40 + 0.3
            value = torch.stack([medians - spread, medians, medians + spread * 1.3], dim=-1)[:, None, :]
        elif value.is_floating_point() and key.split(".")[0] in ("matrices", "biases", "factors"):
            value = value + torch.randn(value.shape, generator=generator) * 0.5
        state[key] = value
    return state


@pytest.mark.parametrize("channels", [1, 16, 320])
def test_entropy_bottleneck_matches_compressai(channels, reference):
    entropy_models, _, _ = reference
    torch.manual_seed(channels)
    theirs = entropy_models.EntropyBottleneck(channels)
    torch.manual_seed(channels)
    mine = ours.EntropyBottleneck(channels)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(mine.state_dict()[key], value), key  # same initialisation, same RNG draws

    state = perturb(theirs, seed=channels)
    theirs.load_state_dict(state)
    mine.load_state_dict(state)
    z = torch.randn(2, channels, 5, 7) * 6
    for training in (False, True):
        outputs = []
        for module in (theirs, mine):
            torch.manual_seed(1)
            x = z.clone().requires_grad_(True)
            values, likelihood = module(x, training=training)
            (-torch.log2(likelihood).sum() + module.loss()).backward()
            grads = [x.grad] + [p.grad.clone() for p in module.parameters()]
            module.zero_grad()
            outputs.append((values, likelihood, module.loss(), grads))
        for a, b in zip(outputs[0][:3], outputs[1][:3], strict=True):
            assert torch.equal(a, b)
        for a, b in zip(outputs[0][3], outputs[1][3], strict=True):
            assert torch.equal(a, b)

    for dtype in (torch.float32, torch.float64):  # CADCCodec.update builds the tables in float64
        for module in (theirs, mine):
            module.to(dtype)
            assert module.update(force=True)
            module.float()
        for key in ("_quantized_cdf", "_offset", "_cdf_length"):
            assert torch.equal(getattr(mine, key), getattr(theirs, key)), (dtype, key)
    assert not mine.update()  # tables present, not forced


SCALE_TABLES = {
    "codec": scale_table(0.11, 256.0, 64),
    "compressai_default": [float(v) for v in torch.exp(torch.linspace(np.log(0.11), np.log(256), 64))],
    "one_small": [0.11],
    "one_large": [256.0],
    "wide": [0.05, 0.5, 5.0, 50.0, 500.0],
    "random": sorted(float(v) for v in np.exp(np.random.default_rng(3).uniform(-3, 6, 40))),
}


@pytest.mark.parametrize("table", SCALE_TABLES)
def test_gaussian_conditional_matches_compressai(table, reference):
    entropy_models, _, _ = reference
    levels = SCALE_TABLES[table]
    theirs = entropy_models.GaussianConditional(levels, scale_bound=0.11)
    mine = ours.GaussianConditional(levels, scale_bound=0.11)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    for module in (theirs, mine):
        module.double()
        assert module.update_scale_table(levels, force=True)
        module.float()
    for key in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"):
        assert torch.equal(getattr(mine, key), getattr(theirs, key)), key

    generator = torch.Generator().manual_seed(len(levels))
    y = torch.randn(3, 8, 6, 6, generator=generator) * 20
    scales = torch.rand(3, 8, 6, 6, generator=generator) * 30 - 1  # some below the bound
    means = torch.randn(3, 8, 6, 6, generator=generator) * 5
    for dtype in (torch.float32, torch.float64):
        for training in (False, True):
            results = []
            for module in (theirs, mine):
                torch.manual_seed(2)
                inputs = y.to(dtype).clone().requires_grad_(True)
                s = scales.to(dtype).clone().requires_grad_(True)
                values, likelihood = module.to(dtype)(inputs, s, means.to(dtype), training=training)
                (-torch.log2(likelihood)).sum().backward()
                results.append((values, likelihood, module._likelihood(inputs, s), inputs.grad, s.grad))
                module.float()
            for a, b in zip(*results, strict=True):
                assert torch.equal(a, b)


def test_update_registered_buffers_matches_compressai(reference):
    _, _, theirs = reference
    codec = build_tiny_random()
    state = codec.state_dict()
    for function in (theirs, ours.update_registered_buffers):
        fresh = ours.GaussianConditional(None, scale_bound=0.11)
        function(fresh, "gaussian_conditional", ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"],
                 state, policy="resize")
        assert fresh._quantized_cdf.shape == codec.gaussian_conditional._quantized_cdf.shape
        assert fresh.scale_table.shape == (64,)
    with pytest.raises(ValueError):
        ours.update_registered_buffers(fresh, "gaussian_conditional", ["nothing"], state)


def test_checkpoints_load_the_same_without_compressai(reference):
    """Every shipped checkpoint and tiny-random, loaded in a process without compressai: the same keys,
    weights hash and compressed file as here, with CADC's own layers and coder."""
    script = (
        "import json, sys\n"
        "from tests import compressai_hiding\n"
        "from cadc._compressai import COMPRESSAI_ERROR\n"
        "from cadc.entropy import entropy_coder\n"
        "from cadc.weights import load_checkpoint, weights_hash\n"
        "print(json.dumps({'hidden': bool(COMPRESSAI_ERROR), 'coder': entropy_coder(), **{\n"
        "    source: describe(load_checkpoint(source).codec) for source in sys.argv[1:]}}))\n"
    )
    sources = ["tiny-random", *map(str, CHECKPOINTS)]
    child = subprocess.run(
        [sys.executable, "-c", DESCRIBE + script, *sources], cwd=ROOT, env=hidden_env(),
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    without = json.loads(child.stdout.strip().splitlines()[-1])
    assert without.pop("hidden") and without.pop("coder") == "python"
    from cadc.weights import load_checkpoint

    namespace: dict = {}
    exec(DESCRIBE, namespace)
    for source in sources:
        here = namespace["describe"](load_checkpoint(source).codec)
        assert without[source] == here, source  # CADC's own layers either way; only the coder differs


def test_cadc_uses_compressais_coder_without_importing_compressai(reference):
    """The C++ coder is loaded from its file: encoding and decoding must not import the compressai
    package (up to ~320 MiB and 1.5-3 s per process: pandas, scipy, matplotlib, its model zoo)."""
    script = (
        "import sys\n"
        "from cadc.codec_io import decode_file, encode_tensor\n"
        "from cadc.entropy import entropy_coder\n"
        "from cadc.weights import load_checkpoint\n"
        "from tests.conftest import make_photo\n"
        "codec = load_checkpoint(sys.argv[1]).codec\n"
        "encoded = encode_tensor(codec, make_photo(64, 128, seed=5))[0]\n"
        "decode_file(codec, encoded.file)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('compressai', 'pandas', 'scipy', 'matplotlib')\n"
        "               and m != 'compressai.ans')\n"
        "print(entropy_coder(), heavy)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(CHECKPOINTS[0])], cwd=ROOT, capture_output=True, text=True,
        timeout=600, check=False,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["compressai", "[]"]


DESCRIBE = """
def describe(codec):
    from cadc.codec_io import encode_tensor
    from cadc.weights import weights_hash
    from tests.conftest import make_photo
    state = codec.state_dict()
    encoded = encode_tensor(codec, make_photo(64, 128, seed=5))[0]
    return {
        "keys": {k: list(v.shape) for k, v in state.items()},
        "weights_hash": weights_hash(codec).hex(),
        "file": encoded.file.to_bytes().hex(),
        "layers": type(codec.entropy_bottleneck).__module__,
    }
"""
