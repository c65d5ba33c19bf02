"""Tiled g_a (cadc.tiled_analysis): receptive field, tile plans, and ŷ equal to the untiled encode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cadc.config import get_preset
from cadc.tiled_analysis import Footprint, axis_tiles, footprint, plan_segments, segment_tiles, tiled_analysis
from cadc.transforms import AnalysisTransform
from tests.conftest import make_photo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gradient_support(module: torch.nn.Module, x: torch.Tensor, row: int, col: int) -> tuple[int, int]:
    """First and last input row that output (row, col) depends on, from autograd (independent of footprint)."""
    x = x.clone().requires_grad_(True)
    module(x)[0, :, row, col].sum().backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3))).flatten()
    return int(rows[0]), int(rows[-1])


def _seeded_analysis(preset: str) -> AnalysisTransform:
    torch.manual_seed(0)
    return AnalysisTransform(get_preset(preset)).eval()


def test_footprint_of_tiny_g_a_is_its_gradient_support():
    g_a = _seeded_analysis("tiny")
    fp = footprint(g_a)
    assert fp.stride == 64
    x = torch.rand(1, 3, 1024, 64)
    row = 8  # output row 8 reads image rows 512 - before .. 575 + after, all inside 0..1023
    first, last = _gradient_support(g_a, x, row, 0)
    assert (first, last) == (64 * row - fp.before, 64 * row + 63 + fp.after)


def test_footprint_of_the_paper_size_first_segment_is_its_gradient_support():
    g_a = _seeded_analysis("sd-turbo")
    segment = plan_segments(g_a)[0]
    fp = segment.footprint
    assert (fp.stride, fp.before, fp.after) == (8, 43, 36)
    x = torch.rand(1, 3, 192, 24)
    first, last = _gradient_support(segment.layers, x, 12, 1)
    assert (first, last) == (8 * 12 - fp.before, 8 * 12 + 7 + fp.after)


def test_paper_size_g_a_reads_a_1543_pixel_window():
    fp = footprint(_seeded_analysis("sd-turbo"))
    assert (fp.stride, fp.before, fp.after) == (64, 771, 708)


def test_unknown_layers_are_refused_not_guessed():
    with pytest.raises(TypeError, match="no receptive-field rule"):
        footprint(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Upsample(scale_factor=2)))


@settings(max_examples=200, deadline=None)
@given(
    stride_log=st.integers(0, 4),
    outputs=st.integers(1, 60),
    before=st.integers(0, 50),
    after=st.integers(0, 50),
    max_input=st.integers(1, 400),
)
def test_axis_tiles_cover_each_output_once_with_full_halos(stride_log, outputs, before, after, max_input):
    s = 2**stride_log
    fp = Footprint(s, before, after)
    tiles = axis_tiles(outputs * s, fp, max_input)
    kept = [i for t in tiles for i in range(t.out_start, t.out_stop)]
    assert kept == list(range(outputs))
    for t in tiles:
        assert t.start % s == 0 and t.stop % s == 0 and 0 <= t.start < t.stop <= outputs * s
        assert t.start <= max(0, s * t.out_start - before)  # every input an output reads is in the tile
        assert t.stop >= min(outputs * s, s * t.out_stop + after)
        assert t.keep == slice(t.out_start - t.start // s, t.out_stop - t.start // s)
        halos = -(-before // s) * s + -(-after // s) * s
        assert t.stop - t.start <= max(max_input, halos + s)  # within budget unless one output alone exceeds it


@pytest.mark.parametrize("shape", [(448, 640), (320, 192), (64, 1024)])
def test_tiled_g_a_matches_untiled_in_float64(busy_codec, shape):
    g_a = busy_codec._float64("g_a")
    x = make_photo(*shape, seed=sum(shape))
    with torch.inference_mode():
        untiled = g_a(x.double())
        tiled = tiled_analysis(g_a, x, tile_bytes=2**20)
    rows, cols = segment_tiles(plan_segments(g_a)[0], *shape, 2**20, 8)
    assert len(rows) * len(cols) > 1
    # Same function; MKL's size-dependent GEMM blocking may change the last bit (module docstring).
    assert torch.allclose(tiled, untiled, rtol=0, atol=1e-12 * untiled.abs().max().item())


def test_tiled_encode_gives_the_untiled_file(busy_codec):
    x = make_photo(384, 512, seed=3)
    untiled = busy_codec.compress(x, tile_bytes=None)[0]
    tiled = busy_codec.compress(x, tile_bytes=2**20)[0]
    assert torch.count_nonzero(untiled.y_hat) > 1000
    assert torch.equal(tiled.y_hat, untiled.y_hat)
    assert tiled.payload == untiled.payload


def test_a_halo_one_step_short_changes_y(busy_codec):
    """The footprint is not overestimated: removing one stride step of halo breaks equality."""
    g_a = busy_codec._float64("g_a")
    plan = plan_segments(g_a)
    first = plan[0]
    s = first.footprint.stride
    short = Footprint(s, first.footprint.before - s, first.footprint.after)
    plan[0] = type(first)(first.layers, short, first.widest)
    x = make_photo(448, 448, seed=5)
    with torch.inference_mode():
        untiled = g_a(x.double())
        tiled = tiled_analysis(g_a, x, tile_bytes=2**20, segments=plan)
    assert (tiled - untiled).abs().max() > 1e-6 * untiled.abs().max()


def test_fast_path_tiles_stay_close_and_decodable(busy_codec):
    x = make_photo(320, 448, seed=11)
    tiled = busy_codec.compress(x, exact=False, tile_bytes=2**19)[0]
    decoded = busy_codec.decompress(tiled.payload, tiled.y_shape, tiled.z_shape)
    assert torch.equal(decoded.y_hat, tiled.y_hat)
    untiled = busy_codec.compress(x, exact=False, tile_bytes=None)[0]
    assert (tiled.y_hat != untiled.y_hat).float().mean() < 1e-3  # float32: a rounding flip at most here and there


_THREAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    sys.path.insert(0, sys.argv[2])
    from tests.conftest import make_busy, make_photo
    from cadc.weights import build_tiny_random
    codec = build_tiny_random()
    make_busy(codec)
    sys.stdout.write(codec.compress(make_photo(256, 384, seed=2), tile_bytes=2**19)[0].payload.hex())
    """
)


def test_tiled_encode_is_byte_identical_across_thread_counts():
    outputs = [
        subprocess.run(
            [sys.executable, "-c", _THREAD_SCRIPT, str(threads), ROOT], capture_output=True, text=True, check=True
        ).stdout
        for threads in (1, 2)
    ]
    assert outputs[0] == outputs[1] and len(outputs[0]) > 100


def test_an_image_gives_the_same_y_alone_or_in_a_batch(busy_codec):
    """The tile plan is per image: batching must not change any rounding (hence any file)."""
    g_a = busy_codec._float64("g_a")
    x = torch.cat([make_photo(320, 448, seed=s) for s in (1, 2)])
    with torch.inference_mode():
        batch = tiled_analysis(g_a, x, tile_bytes=2**20)
        for i in (0, 1):
            assert torch.equal(batch[i], tiled_analysis(g_a, x[i : i + 1], tile_bytes=2**20)[0])
