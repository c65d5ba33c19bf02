"""``CADC_HIDE_COMPRESSAI=1``: run the tests as on a machine without compressai (Windows, CPython 3.13).

``tests/conftest.py`` imports this module before anything imports cadc. When the variable is set it
puts ``tests/no_compressai`` (a ``compressai`` package whose import raises ``ImportError``) first on
``sys.path`` and on ``PYTHONPATH``, so this process and every subprocess a test starts (the CLI,
fuzz workers, ComfyUI) run cadc's own entropy layers and its pure-Python rANS coder.

    CADC_HIDE_COMPRESSAI=1 pytest tests/test_codec.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HIDE_ENV = "CADC_HIDE_COMPRESSAI"
STUB_DIR = Path(__file__).resolve().parent / "no_compressai"


def requested() -> bool:
    """Whether this run asks for compressai to be hidden."""
    return os.environ.get(HIDE_ENV, "").strip() not in ("", "0")


def hidden_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's) under which a Python subprocess cannot import compressai."""
    env = dict(os.environ if env is None else env)
    env[HIDE_ENV] = "1"
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(STUB_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(STUB_DIR), *paths])
    return env


def hide() -> None:
    """Make ``import compressai`` fail in this process and in subprocesses started from now on."""
    if "compressai" in sys.modules:
        raise RuntimeError(f"{HIDE_ENV}=1, but compressai was imported before tests/conftest.py")
    if str(STUB_DIR) not in sys.path:
        sys.path.insert(0, str(STUB_DIR))
    os.environ.update(hidden_env())


if requested():
    hide()
