"""A Jupyter server and a Chromium page of a test's own, for the browser tests.

:func:`serve` starts JupyterLab or Notebook 7 (temporary config, data,
runtime, settings and workspace directories; nothing reaches the network) on
a free port with a random token, and stops it as one process tree, kernels
and their llama-servers included, whatever happened. :func:`open_page` is
Debian's Chromium (``/usr/bin/chromium``, never a downloaded one) under
Playwright.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
"""Where screenshots go."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAB_OPTIONS = (
    "--LabApp.news_url=None",
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.extension_manager=readonly",
)
"""JupyterLab without news, update checks or the extension manager's calls out (the tests reach nothing)."""

WAIT_MS = 120_000
"""A hang guard, not a measurement: on two cores busy with other suites, 300 tokens took over 60 s."""

FRONT_ENDS = {"notebook": ("notebooks", ()), "jupyterlab": ("lab/tree", LAB_OPTIONS)}
"""Each front end a test runs in: its app -> (where a notebook opens, the server's options)."""


@dataclass(frozen=True)
class Lab:
    url: str
    token: str
    log: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def isolated_env(base: Path) -> dict[str, str]:
    """This process's environment with every Jupyter/IPython directory moved under ``base``."""
    dirs = {
        "JUPYTER_CONFIG_DIR": base / "config",
        "JUPYTER_DATA_DIR": base / "data",
        "JUPYTER_RUNTIME_DIR": base / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": base / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": base / "lab-workspaces",
        "IPYTHONDIR": base / "ipython",
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    # Never ask about, nor fetch, news and updates.
    notification = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
    env.update({k: str(v) for k, v in dirs.items()})
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    return env


def get_status(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        status: int = response.status
        return status


def stop_tree(proc: subprocess.Popen[bytes], url: str, token: str) -> None:
    """Shut JupyterLab down politely, then kill whatever is left of its process tree."""
    try:
        tree = [psutil.Process(proc.pid)]
        tree += tree[0].children(recursive=True)  # kernels and their llama-servers
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        request = urllib.request.Request(
            f"{url}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
        )
        with contextlib.suppress(OSError):
            urllib.request.urlopen(request, timeout=5).close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(tree, timeout=10)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)



def write_notebook(path: Path, sources: Sequence[str]) -> None:
    """A notebook of code cells, one per source, with no outputs, for the test's Jupyter to open."""
    cells: list[dict[str, object]] = [
        {"cell_type": "code", "execution_count": None, "id": f"cell-{i}", "metadata": {}, "outputs": [],
         "source": source}
        for i, source in enumerate(sources)
    ]
    kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    notebook = {"cells": cells, "metadata": {"kernelspec": kernelspec, "language_info": {"name": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook, indent=1))


@contextlib.contextmanager
def serve(app: str, root: Path, base: Path, extra: Sequence[str] = ()) -> Iterator[Lab]:
    """``python -m app`` (``jupyterlab`` or ``notebook``) serving ``root``, its state under ``base``."""
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    log_path = base / f"{app}.log"
    argv = [sys.executable, "-m", app, "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False", *extra]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env=isolated_env(base), cwd=root, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    server = Lab(url, token, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{app} exited with {proc.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(OSError):
                if get_status(f"{url}/api/status", token) == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{app} did not answer within 60 s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        stop_tree(proc, url, token)


@dataclass(frozen=True)
class FrontEnd:
    """A Jupyter front end serving a test's notebook: its app, its server, where a notebook opens."""

    app: str
    server: Lab
    path: str

    def log_tail(self) -> str:
        return self.server.log_tail()


@contextlib.contextmanager
def serve_notebook(app: str, base: Path, notebook: str, cells: Sequence[str]) -> Iterator[FrontEnd]:
    """``app`` (a key of :data:`FRONT_ENDS`) serving a root under ``base`` that holds ``notebook`` of ``cells``."""
    root = base / "root"
    root.mkdir()
    write_notebook(root / notebook, cells)
    path, options = FRONT_ENDS[app]
    with serve(app, root, base, options) as server:
        yield FrontEnd(app, server, path)


@contextlib.contextmanager
def open_page(profile: Path) -> Iterator[Page]:
    """A page in headless Chromium (a persistent profile under ``profile``), with generous timeouts."""
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)  # expect's own default is 5 s
            yield page
        finally:
            context.close()


def cell(page: Page, index: int) -> Locator:
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def run(page: Page, index: int, *, idempotent: bool = False) -> Locator:
    """Click into cell ``index``'s editor and press Shift+Enter; wait until the kernel has it.

    The key goes only to a focused editor (on a loaded machine focus can lag
    behind the click). For an ``idempotent`` cell a key press that JupyterLab
    dropped while still settling after page load is repeated once.
    """
    target = cell(page, index)
    target.locator(".jp-InputArea-editor").click()
    expect(target.locator(".cm-editor")).to_have_class(re.compile(r"\bcm-focused\b"))
    page.keyboard.press("Shift+Enter")
    prompt = target.locator(".jp-InputPrompt")
    if idempotent:
        try:
            expect(prompt).not_to_have_text("[ ]:", timeout=10_000)
        except AssertionError:
            target.locator(".jp-InputArea-editor").click()
            expect(target.locator(".cm-editor")).to_have_class(re.compile(r"\bcm-focused\b"))
            page.keyboard.press("Shift+Enter")
    expect(prompt).not_to_have_text("[ ]:")
    return target


def shoot(page: Page, name: str) -> None:
    """Save a screenshot of ``page`` as ``test-artifacts/browser/<name>``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / name)


@contextlib.contextmanager
def notebook_page(server: Lab, path: str, profile: Path, *, first: int, load: int, prefix: str,
                  loaded: str = "smollm2-135m") -> Iterator[Page]:
    """``server``'s page at ``path`` (a notebook), its kernel idle and cell ``load`` (``%rocm_load``) run.

    Waits for cell ``first`` to show and for ``load`` to say the model called
    ``loaded`` is ready; if setting up fails, keeps a screenshot
    (``<prefix>failure-setup.png``) and prints the server's log.
    """
    with open_page(profile) as page:
        try:
            page.goto(f"{server.url}/{path}?token={server.token}")
            expect(cell(page, first)).to_be_visible()
            expect(page.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute("data-status", "idle")
            run(page, load, idempotent=True)  # %rocm_load attaches if it already ran
            expect(cell(page, load).locator(".jp-OutputArea")).to_contain_text(f"✓ {loaded}")
        except BaseException:
            with contextlib.suppress(Exception):
                shoot(page, f"{prefix}failure-setup.png")
            print(f"Jupyter log:\n{server.log_tail()}")
            raise
        yield page


@contextlib.contextmanager
def shot_on_failure(request: pytest.FixtureRequest, server: str, *, prefix: str) -> Iterator[None]:
    """Around one test: if it fails, screenshot its ``page`` (``<prefix>failure-<test>.png``) and print the log
    of the fixture named ``server``."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed and "page" in request.fixturenames:
        with contextlib.suppress(Exception):
            shoot(request.getfixturevalue("page"), f"{prefix}failure-{request.node.name}.png")
        print(f"Jupyter log:\n{request.getfixturevalue(server).log_tail()}")
