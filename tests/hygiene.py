"""Test-run hygiene: nothing written to ``~/.cache`` or into the repository, and a check of it.

Importing this module calls ``redirect_caches()``; ``tests/conftest.py`` imports it first, before
the libraries that read these settings are loaded. For the rest of the run, in this process and in
every subprocess it starts:

* the caches libraries keep under the home folder go to one private temporary folder, removed
  when the run ends: ``XDG_CACHE_HOME`` (matplotlib's font cache, pip, chromium, ...),
  ``MPLCONFIGDIR``, ``HF_HOME``, ``TORCH_HOME``, ``TRITON_CACHE_DIR``, ``TORCHINDUCTOR_CACHE_DIR``;
* ``CADC_TEST_CACHE`` — where ``tests/comfy_checkpoint.py`` writes the 0.9 GB random SD 2.x
  checkpoint of the real-ComfyUI tests — defaults to that folder as well. Set it to a folder of
  your own to keep that one file between runs (``comfy-sd2-random-v<N>.safetensors``, ~0.9 GB);
* Python writes no bytecode (``__pycache__``) and hypothesis keeps no example database
  (``.hypothesis/``).

:class:`TreeGuard` records ``git status --porcelain --ignored`` (apart from ``.venv``) when the
run starts and compares it at the end, listing what appeared or vanished. With ``CI`` (or
``CADC_STRICT_TREE``) set, a difference fails the run; otherwise it is reported only, since in a
working tree that other people edit during the run their changes show up too. The bytecode of the
few modules imported before this one (``tests/conftest.py`` itself) is written before the guard
starts; run ``python -B -m pytest`` or set ``PYTHONDONTWRITEBYTECODE=1`` to avoid even those.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE_VARIABLES = {
    "XDG_CACHE_HOME": "xdg",
    "MPLCONFIGDIR": "matplotlib",
    "HF_HOME": "huggingface",
    "TORCH_HOME": "torch",
    "TRITON_CACHE_DIR": "triton",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "HYPOTHESIS_STORAGE_DIRECTORY": "hypothesis",
}
IGNORED = (".venv",)
"""Top-level paths whose status the guard ignores (the environment the suite runs in)."""

RUN_CACHE_VARIABLE = "CADC_TEST_RUN_CACHES"
"""Set to the private folder by the process that made it; subprocesses of the run reuse it."""

_private_cache: Path | None = None
_owner = False


def redirect_caches() -> Path:
    """Point home-folder caches (and ``CADC_TEST_CACHE`` unless set) at a private temporary folder,
    the one of the parent test process when there is one."""
    global _private_cache, _owner
    if _private_cache is None:
        inherited = os.environ.get(RUN_CACHE_VARIABLE)
        _owner = not (inherited and Path(inherited).is_dir())
        _private_cache = Path(tempfile.mkdtemp(prefix="cadc-test-caches-")) if _owner else Path(inherited)
        os.environ[RUN_CACHE_VARIABLE] = str(_private_cache)
        for variable, sub in CACHE_VARIABLES.items():
            os.environ[variable] = str(_private_cache / sub)
        os.environ.setdefault("CADC_TEST_CACHE", str(_private_cache / "cadc-tests"))
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        sys.dont_write_bytecode = True
        from hypothesis import settings
        from hypothesis.configuration import set_hypothesis_home_dir

        # hypothesis' pytest plugin is imported before this runs: point its storage (which it
        # creates under ./.hypothesis even without an example database) at the private folder.
        set_hypothesis_home_dir(str(_private_cache / "hypothesis"))
        settings.register_profile("cadc-no-database", database=None)
        settings.load_profile("cadc-no-database")
    return _private_cache


def remove_private_cache() -> None:
    if _private_cache is not None and _owner:
        shutil.rmtree(_private_cache, ignore_errors=True)


def tree_status() -> list[str] | None:
    """``git status --porcelain --ignored`` lines outside IGNORED, or None outside a git work tree."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--ignored"],  # never takes index.lock
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted(
        line for line in out.splitlines() if not any(line[3:].startswith(f"{path}/") for path in IGNORED)
    )


class TreeGuard:
    """Fails the run when it changed what ``git status --porcelain --ignored`` shows."""

    def __init__(self) -> None:
        self.before = tree_status()
        self.changes: list[str] = []

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        after = tree_status()
        if self.before is None or after is None:
            return
        self.changes = [f"+ {line}" for line in after if line not in self.before] + [
            f"- {line}" for line in self.before if line not in after
        ]
        if self.changes and self.strict and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @property
    def strict(self) -> bool:
        return bool(os.environ.get("CI") or os.environ.get("CADC_STRICT_TREE"))

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.changes:
            verdict = "FAILED" if self.strict else "warning"
            terminalreporter.write_line(
                f"{verdict}: the working tree changed during the run (git status --porcelain --ignored):",
                red=self.strict, yellow=not self.strict,
            )  # fmt: skip
            for line in self.changes[:20]:
                terminalreporter.write_line(f"  {line}")

    def pytest_unconfigure(self) -> None:
        remove_private_cache()


redirect_caches()
