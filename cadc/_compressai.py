"""CompressAI's compiled rANS coder, loaded without the rest of compressai.

CADC's entropy layers are its own (:mod:`cadc.entropy_models`: ``EntropyBottleneck``,
``GaussianConditional``, ``update_registered_buffers``), equal to compressai 1.2.8's bit for bit —
state-dict keys, initialisation, likelihoods, gradients and CDF tables (``tests/test_entropy_models.py``
checks each against compressai). From compressai CADC takes only its C++ rANS coder, the extension
module ``compressai/ans.*.so``, loaded from its file: ``import compressai`` runs a package
``__init__`` that imports pandas, scipy, matplotlib, torch-geometric and the model zoo, for nothing
CADC uses: 1.5–3 s and ~320 MiB of resident memory in a process that only codes (compress, aux
decode; measured 2026-12-04), less in a generative decode, where diffusers and transformers bring
scipy anyway.

compressai has no wheels for Windows, CPython 3.13 or glibc < 2.34; there :mod:`cadc.rans`, a
pure-Python coder writing the same bytes, stands in (``cadc.entropy.entropy_coder`` picks the coder).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

from .entropy_models import EntropyBottleneck, GaussianConditional, update_registered_buffers

ANS_MODULE = "compressai.ans"
"""The extension's own module name (the same one compressai imports it under, so a process that
imports compressai too shares one copy)."""


def load_compressai_coder() -> ModuleType:
    """compressai's ``ans`` extension module, from its file, without importing the compressai package.

    Raises:
        ImportError: compressai is not installed, or has no compiled coder loadable here.
    """
    spec = importlib.util.find_spec("compressai")  # locates the package; does not run its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("compressai is not installed")
    folders = [Path(folder) for folder in spec.submodule_search_locations]
    for folder in folders:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = folder / f"ans{suffix}"
            if path.is_file():
                loader = importlib.machinery.ExtensionFileLoader(ANS_MODULE, str(path))
                module_spec = importlib.util.spec_from_file_location(ANS_MODULE, path, loader=loader)
                module = importlib.util.module_from_spec(module_spec)
                loader.exec_module(module)
                return module
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    raise ImportError(f"compressai at {folders[0]} has no compiled rANS coder (ans{suffix})")


try:
    _ans = load_compressai_coder()
    BufferedRansEncoder, RansDecoder = _ans.BufferedRansEncoder, _ans.RansDecoder
except Exception as error:  # not installed, or a build that does not load here: the pure-Python coder
    BufferedRansEncoder = RansDecoder = None
    COMPRESSAI_ERROR: str | None = f"{type(error).__name__}: {error}".splitlines()[0]
else:
    COMPRESSAI_ERROR = None

COMPRESSAI_AVAILABLE = COMPRESSAI_ERROR is None
"""Whether compressai's C++ rANS coder loaded."""

__all__ = [
    "COMPRESSAI_AVAILABLE",
    "COMPRESSAI_ERROR",
    "BufferedRansEncoder",
    "EntropyBottleneck",
    "GaussianConditional",
    "RansDecoder",
    "load_compressai_coder",
    "update_registered_buffers",
]
