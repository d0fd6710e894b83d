"""The teaching widgets as a user sees them: Notebook 7 and JupyterLab in headless Chromium, driven by Playwright.

Uses the browser tests' harness (:mod:`tests.support.jupyter`: isolated
Jupyter directories, a random token, Debian's Chromium, the process tree
stopped at the end); every test runs in both front ends. Checks:

* ``%%rocm_generate --probs``: tokens are shaded; hovering one, and focusing
  one with the keyboard, shows its alternatives with percentages; "after
  sampling" asks again and redraws;
* the next-token explorer: a click on a candidate extends the text, Back
  undoes it, the temperature slider redraws the bars;
* the sampler playground: top-k 2 leaves at most two bars, Sample lists
  continuations;
* the token view: special tokens highlighted, segments with token counts.

Screenshots go to ``test-artifacts/browser/`` (``widgets-<front end>-*.png``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.support.jupyter import (
    FRONT_ENDS,
    FrontEnd,
    notebook_page,
    run,
    serve_notebook,
    shoot,
    shot_on_failure,
)

NOTEBOOK = "widgets.ipynb"
LOAD, PROBS, EXPLORE, PLAYGROUND, TOKENS = range(5)
CELLS = [
    "%load_ext rocm_nb\n%rocm_load smollm2-135m --ctx 4096\n"
    "from rocm_nb import LocalModel, NextTokenExplorer, SamplerPlayground, TokenView\n"
    "model = LocalModel('smollm2-135m', ctx_size=4096)  # the same server",
    "%%rocm_generate --probs 5 --max-tokens 16 --temperature 0.9 --seed 3\nName three colours.",
    "NextTokenExplorer(model, 'The capital of France is', k=6)",
    "SamplerPlayground(model, 'My favourite colour is', k=8, n=3, max_tokens=6, top_k=40)",
    "TokenView(model, [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi!'}])",
]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", params=sorted(FRONT_ENDS))
def front_end(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    """Notebook 7 or JupyterLab, of the test's own, serving a temporary root that holds ``widgets.ipynb``."""
    with serve_notebook(request.param, tmp_path_factory.mktemp(request.param), NOTEBOOK, CELLS) as served:
        yield served


@pytest.fixture(scope="module")
def page(front_end: FrontEnd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """``widgets.ipynb`` open in the front end, its model loaded."""
    with notebook_page(front_end.server, f"{front_end.path}/{NOTEBOOK}", tmp_path_factory.mktemp("chromium-profile"),
                       first=TOKENS, load=LOAD, prefix=f"widgets-{front_end.app}-") as page:
        yield page


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, front_end: FrontEnd) -> Iterator[None]:
    with shot_on_failure(request, "front_end", prefix=f"widgets-{front_end.app}-"):
        yield


def widget(page: Page, index: int, cls: str) -> Locator:
    target = run(page, index)
    found = target.locator(f".{cls}")
    expect(found).to_be_visible()
    return found


def test_probs_shade_tokens_and_show_alternatives_on_hover_and_focus(page: Page, front_end: FrontEnd) -> None:
    reply = widget(page, PROBS, "rocm-nb-reply")
    expect(reply).to_have_attribute("data-streaming", "false")
    tokens = reply.locator(".rocm-nb-answer .rocm-nb-tok")
    expect(tokens.first).to_be_visible()
    assert tokens.count() >= 2
    assert tokens.first.evaluate("e => getComputedStyle(e).backgroundColor") not in ("", "rgba(0, 0, 0, 0)")
    tokens.nth(1).hover()
    tip = tokens.nth(1).locator(".rocm-nb-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text("%")
    assert tip.locator(".rocm-nb-tip-row").count() >= 2, "the chosen token and its alternatives"
    shoot(page, f"widgets-{front_end.app}-01-probs-hover.png")

    page.mouse.move(0, 0)
    expect(tip).to_be_hidden()
    tokens.first.focus()  # what Tab does: the tooltip follows keyboard focus too
    expect(tokens.first.locator(".rocm-nb-tip")).to_be_visible()
    assert "alternatives:" in (tokens.first.get_attribute("aria-label") or "")

    reply.get_by_role("button", name="after sampling").click()
    expect(reply).to_have_attribute("data-mode", "post")
    expect(reply.locator(".rocm-nb-toggle")).to_contain_text("what top-k, top-p, min-p and temperature left")
    expect(reply.locator(".rocm-nb-answer .rocm-nb-tok").first).to_be_visible()
    shoot(page, f"widgets-{front_end.app}-02-probs-after-sampling.png")
    reply.get_by_role("button", name="before sampling").click()
    expect(reply).to_have_attribute("data-mode", "raw")


def test_a_click_in_the_explorer_extends_the_text_and_back_undoes_it(page: Page, front_end: FrontEnd) -> None:
    explorer = widget(page, EXPLORE, "rocm-nb-explore")
    picks = explorer.locator(".rocm-nb-pick")
    expect(picks).to_have_count(6)
    chosen = picks.first.inner_text()
    picks.first.click()
    expect(explorer).to_have_attribute("data-steps", "1")
    expect(explorer.locator(".rocm-nb-added")).to_have_count(1)
    expect(explorer).to_have_attribute("data-busy", "false")
    added = explorer.locator(".rocm-nb-added").first.inner_text()
    assert added.strip() == chosen.replace("↵", "").strip()
    shoot(page, f"widgets-{front_end.app}-03-explorer.png")

    widths = explorer.locator(".rocm-nb-bar-fill").evaluate_all("els => els.map(e => e.style.width)")
    explorer.get_by_label("temperature").fill("0")
    expect(explorer.locator(".rocm-nb-bar-fill").first).to_have_attribute("style", re.compile(r"width: 100%"))
    assert explorer.locator(".rocm-nb-bar-fill").evaluate_all("els => els.map(e => e.style.width)") != widths

    explorer.get_by_role("button", name="◀ Back").click()
    expect(explorer).to_have_attribute("data-steps", "0")
    expect(explorer.locator(".rocm-nb-added")).to_have_count(0)


def test_the_playground_redraws_and_samples(page: Page, front_end: FrontEnd) -> None:
    playground = widget(page, PLAYGROUND, "rocm-nb-playground")
    expect(playground).to_have_attribute("data-busy", "false")
    expect(playground).to_have_attribute("data-topk", "40")
    playground.get_by_label("top_k").fill("2")  # fires input and change: one request
    expect(playground).to_have_attribute("data-topk", "2")  # the bars now drawn are the server's answer to it
    assert 1 <= int(playground.get_attribute("data-kept") or 0) <= 2
    playground.get_by_role("button", name="Sample 3 continuations").click()
    expect(playground.locator(".rocm-nb-samples li")).to_have_count(3)
    shoot(page, f"widgets-{front_end.app}-04-playground.png")


def test_the_token_view_highlights_special_tokens_and_counts_segments(page: Page, front_end: FrontEnd) -> None:
    view = widget(page, TOKENS, "rocm-nb-tokenview")
    expect(view.locator(".rocm-nb-segment")).to_have_count(3)
    expect(view.locator(".rocm-nb-segment-head").first).to_contain_text("system · ")
    expect(view.locator(".rocm-nb-pill.rocm-nb-special").first).to_contain_text("<|im_start|>")
    shoot(page, f"widgets-{front_end.app}-05-token-view.png")
