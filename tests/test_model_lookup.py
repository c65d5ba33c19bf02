"""Finding a file's model by the model id and weights hash in its header (cadc.model_lookup)."""

from __future__ import annotations

import os

import pytest

from cadc import model_lookup
from cadc.config import get_preset
from cadc.model_lookup import (
    PACKAGE_MODELS_DIR,
    TINY_RANDOM,
    ModelNotFoundError,
    checkpoint_identity,
    comfyui_cadc_folders,
    find_model,
    tiny_random_identity,
)
from cadc.weights import build_tiny_random, load_checkpoint, save_codec, weights_hash


@pytest.fixture(scope="module")
def other_codec():
    """A tiny codec with its own name and weights (seed 1)."""
    return build_tiny_random(get_preset("tiny").replace(name="lookup-test"), seed=1)


def test_tiny_random_has_an_id_no_shipped_model_has():
    ids = [checkpoint_identity(p) for p in sorted(PACKAGE_MODELS_DIR.glob("*.safetensors"))]
    assert ids and None not in ids, "every shipped file is a CADC checkpoint"
    shipped_ids = [model_id for model_id, _ in ids]
    assert tiny_random_identity()[0] == "cadc-tiny-random"
    assert len({*shipped_ids, "cadc-tiny-random"}) == len(shipped_ids) + 1, shipped_ids


def test_file_hash_equals_the_hash_of_the_loaded_codec(tmp_path, other_codec):
    path = tmp_path / "m.safetensors"
    save_codec(path, other_codec)
    loaded = load_checkpoint(path).codec  # weights_hash over the state dict of a built model
    assert checkpoint_identity(path) == ("cadc-lookup-test", weights_hash(loaded))
    for shipped in PACKAGE_MODELS_DIR.glob("*.safetensors"):
        codec = load_checkpoint(shipped).codec
        assert checkpoint_identity(shipped) == (codec.config.model_id, weights_hash(codec))


def test_hashes_are_cached_per_path_mtime_and_size(tmp_path, other_codec, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_codec(path, other_codec)
    reads = []
    real = model_lookup._read_identity
    monkeypatch.setattr(model_lookup, "_read_identity", lambda p: reads.append(p) or real(p))
    first = checkpoint_identity(path)
    assert checkpoint_identity(path) == first and len(reads) == 1
    save_codec(path, build_tiny_random(seed=2))  # same path, other weights: re-hashed
    os.utime(path, ns=(1, 1))
    assert checkpoint_identity(path) != first and len(reads) == 2


def test_find_model_searches_folders_recursively_in_order(tmp_path, other_codec):
    first, second = tmp_path / "first", tmp_path / "second" / "sub"
    second.mkdir(parents=True)
    first.mkdir()
    (first / "junk.safetensors").write_bytes(b"not a checkpoint")
    save_codec(second / "b.safetensors", other_codec)
    model_id, sha = checkpoint_identity(second / "b.safetensors")
    assert find_model(model_id, sha, [first, tmp_path / "second"], "put it").source == str(second / "b.safetensors")
    save_codec(first / "a.safetensors", other_codec)
    assert find_model(model_id, sha, [first, tmp_path / "second"], "put it").source == str(first / "a.safetensors")


def test_find_model_finds_tiny_random_last(tmp_path):
    model_id, sha = tiny_random_identity()
    match = find_model(model_id, sha, [tmp_path], "put it")
    assert match.source == TINY_RANDOM and match.is_tiny_random
    with pytest.raises(ModelNotFoundError):
        find_model(model_id, sha, [tmp_path], "put it", include_tiny_random=False)


def test_unknown_model_is_one_line_with_id_hash_and_where(tmp_path, other_codec):
    save_codec(tmp_path / "a.safetensors", other_codec)
    model_id, sha = checkpoint_identity(tmp_path / "a.safetensors")
    other_sha = bytes(32)
    with pytest.raises(ModelNotFoundError) as raised:
        find_model(model_id, other_sha, [tmp_path], "put the checkpoint into X")
    message = str(raised.value)
    assert "\n" not in message
    for part in (repr(model_id), other_sha.hex(), str(tmp_path), "put the checkpoint into X"):
        assert part in message
    # the same weights under another id are not the file's model either
    with pytest.raises(ModelNotFoundError):
        find_model("cadc-other", sha, [tmp_path], "put it")


def test_comfyui_folders_read_extra_model_paths_like_comfyui(tmp_path):
    root = tmp_path / "ComfyUI"
    root.mkdir()
    assert comfyui_cadc_folders(root) == [root / "models" / "cadc"]
    (root / "extra_model_paths.yaml").write_text(
        "mine:\n"
        "    base_path: ../shared\n"
        "    cadc: |\n"
        "        codecs\n"
        f"        {tmp_path / 'absolute'}\n"
        "    checkpoints: ckpts\n"
        "other:\n"
        "    cadc: relative/cadc\n"
        "empty:\n"
    )
    assert comfyui_cadc_folders(root) == [
        root / "models" / "cadc",
        tmp_path / "shared" / "codecs",
        tmp_path / "absolute",
        root / "relative" / "cadc",
    ]
