"""Frozen metric networks (LPIPS-Alex, DISTS, InceptionV3 for FID/KID), loaded from LOCAL files only.

The metric code is the maintained PyPI implementations (``lpips`` for LPIPS, ``torchmetrics`` for
DISTS, ``torchmetrics`` + ``torch-fidelity`` for the InceptionV3 of FID/KID); only their ImageNet
backbones come from a local weights folder (``--weights-dir`` or ``$CADC_EVAL_WEIGHTS``):

==================================  ==========  ================================================
file                                metric      content
==================================  ==========  ================================================
``alexnet.safetensors``             LPIPS       torchvision ``alexnet(weights="IMAGENET1K_V1")``
                                                state dict (only ``features.*`` is read)
``vgg16.safetensors``               DISTS       torchvision ``vgg16(weights="IMAGENET1K_V1")``
                                                state dict (only ``features.*`` is read)
``inception-2015-12-05.safetensors`` FID, KID   torch-fidelity's InceptionV3 state dict
                                                (``FeatureExtractorInceptionV3``, the TF-FID port)
==================================  ==========  ================================================

The small learned heads that ship inside the wheels are used as shipped: LPIPS v0.1 linear layers
(``lpips/weights/v0.1/alex.pth``) and DISTS α/β (``torchmetrics/.../dists_models/weights.pt``).
A missing or mismatching file raises :class:`BackboneError`; the caller skips that metric.

Nothing is downloaded: the libraries are built with their "no pretrained backbone" options and
every construction runs inside :func:`offline`, which makes any network connection raise.

``"tiny-random"`` instead of a folder builds the same architectures with seeded random weights
(FID/KID: a small random conv net) — FOR TESTS ONLY, the values mean nothing.

Conversion on a machine with internet access (once)::

    import torch, torchvision, torch_fidelity.feature_extractor_inceptionv3 as fi
    from safetensors.torch import save_file
    save_file(torchvision.models.alexnet(weights="IMAGENET1K_V1").state_dict(), "alexnet.safetensors")
    save_file(torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict(), "vgg16.safetensors")
    save_file(torch.hub.load_state_dict_from_url(fi.URL_INCEPTION_V3), "inception-2015-12-05.safetensors")
"""

from __future__ import annotations

import re
import socket
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
from safetensors.torch import load_file
from torch import nn

TINY = "tiny-random"
TINY_SEED = 20260307
WEIGHT_FILES = {
    "lpips": "alexnet.safetensors",
    "dists": "vgg16.safetensors",
    "fid": "inception-2015-12-05.safetensors",
}
"""Metric → file name expected in the weights folder (see the module docstring)."""
INCEPTION_FEATURES = 2048
_SLICE_KEY = re.compile(r"^(?:slice|stage)\d+\.(\d+)\.(weight|bias)$")


class BackboneError(FileNotFoundError):
    """A metric backbone's local file is missing or does not fit; the metric is skipped."""


class NetworkBlocked(RuntimeError):
    """A library tried to open a network connection while a metric network was being built."""


@contextmanager
def offline() -> Iterator[None]:
    """Make every socket connection in this process raise :class:`NetworkBlocked` (a download guard)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkBlocked("a metric library tried to download weights; cadc eval only loads local files")

    with mock.patch.object(socket.socket, "connect", refuse), mock.patch.object(socket, "create_connection", refuse):
        yield


def weight_file(weights_dir: str | Path, metric: str) -> Path:
    """The local file of ``metric``'s backbone; raises :class:`BackboneError` naming it if absent."""
    path = Path(weights_dir).expanduser() / WEIGHT_FILES[metric]
    if not path.is_file():
        raise BackboneError(f"{metric} skipped: {path} not found (see `cadc eval --help`, --weights-dir)")
    return path


def _load_features(net: nn.Module, path: Path, what: str) -> None:
    """Copy torchvision ``features.<i>.*`` tensors from ``path`` into ``net``'s ``slice<k>.<i>.*`` /
    ``stage<k>.<i>.*`` parameters (the layout of the LPIPS and DISTS feature stacks)."""
    source = load_file(str(path))
    state = {}
    for name, tensor in net.state_dict().items():
        match = _SLICE_KEY.match(name)
        if match is None:
            continue
        key = f"features.{match[1]}.{match[2]}"
        if key not in source or source[key].shape != tensor.shape:
            raise BackboneError(f"{path} is not a torchvision {what} state dict ({key} missing or misshapen)")
        state[name] = source[key]
    net.load_state_dict(state, strict=False)


def _seeded(build, seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_lpips(weights_dir: str | Path) -> nn.Module:
    """``lpips.LPIPS`` (AlexNet, v0.1 heads) in eval mode; call as ``net(x_hat, x, normalize=True)``
    with [B, 3, H, W] in 0..1 → [B, 1, 1, 1] distances (lower is better)."""
    import lpips

    path = None if str(weights_dir) == TINY else weight_file(weights_dir, "lpips")
    with offline(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notice for pretrained=False
        net = _seeded(lambda: lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False), TINY_SEED)
    if path is not None:
        _load_features(net.net, path, "AlexNet")
    return net.eval().requires_grad_(False)


def _vgg16_without_weights(weights: object = None) -> SimpleNamespace:
    """Stand-in for ``torchvision.models.vgg16`` inside torchmetrics' DISTS: the feature stack only,
    randomly initialised (the classifier, 120 M parameters, is never needed)."""
    from torchvision.models.vgg import cfgs, make_layers

    return SimpleNamespace(features=make_layers(cfgs["D"]))


def build_dists(weights_dir: str | Path) -> nn.Module:
    """torchmetrics' ``DISTSNetwork``; call as ``net(x_hat, x)`` with [B, 3, H, W] in 0..1 → [B]
    distances (lower is better; a batch of one gives a 0-d tensor)."""
    from torchmetrics.functional.image import dists

    path = None if str(weights_dir) == TINY else weight_file(weights_dir, "dists")
    with offline(), mock.patch.object(dists, "vgg16", _vgg16_without_weights):
        net = _seeded(dists.DISTSNetwork, TINY_SEED + 1)
    if path is not None:
        _load_features(net, path, "VGG16")
    return net.eval().requires_grad_(False)


class TinyPatchFeatures(nn.Module):
    """FOR TESTS ONLY: a seeded random conv net standing in for InceptionV3 (uint8 patches → 16-d)."""

    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=4), nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches.float() / 127.5 - 1).flatten(1)


def build_inception(weights_dir: str | Path) -> nn.Module:
    """Patch feature extractor for FID/KID: uint8 [B, 3, H, W] → [B, 2048] pool features of
    torch-fidelity's InceptionV3 (via torchmetrics' ``NoTrainInceptionV3``), or the tiny stand-in."""
    if str(weights_dir) == TINY:
        return _seeded(TinyPatchFeatures, TINY_SEED + 2).eval().requires_grad_(False)
    from torchmetrics.image.fid import NoTrainInceptionV3

    state = load_file(str(weight_file(weights_dir, "fid")))
    # torch-fidelity takes weights only as a torch.save file path; write our safetensors tensors to one.
    with tempfile.TemporaryDirectory() as folder, offline():
        converted = Path(folder) / "inception.pt"
        torch.save(state, converted)
        try:
            net = NoTrainInceptionV3("inception-v3-compat", [str(INCEPTION_FEATURES)], str(converted))
        except NetworkBlocked:
            raise
        except RuntimeError as error:
            raise BackboneError(
                f"{weight_file(weights_dir, 'fid')} is not torch-fidelity's InceptionV3: {str(error).splitlines()[0]}"
            ) from error
    return net
