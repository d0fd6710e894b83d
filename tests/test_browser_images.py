"""An image attached in the chat panel, as a user does it: Notebook 7 and JupyterLab in headless Chromium.

Uses the browser tests' harness (:mod:`tests.support.jupyter`) and the tiny
vision model (:mod:`tests.support.vision`). In each front end the test picks a
PNG with the panel's Attach button (in the file dialogue it opens), sees its
thumbnail under the text box, sends a question, and sees the thumbnail in the
user's bubble and the reply; the thumbnails are
``data:`` URLs, so the browser asks nothing of any other address. Screenshots:
``test-artifacts/browser/images-<front end>-*.png``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import pytest
from playwright.sync_api import Page, Request, expect

from tests.support.jupyter import (
    FRONT_ENDS,
    FrontEnd,
    notebook_page,
    run,
    serve_notebook,
    shoot,
    shot_on_failure,
)
from tests.support.vision import write_tiny_vlm

matplotlib.use("Agg")
from matplotlib import pyplot as plt

NOTEBOOK = "images.ipynb"
LOAD, CHAT = range(2)
PNG_DATA_URL = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/]+=*$")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PNG the user attaches: a small line chart."""
    path = tmp_path_factory.mktemp("upload") / "sales.png"
    fig, ax = plt.subplots(figsize=(4, 3), dpi=60)
    ax.plot([1, 2, 3, 4, 5], [2, 3, 5, 4, 6], marker="o")
    ax.set_title("sales")
    fig.savefig(path)
    plt.close(fig)
    return path


@pytest.fixture(scope="module", params=sorted(FRONT_ENDS))
def front_end(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    """Notebook 7 or JupyterLab serving a notebook that loads the tiny vision model and shows a chat panel."""
    model, mmproj = write_tiny_vlm(tmp_path_factory.mktemp("vlm"))
    cells = [f"%load_ext rocm_nb\n%rocm_load {model} --mmproj {mmproj} --ctx-size 2048 --alias eyes",
             "%rocm_chat --temperature 0 --max-tokens 8"]
    with serve_notebook(request.param, tmp_path_factory.mktemp(request.param), NOTEBOOK, cells) as served:
        yield served


@pytest.fixture(scope="module")
def page(front_end: FrontEnd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with notebook_page(front_end.server, f"{front_end.path}/{NOTEBOOK}", tmp_path_factory.mktemp("chromium-profile"),
                       first=CHAT, load=LOAD, prefix=f"images-{front_end.app}-", loaded="eyes") as page:
        yield page


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, front_end: FrontEnd) -> Iterator[None]:
    with shot_on_failure(request, "front_end", prefix=f"images-{front_end.app}-"):
        yield


def test_an_image_attached_in_the_chat_panel_is_shown_and_sent(page: Page, front_end: FrontEnd,
                                                               picture: Path) -> None:
    requested: list[str] = []

    def record(request: Request) -> None:
        requested.append(request.url)

    panel = run(page, CHAT).locator(".rocm-nb-chat")
    prompt = panel.get_by_placeholder("Message (Enter to send)")
    expect(prompt).to_be_visible()
    page.on("request", record)
    try:
        with page.expect_file_chooser() as chooser:  # the Attach button opens the browser's file dialogue
            panel.get_by_role("button", name="Attach").click()
        chooser.value.set_files(picture)
        attached = panel.locator(".rocm-nb-attachments img.rocm-nb-thumbnail")
        expect(attached).to_have_count(1)
        expect(attached).to_have_attribute("src", PNG_DATA_URL)
        panel.scroll_into_view_if_needed()
        shoot(page, f"images-{front_end.app}-01-attached.png")

        prompt.fill("What trend does this show?")
        prompt.press("Enter")
        user = panel.locator(".rocm-nb-user").first
        expect(user).to_contain_text("What trend does this show?")
        thumbnail = user.locator("img.rocm-nb-thumbnail")
        expect(thumbnail).to_have_count(1)
        expect(thumbnail).to_have_attribute("src", PNG_DATA_URL)
        expect(panel.locator(".rocm-nb-attachments img")).to_have_count(0)  # sent: the strip is empty
        expect(panel.locator(".rocm-nb-assistant")).to_have_count(1)
        expect(panel.get_by_role("button", name="Send")).to_be_enabled()
        expect(panel.locator(".rocm-nb-stats")).to_contain_text("tok/s")
        expect(panel.locator(".rocm-nb-assistant").first).not_to_contain_text("▌")
        expect(panel.locator(".rocm-nb-error")).to_have_count(0)
        assert thumbnail.evaluate("img => img.complete && img.naturalWidth > 0"), "the thumbnail is drawn"
        panel.scroll_into_view_if_needed()
        shoot(page, f"images-{front_end.app}-02-sent.png")
    finally:
        page.remove_listener("request", record)
    assert [url for url in requested if not url.startswith(front_end.server.url)] == []
