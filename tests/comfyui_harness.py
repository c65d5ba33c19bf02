"""Helpers for tests against a real ComfyUI: find the checkout, run a server, convert workflows,
drive the frontend.

The checkout is taken from ``COMFYUI_PATH`` or ``~/comfy/ComfyUI``. The server runs on 127.0.0.1
on a free port, on the CPU, with its own temporary base directory (models, input, output,
custom_nodes, user) and an in-memory database, so nothing is written into the checkout.

Where no checkout (or no chromium) is found these tests skip; ``tests/conftest.py`` then ends the
run with one line counting them, and fails the run when the environment variable ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Page

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_NAME = "comfyui-cadc"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CHROMIUM = Path(os.environ.get("CADC_CHROMIUM", "/usr/bin/chromium"))
"""The browser the frontend tests drive (Debian's chromium; playwright's own browsers are not used)."""
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


def find_comfyui() -> tuple[Path | None, str]:
    """The ComfyUI checkout to test against, or None and the reason there is none."""
    configured = os.environ.get("COMFYUI_PATH")
    candidate = Path(configured).expanduser() if configured else Path.home() / "comfy" / "ComfyUI"
    if not (candidate / "main.py").is_file():
        source = "COMFYUI_PATH" if configured else "the default location"
        return None, f"no ComfyUI checkout at {candidate} ({source}); set COMFYUI_PATH to a checkout"
    return candidate, ""


def browser_skip_reason() -> str:
    """Why the frontend tests cannot run here ("" when chromium and playwright are both present)."""
    if not CHROMIUM.exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set CADC_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (pip install playwright)"
    return ""


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """A ComfyUI server process with the pack linked into its custom_nodes folder.

    ``extra_args`` are added to ComfyUI's command line (e.g. ``--extra-model-paths-config``).
    """

    def __init__(self, comfy_dir: Path, base_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.comfy_dir = comfy_dir
        self.base_dir = base_dir
        self.extra_args = extra_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_dir / "comfyui.log"
        self.process: subprocess.Popen[bytes] | None = None
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models/checkpoints"):
            (base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = base_dir / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def start(self, timeout: float = 180.0) -> None:
        """Start the server and wait until it answers."""
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
            "--disable-auto-launch", "--disable-api-nodes", *self.extra_args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats")
                return
            except OSError:
                time.sleep(0.5)  # polling interval while waiting for the server to answer
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the server's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def get_json(self, path: str) -> Any:
        return json.loads(self.get_bytes(path))

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def post_json(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                data = response.read()
                return json.loads(data) if data else None
        except urllib.error.HTTPError as error:
            raise RuntimeError(
                f"POST {path} -> {error.code}: {error.read().decode(errors='replace')}"
            ) from None

    def run_prompt(self, prompt: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        """Queue an API-format prompt, wait for it, and return its history entry."""
        prompt_id = self.post_json("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    messages = json.dumps(status.get("messages"), indent=1)[-4000:]
                    raise RuntimeError(f"prompt failed: {messages}\n{self.log_tail(3000)}")
                return entry
            time.sleep(0.25)  # polling interval of /history
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")


def widget_names(node_info: dict[str, Any]) -> list[str]:
    """Names of a node's widget inputs in the order the frontend stores their values.

    ``control_after_generate`` adds a second stored value after its widget; it is returned as
    an empty name so that the values line up.
    """
    names: list[str] = []
    for section in ("required", "optional"):
        for name, spec in node_info["input"].get(section, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list) or kind in WIDGET_TYPES:
                names.append(name)
                if options.get("control_after_generate"):
                    names.append("")
    return names


def ui_to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """Convert a UI-format workflow (what the frontend saves) to an API-format prompt.

    Widget values are matched to widget inputs by position (extra trailing values, such as
    LoadImage's upload button, are ignored); linked inputs become ``[node_id, output_slot]``.
    Muted and bypassed nodes are not supported (the bundled workflows have none).
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, Any] = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} ({node['type']}) is muted or bypassed")
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values") or []
        for name, value in zip(widget_names(object_info[node["type"]]), values, strict=False):
            if name:
                inputs[name] = value
        for socket_ in node.get("inputs", []):
            if socket_.get("link") is not None:
                _, origin, origin_slot, *_ = links[socket_["link"]]
                inputs[socket_["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


@contextmanager
def frontend_page(server: ComfyServer, viewport: tuple[int, int] = (1600, 1000)) -> Iterator[Page]:
    """A headless chromium page on the server's frontend, with the graph and the pack's nodes ready.

    The tutorial/template picker of a first start is switched off. Page errors are collected in
    ``page.cadc_errors``.
    """
    from playwright.sync_api import sync_playwright

    server.post_json("/settings/Comfy.TutorialCompleted", True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            errors: list[str] = []
            page.cadc_errors = errors  # type: ignore[attr-defined]
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url, wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_function("!!window.comfyAPI?.app?.app?.graph", timeout=60_000)
            page.wait_for_function("!!LiteGraph.registered_node_types['CADCLoadBitstream']", timeout=30_000)
            yield page
        finally:
            browser.close()


def next_frames(page: Page, frames: int = 2) -> None:
    """Wait until the page has drawn ``frames`` more animation frames (the canvas is up to date)."""
    page.evaluate(
        "(n) => new Promise((done) => { const step = (k) => k ? requestAnimationFrame(() => step(k - 1)) : done();"
        " step(n); })",
        frames,
    )


def checkpoint_with_metadata(source: Path, target: Path, metadata: dict[str, str]) -> Path:
    """Copy a ``.safetensors`` file, adding ``metadata`` to its header; the tensor bytes are copied as is.

    Used to give the random SD 2.x checkpoint ComfyUI loads the diffusers configs that the CLI's
    single-file loader needs for its non-SD-Turbo sizes, so both decode from the same file.
    """
    with open(source, "rb") as src:
        (header_len,) = struct.unpack("<Q", src.read(8))
        header = json.loads(src.read(header_len))
        header["__metadata__"] = {**header.get("__metadata__", {}), **metadata}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        temporary = target.with_name(f".{target.name}.tmp")
        with open(temporary, "wb") as dst:
            dst.write(struct.pack("<Q", len(encoded)))
            dst.write(encoded)
            shutil.copyfileobj(src, dst, 16 << 20)
    os.replace(temporary, target)
    return target


class SkipSummary:
    """Pytest plugin: no silent skips of the real-ComfyUI tests.

    Tests marked ``comfyui`` (a real ComfyUI checkout) or ``browser`` (that checkout plus chromium)
    skip where those are missing. The run ends with one line saying how many ran and how many did
    not; with the environment variable ``CI`` set, any that did not run fail the run (exit status
    1), so a CI machine without ComfyUI never reports green. Registered by ``tests/conftest.py``.
    """

    KINDS = ("comfyui", "browser")

    def __init__(self) -> None:
        self.ran = dict.fromkeys(self.KINDS, 0)
        self.skipped = dict.fromkeys(self.KINDS, 0)
        self.reasons: dict[str, None] = {}

    def kind(self, report: Any) -> str | None:
        """"browser", "comfyui" or None for a test report (browser tests carry both markers)."""
        return next((kind for kind in reversed(self.KINDS) if kind in report.keywords), None)

    def pytest_runtest_logreport(self, report: Any) -> None:
        kind = self.kind(report)
        if kind is None:
            return
        if report.skipped and report.when in ("setup", "call"):
            self.skipped[kind] += 1
            if isinstance(report.longrepr, tuple):
                self.reasons[str(report.longrepr[2]).removeprefix("Skipped: ")] = None
        elif report.when == "call":
            self.ran[kind] += 1

    def failing(self) -> bool:
        return bool(os.environ.get("CI")) and any(self.skipped.values())

    def line(self) -> str | None:
        """The summary line, or None when the run had no such tests."""
        if not any(self.ran.values()) and not any(self.skipped.values()):
            return None
        counts = "; ".join(f"{self.ran[k]} {k} tests ran, {self.skipped[k]} did not run" for k in self.KINDS)
        reasons = f" ({'; '.join(self.reasons)})" if self.reasons else ""
        return f"CADC real-ComfyUI tests: {counts}{reasons}"

    def pytest_sessionfinish(self, session: Any, exitstatus: int) -> None:
        if self.failing() and exitstatus == 0:
            session.exitstatus = 1  # pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        line = self.line()
        if line is not None and self.failing():
            terminalreporter.write_line(f"FAILED (CI is set): {line}", red=True, bold=True)
        elif line is not None:
            terminalreporter.write_line(line)
