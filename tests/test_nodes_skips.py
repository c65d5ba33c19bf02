"""No silent skips: a run where real-ComfyUI or browser tests did not run says so in one line, and
fails when the environment variable CI is set (tests.comfyui_harness.SkipSummary, registered by
tests/conftest.py)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (
    "from tests.comfyui_harness import SkipSummary\n\n"
    "def pytest_configure(config):\n"
    "    config.pluginmanager.register(SkipSummary())\n"
)
MARKERS = "[pytest]\nmarkers =\n    comfyui: real ComfyUI\n    browser: real ComfyUI and chromium\n"
TESTS = """
import pytest

REASON = "no ComfyUI checkout at /nowhere"
pytestmark = pytest.mark.comfyui

@pytest.mark.skipif(True, reason=REASON)
def test_api_a():
    pass

@pytest.mark.skipif(True, reason=REASON)
def test_api_b():
    pass

def test_api_ran():
    pass

@pytest.mark.browser
@pytest.mark.skipif(True, reason=REASON)
def test_browser():
    pass
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: bool, tests: str = TESTS):
    pytester.makeconftest(CONFTEST)
    pytester.makeini(MARKERS)
    pytester.makepyfile(test_real=tests)
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider")


def summary_lines(result) -> list[str]:
    return [line for line in result.outlines if "CADC real-ComfyUI tests" in line]


def test_in_ci_tests_that_did_not_run_fail_the_run_with_one_loud_line(pytester, monkeypatch):
    result = run(pytester, monkeypatch, ci=True)
    result.assert_outcomes(passed=1, skipped=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert summary_lines(result) == [
        "FAILED (CI is set): CADC real-ComfyUI tests: 1 comfyui tests ran, 2 did not run; "
        "0 browser tests ran, 1 did not run (no ComfyUI checkout at /nowhere)"
    ]


def test_outside_ci_the_line_says_what_ran_and_the_run_passes(pytester, monkeypatch):
    result = run(pytester, monkeypatch, ci=False)
    assert result.ret == pytest.ExitCode.OK
    assert summary_lines(result) == [
        "CADC real-ComfyUI tests: 1 comfyui tests ran, 2 did not run; "
        "0 browser tests ran, 1 did not run (no ComfyUI checkout at /nowhere)"
    ]


def test_when_all_ran_ci_passes_and_without_such_tests_nothing_is_said(pytester, monkeypatch):
    all_ran = "import pytest\n\n@pytest.mark.comfyui\ndef test_a():\n    pass\n"
    result = run(pytester, monkeypatch, ci=True, tests=all_ran)
    assert result.ret == pytest.ExitCode.OK
    assert summary_lines(result) == [
        "CADC real-ComfyUI tests: 1 comfyui tests ran, 0 did not run; 0 browser tests ran, 0 did not run"
    ]
    result = run(pytester, monkeypatch, ci=True, tests="def test_a():\n    pass\n")
    assert result.ret == pytest.ExitCode.OK and summary_lines(result) == []
