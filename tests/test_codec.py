"""The learned codec: exact round trips, rate accounting, determinism, shapes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cadc.config import CodecConfig, get_preset
from cadc.model import CADCCodec
from cadc.quadtree import step_masks
from cadc.weights import build_tiny_random
from tests.conftest import make_photo


@pytest.mark.parametrize("shape", [(8, 1, 1), (8, 2, 2), (12, 3, 5), (32, 7, 4)])
def test_quadtree_masks_partition_every_element(shape):
    masks = step_masks(*shape)
    assert masks.shape == (4, *shape)
    assert torch.equal(masks.sum(0), torch.ones(shape, dtype=torch.long))


def test_quadtree_each_step_touches_every_channel_group_and_block():
    masks = step_masks(8, 4, 4)
    for k in range(4):
        # each channel group codes exactly one of the four positions of every 2x2 block
        for channel in range(8):
            blocks = masks[k, channel].reshape(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(4, 4)
            assert torch.equal(blocks.sum(1), torch.ones(4, dtype=torch.long))


def test_round_trip_reproduces_y_hat_exactly(busy_codec):
    x = make_photo(192, 128, seed=1)
    compressed = busy_codec.compress(x)[0]
    assert compressed.y_hat.abs().sum() > 0, "the busy codec should produce non-zero symbols"
    decoded = busy_codec.decompress(compressed.payload, compressed.y_shape, compressed.z_shape)
    assert torch.equal(decoded.y_hat, compressed.y_hat)
    assert decoded.l_T.shape == (1, 16, 24, 16)
    assert decoded.x_aux.shape == (1, 3, 192, 128)
    assert 0.0 <= float(decoded.x_aux.min()) and float(decoded.x_aux.max()) <= 1.0


def test_actual_bits_match_the_estimate(busy_codec):
    for seed in range(3):
        compressed = busy_codec.compress(make_photo(256, 192, seed=seed))[0]
        bits_actual = 8 * len(compressed.payload)
        # one rANS stream: the coder's 64-bit final state and 32-bit word alignment are its only framing
        assert bits_actual <= 1.01 * compressed.bits_estimated + 96, (bits_actual, compressed.bits_estimated)
        assert bits_actual >= 0.97 * compressed.bits_estimated


def test_training_rate_equals_coded_rate(busy_codec):
    """forward's likelihoods model exactly what compress codes (table-snapped σ, rounded μ)."""
    x = make_photo(128, 128, seed=4)
    with torch.no_grad():
        out = busy_codec(x)
    bits_forward_y = float(-torch.log2(out["likelihoods"]["y"]).sum())
    compressed = busy_codec.compress(x)[0]
    assert bits_forward_y == pytest.approx(compressed.bits_estimated_y, rel=0.01)


def test_batch_gives_one_bitstream_per_image(busy_codec):
    x = torch.cat([make_photo(128, 192, seed=s) for s in range(3)])
    batch = busy_codec.compress(x)
    assert len(batch) == 3
    for i, compressed in enumerate(batch):
        single = busy_codec.compress(x[i : i + 1])[0]
        assert single.payload == compressed.payload


def test_same_input_gives_identical_bytes_across_runs(busy_codec):
    x = make_photo(192, 192, seed=7)
    assert busy_codec.compress(x)[0].payload == busy_codec.compress(x)[0].payload


_THREAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    sys.path.insert(0, sys.argv[2])
    from tests.conftest import make_photo
    from cadc.weights import build_tiny_random
    from tests.conftest import make_busy
    codec = build_tiny_random()
    make_busy(codec)
    for seed in range(6):
        sys.stdout.write(codec.compress(make_photo(192 + 64 * (seed % 2), 256, seed=seed))[0].payload.hex() + "\\n")
    """
)


def test_bytes_identical_across_thread_counts_and_processes():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outputs = [
        subprocess.run(
            [sys.executable, "-c", _THREAD_SCRIPT, str(threads), root],
            capture_output=True, text=True, check=True,
        ).stdout
        for threads in (1, 2)
    ]
    assert outputs[0] == outputs[1]
    assert len(outputs[0].split()) == 6


def test_ugaq_switch_changes_the_model():
    with_ugaq = CADCCodec(get_preset("tiny"))
    without = CADCCodec(get_preset("tiny").replace(ugaq=False))
    assert with_ugaq.ugaq is not None and without.ugaq is None
    x = make_photo(64, 64)
    assert torch.all(without(x)["m"] == 1)
    # f_u starts with a zero last layer and bias -4: m = 1 + softplus(-4) ≈ 1.018 everywhere (the
    # adaptive behaviour of a trained f_u is checked on the shipped models, tests/test_ugaq_shipped.py)
    m = with_ugaq(x)["m"]
    torch.testing.assert_close(m, torch.full_like(m, 1 + math.log1p(math.exp(-4))))


def test_aux_switch_removes_g_aux(tiny_codec):
    codec = build_tiny_random(get_preset("tiny").replace(aux=False))
    assert codec.g_aux is None
    compressed = codec.compress(make_photo(64, 64))[0]
    assert codec.decompress(compressed.payload, compressed.y_shape, compressed.z_shape).x_aux is None


def test_forward_gives_gradients_to_every_trainable_part():
    codec = CADCCodec(get_preset("tiny")).train()
    out = codec(make_photo(128, 128))
    bits = -sum(torch.log2(v).sum() for v in out["likelihoods"].values())
    loss = bits + out["l_T"].pow(2).mean() + (out["x_aux"] - 0.5).pow(2).mean()
    loss.backward()
    for name in ("g_a", "h_a", "h_s", "context", "g_s", "g_aux", "ugaq"):
        grads = [p.grad for p in getattr(codec, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_rejects_sizes_that_are_not_padded(tiny_codec):
    with pytest.raises(ValueError, match="multiple of 64"):
        tiny_codec.compress(torch.rand(1, 3, 97, 131))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny_codec.compress(torch.rand(1, 1, 64, 64))


def test_decompress_rejects_shapes_of_another_model(tiny_codec):
    with pytest.raises(ValueError, match="do not fit this model"):
        tiny_codec.decompress(b"\0" * 8, (320, 2, 2), (320, 1, 1))


def test_config_json_round_trip():
    for name in ("tiny", "sd-turbo"):
        config = get_preset(name)
        assert CodecConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="newer CADC"):
        CodecConfig.from_json('{"name": "x", "brand_new_field": 1}')


def test_sd_turbo_preset_shapes_at_256():
    codec = build_tiny_random(get_preset("sd-turbo"))
    x = make_photo(256, 256)
    compressed = codec.compress(x)[0]
    assert compressed.y_shape == (320, 4, 4) and compressed.z_shape == (320, 1, 1)
    decoded = codec.decompress(compressed.payload, compressed.y_shape, compressed.z_shape)
    assert decoded.l_T.shape == (1, 320, 32, 32)
    assert decoded.x_aux.shape == (1, 3, 256, 256)
    assert torch.equal(decoded.y_hat, compressed.y_hat)


def test_prepare_builds_the_float64_copies_once():
    codec = build_tiny_random()
    codec.prepare(encoder=False)
    assert sorted(codec._float64_copies) == ["context", "h_s"]
    codec.prepare()
    copies = {name: entry[1] for name, entry in codec._float64_copies.items()}
    codec.compress(make_photo(64, 64))
    assert all(codec._float64_copies[name][1] is module for name, module in copies.items())
