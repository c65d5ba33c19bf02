"""The CompressAI pieces CADC uses, from compressai when it imports, else from CADC's own modules.

compressai brings the fast C++ rANS coder (``compressai.ans``) and the entropy layers. It has no
wheels for Windows or CPython 3.13 (and none for glibc < 2.34), so CADC also runs without it:
:mod:`cadc.entropy_models` provides ``EntropyBottleneck``, ``GaussianConditional`` and
``update_registered_buffers`` with the same state-dict keys and numerics, and :mod:`cadc.rans`
a pure-Python coder writing the same bytes (``cadc.entropy.entropy_coder`` picks the coder).

compressai 1.2.8 calls ``torch.jit.script`` at import time, which torch ≥ 2.10 warns about on every
run of the CLI; the warning is about compressai's internals, not something a user can act on.
"""

from __future__ import annotations

import warnings

try:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        from compressai.ans import BufferedRansEncoder, RansDecoder
        from compressai.entropy_models import EntropyBottleneck, GaussianConditional
        from compressai.models.utils import update_registered_buffers
except Exception as error:  # not installed, or a build that does not load here: run without it
    BufferedRansEncoder = RansDecoder = None
    COMPRESSAI_ERROR: str | None = f"{type(error).__name__}: {error}".splitlines()[0]
    from .entropy_models import EntropyBottleneck, GaussianConditional, update_registered_buffers
else:
    COMPRESSAI_ERROR = None

COMPRESSAI_AVAILABLE = COMPRESSAI_ERROR is None
"""Whether compressai imported; its C++ coder and layers are used when it did."""

__all__ = [
    "COMPRESSAI_AVAILABLE",
    "COMPRESSAI_ERROR",
    "BufferedRansEncoder",
    "EntropyBottleneck",
    "GaussianConditional",
    "RansDecoder",
    "update_registered_buffers",
]
