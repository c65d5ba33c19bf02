"""Shared fixtures. Everything is built locally: no downloads, no hub."""

from __future__ import annotations

from tests import compressai_hiding, hygiene  # first: caches/bytecode redirected, CADC_HIDE_COMPRESSAI applied

# isort: split
import numpy as np
import pytest
import torch

from cadc.entropy import entropy_coder_description
from cadc.model import CADCCodec
from cadc.weights import build_tiny_random
from tests.comfyui_harness import SkipSummary


def make_photo(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth, photo-like test image [1, 3, H, W] in 0..1 (gradients, blobs and an edge)."""
    generator = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for c in range(3):
        fx, fy, phase = generator.uniform(0.5, 3.0, 3)
        wave = 0.5 + 0.35 * np.sin(2 * np.pi * (fx * xx / width + fy * yy / height) + phase)
        edge = 0.15 * (xx > width * (0.3 + 0.1 * c))
        channels.append(np.clip(wave + edge + generator.normal(0, 0.03, (height, width)), 0, 1))
    return torch.from_numpy(np.stack(channels)[None].astype(np.float32))


@pytest.fixture(scope="session")
def tiny_codec() -> CADCCodec:
    """The seeded ``tiny-random`` codec."""
    return build_tiny_random()


@pytest.fixture(scope="session")
def busy_codec() -> CADCCodec:
    """``tiny-random`` with g_a's output scaled up, so that ŷ has many non-zero symbols.

    An untrained codec rounds almost everything to zero; this one exercises the entropy coder
    with many symbols in all four quadtree steps. Its σ is pinned to 4 so that the Gaussian model
    fits the symbols (an untrained σ would push most of them into escape codes)."""
    codec = build_tiny_random()
    make_busy(codec)
    return codec.eval()


def make_busy(codec: CADCCodec) -> None:
    """Scale g_a's output by 40 and pin the context networks' σ to 4 (see ``busy_codec``)."""
    channels = codec.config.y_channels
    with torch.no_grad():
        last_conv = codec.g_a.stages[-1][0]
        last_conv.weight.mul_(40.0)
        last_conv.bias.mul_(40.0)
        for step in codec.context.steps:
            step[-1].weight[channels:] = 0.0
            step[-1].bias[channels:] = 4.0


def pytest_report_header() -> str:
    hidden = " (compressai hidden: CADC_HIDE_COMPRESSAI=1)" if compressai_hiding.requested() else ""
    return f"cadc entropy coder: {entropy_coder_description()}{hidden}"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(hygiene.TreeGuard(), "cadc-tree-guard")
    config.pluginmanager.register(SkipSummary(), "cadc-real-comfyui-summary")  # no silent skips
