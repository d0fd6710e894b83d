"""Hostile GGUF metadata and file names in a real browser: JupyterLab and Notebook 7 (issue 21, item 1).

A notebook shows what rocm_nb displays of hostile files (:mod:`tests.support.hostile`: each payload that
could run sets its own ``window.__rocm_nb_pwned_<n>``): ``LocalModel(path).info``, the ``ModelInfo`` of
files whose names are payloads, the model library, the model's repr, and ``%rocm_load`` and
``%rocm_status`` on the default model copied under a hostile name and file name. Then a control cell
shows the same kind of payload as ``text/markdown``, the way ``ModelInfo`` used to: its script runs,
which proves the page runs what it is given. None of rocm_nb's payloads may have run, no output may
hold an image, an SVG, a script or a ``javascript:`` link, nothing may be fetched from the payloads'
host, and the payloads must be on the page as text.

In-process checks of every rich output are in ``tests/test_inert_output.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, Request, expect

from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model
from tests.support.hostile import FILE_NAMES, FLAG, HOSTILE, copy_with_name, write_hostile_files
from tests.support.jupyter import (
    LAB_OPTIONS,
    Lab,
    cell,
    open_page,
    run,
    serve,
    shoot,
    shot_on_failure,
    write_notebook,
)

NOTEBOOK = "inert.ipynb"
SETUP, INFO, FILES, LIBRARY, REPR, MAGICS, CONTROL = range(7)
SHOWN = (INFO, FILES, LIBRARY, REPR, MAGICS)
"""The cells whose outputs are rocm_nb's."""

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def cells(evil: Path, folder: Path) -> list[str]:
    return [
        "import shlex\nfrom pathlib import Path\nfrom IPython.display import display\nimport rocm_nb\n"
        "from rocm_nb import LocalModel\nfrom rocm_nb.modelfiles.catalog import read_info\n"
        f"EVIL = Path({str(evil)!r})\nFOLDER = Path({str(folder)!r})\nprint('ready')",
        "LocalModel(EVIL).info",
        "for file in sorted(FOLDER.glob('*.gguf')):\n    display(read_info(file))",
        "rocm_nb.models(FOLDER)",
        "LocalModel(EVIL)",
        "%load_ext rocm_nb\n"
        "get_ipython().run_line_magic('rocm_load', shlex.quote(str(EVIL)) + ' --ctx 1024 --alias evil')\n"
        "%rocm_status",
        "display({'text/markdown': '<img src=x onerror=\"window.__rocm_nb_control=1\">'}, raw=True)",
    ]


@dataclass(frozen=True)
class FrontEnd:
    app: str
    server: Lab
    path: str
    evil: Path

    def log_tail(self) -> str:
        return self.server.log_tail()


FRONT_ENDS = {"notebook": ("notebooks", ()), "jupyterlab": ("lab/tree", LAB_OPTIONS)}  # app -> (path, options)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The default model copied as a hostile file with a hostile name, and a folder of hostile small files."""
    base = tmp_path_factory.mktemp("hostile")
    evil = copy_with_name(resolve_model(DEFAULT_MODEL), base / "served" / f"{FILE_NAMES[0]} {FILE_NAMES[-2]}.gguf")
    folder = base / FILE_NAMES[1]
    write_hostile_files(folder)
    return evil, folder


@pytest.fixture(scope="module", params=sorted(FRONT_ENDS))
def front_end(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
              hostile: tuple[Path, Path]) -> Iterator[FrontEnd]:
    app: str = request.param
    base = tmp_path_factory.mktemp(app)
    root = base / "root"
    root.mkdir()
    write_notebook(root / NOTEBOOK, cells(*hostile))
    path, options = FRONT_ENDS[app]
    with serve(app, root, base, options) as server:
        yield FrontEnd(app, server, path, hostile[0])


@pytest.fixture(scope="module")
def page(front_end: FrontEnd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with open_page(tmp_path_factory.mktemp("chromium-profile")) as page:
        page.goto(f"{front_end.server.url}/{front_end.path}/{NOTEBOOK}?token={front_end.server.token}")
        expect(cell(page, CONTROL)).to_be_visible()
        expect(page.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute("data-status", "idle")
        yield page


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, front_end: FrontEnd) -> Iterator[None]:
    with shot_on_failure(request, "front_end", prefix=f"inert-{front_end.app}-"):
        yield


def run_to_end(page: Page, index: int) -> None:
    """Run cell ``index`` and wait until it has finished (its prompt shows a number)."""
    run(page, index, idempotent=index == SETUP)
    expect(cell(page, index).locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]:"))


def test_hostile_metadata_and_file_names_run_nothing_and_show_as_text(page: Page, front_end: FrontEnd) -> None:
    requested: list[str] = []

    def record(request: Request) -> None:
        requested.append(request.url)

    page.on("request", record)
    try:
        run_to_end(page, SETUP)
        expect(cell(page, SETUP).locator(".jp-OutputArea")).to_contain_text("ready")
        for index in SHOWN:
            run_to_end(page, index)
        # the name typed (the file's stem) leads the load line; the GGUF's own name follows, as text
        expect(cell(page, MAGICS).locator(".jp-OutputArea")).to_contain_text('✓ evil: <img src=x')
        expect(cell(page, MAGICS).locator(".jp-OutputArea")).to_contain_text('GGUF name "Evil <img src=x')
        run_to_end(page, CONTROL)
        # The control's script runs: this page runs what it is given as Markdown, as ModelInfo's used to be.
        page.wait_for_function("() => window.__rocm_nb_control === 1")
        shoot(page, f"inert-{front_end.app}.png")
    finally:
        page.remove_listener("request", record)

    ran = page.evaluate(f"() => Object.keys(window).filter(k => k.startsWith('{FLAG}'))")
    assert ran == [], f"payloads ran in {front_end.app}: {ran}"
    for index in SHOWN:
        output = cell(page, index).locator(".jp-OutputArea-output")  # what was shown, not the front end's icons
        for selector in ("img", "svg", "script", "iframe", "object", "a[href^='javascript']", "a[href^='data']"):
            expect(output.locator(selector)).to_have_count(0)
        # The front ends link URLs in plain text themselves (http and https only): a link to click, not a fetch.
        hrefs = output.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert all(re.match(r"https?://", href) for href in hrefs), hrefs
    assert not [url for url in requested if "exfil" in url], requested

    # The payloads are on the page, as text.
    first_line = HOSTILE.split("\n")[0]
    expect(cell(page, INFO).locator(".jp-OutputArea")).to_contain_text(first_line)
    files = cell(page, FILES).locator(".jp-OutputArea")
    expect(files).to_contain_text(f"{FILE_NAMES[0]}.gguf")
    expect(files).to_contain_text(f"{FILE_NAMES[2]}.gguf")
    expect(cell(page, LIBRARY).locator(".jp-OutputArea")).to_contain_text(f"{FILE_NAMES[3]}.gguf")
    expect(cell(page, REPR).locator(".jp-OutputArea")).to_contain_text(f"<LocalModel {FILE_NAMES[0]} title\\x1b]0;")
    expect(cell(page, MAGICS).locator(".jp-OutputArea")).to_contain_text(FILE_NAMES[0])
