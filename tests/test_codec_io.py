"""Image files → .cadc → image files, for every kind of input a user may have."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cadc.codec_io import decode_file, encode_image, encode_tensor
from cadc.container import CadcFile
from cadc.images import load_image, save_image
from cadc.weights import CheckpointError, build_tiny_random, load_checkpoint, save_codec, weights_hash
from tests.conftest import make_photo


def _rgb_array(height: int, width: int) -> np.ndarray:
    return (make_photo(height, width)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("mode", "make", "channels", "bit_depth", "out_mode"),
    [
        ("RGB", lambda a: Image.fromarray(a), 3, 8, "RGB"),
        ("L", lambda a: Image.fromarray(a[..., 0]), 1, 8, "L"),
        ("RGBA", lambda a: Image.fromarray(np.dstack([a, a[..., :1]])), 4, 8, "RGBA"),
        ("P", lambda a: Image.fromarray(a).convert("P"), 3, 8, "RGB"),
        ("I;16", lambda a: Image.fromarray(a[..., 0].astype(np.uint16) * 257), 1, 16, "I;16"),
    ],
)
def test_every_input_mode_round_trips_at_its_size(tmp_path, tiny_codec, mode, make, channels, bit_depth, out_mode):
    source = tmp_path / f"in_{mode.replace(';', '')}.png"
    make(_rgb_array(97, 131)).save(source)
    image = load_image(source)
    assert (image.channels, image.bit_depth) == (channels, bit_depth)
    encoded = encode_image(tiny_codec, image)
    header = CadcFile.from_bytes(encoded.file.to_bytes()).header
    assert (header.height, header.width, header.pad_bottom, header.pad_right) == (97, 131, 31, 61)
    decoded = decode_file(tiny_codec, encoded.file)
    assert decoded.x_aux.shape == (1, 3, 97, 131)
    output = tmp_path / "out.png"
    save_image(decoded.x_aux, output, channels=header.channels, bit_depth=header.bit_depth)
    with Image.open(output) as result:
        assert result.size == (131, 97)
        assert result.mode == out_mode


def test_batch_encode_gives_independent_files(tiny_codec):
    x = torch.cat([make_photo(64, 128, seed=s) for s in range(3)])
    encoded = encode_tensor(tiny_codec, x)
    assert len(encoded) == 3
    for item in encoded:
        assert decode_file(tiny_codec, item.file).x_aux.shape == (1, 3, 64, 128)


def test_report_counts_header_and_payload(tiny_codec):
    encoded = encode_tensor(tiny_codec, make_photo(128, 128))[0]
    report = encoded.report()
    assert report["file_bytes"] == len(encoded.file.to_bytes())
    assert report["bits_actual"] == 8 * len(encoded.compressed.payload)
    assert report["bpp"] == pytest.approx(report["bits_actual"] / (128 * 128))


def test_checkpoint_round_trip_keeps_hash_and_output(tmp_path, busy_codec):
    path = tmp_path / "busy.safetensors"
    save_codec(path, busy_codec, provenance={"note": "test"})
    loaded = load_checkpoint(path)
    assert weights_hash(loaded.codec) == weights_hash(busy_codec)
    x = make_photo(128, 192)
    assert loaded.codec.compress(x)[0].payload == busy_codec.compress(x)[0].payload


def test_checkpoint_that_does_not_match_its_config_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    codec = build_tiny_random()
    save_codec(path, codec)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    tensors["codec.g_s.head.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="do not match its config"):
        load_checkpoint(path)


def test_non_checkpoint_files_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(junk)
