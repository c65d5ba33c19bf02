"""CompressAI symbols CADC uses, imported without the deprecation noise of its import.

compressai 1.2.8 calls ``torch.jit.script`` at import time, which torch ≥ 2.10 warns about on every
run of the CLI; the warning is about compressai's internals, not something a user can act on.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    from compressai.ans import BufferedRansEncoder, RansDecoder
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.models.utils import update_registered_buffers

__all__ = [
    "BufferedRansEncoder",
    "EntropyBottleneck",
    "GaussianConditional",
    "RansDecoder",
    "update_registered_buffers",
]
