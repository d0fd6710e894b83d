"""The chat panel, in process, against the real server."""

from __future__ import annotations

import asyncio
import json

from rocm_nb import Client, LocalModel
from rocm_nb.widgets import ChatPanel, _bubble_html, _plain_html, render_markdown


async def test_a_conversation_with_history_stats_and_prompt_cache(model: LocalModel) -> None:
    panel = model.panel(system="You are a helpful assistant.", temperature=0.0, max_tokens=24)
    await panel.send("Name a fruit.")
    assert [m["role"] for m in panel.history] == ["user", "assistant"]
    assert panel.history[1]["content"]
    assert "tokens" in panel.stats.value
    assert len(panel.transcript.children) == 2
    assert "rocm-nb-assistant" in panel.transcript.children[1].value
    first = panel.last
    await panel.send("Name another one.")
    second = panel.last
    assert first is not None and second is not None and second.timings is not None
    # turn 2 re-sends turn 1, and the server takes that prefix from its cache
    assert (second.timings.cached_tokens or 0) >= (first.timings.prompt_tokens if first.timings else 1)
    assert "from cache" in panel.stats.value
    exported = panel.export()
    assert exported[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert json.loads(json.dumps(exported)) == exported
    panel.clear()
    assert panel.history == [] and panel.transcript.children == ()


async def test_stop_cancels_the_reply_on_the_server(model: LocalModel) -> None:
    panel = model.panel(temperature=0.0, max_tokens=3000)
    task = panel.send("Write a very long story about a lighthouse keeper.")
    assert panel.busy and not panel.stop_button.disabled
    bubble_start = None
    empty_bubble = _bubble_html("assistant", _plain_html("▌"))
    for _ in range(200):
        await asyncio.sleep(0.02)
        if len(panel.transcript.children) == 2 and panel.transcript.children[1].value != empty_bubble:
            bubble_start = panel.transcript.children[1].value
            break
    assert bubble_start is not None
    panel.stop()
    await task
    assert "stopped" in panel.stats.value
    assert panel.send_button.disabled is False and panel.stop_button.disabled is True
    for _ in range(100):
        if model.metrics()["llamacpp:requests_processing"] == 0:
            break
        await asyncio.sleep(0.02)
    assert model.metrics()["llamacpp:requests_processing"] == 0


async def test_send_by_enter_and_errors_show_in_the_panel() -> None:
    dead = Client("http://127.0.0.1:9")  # nothing listens on the discard port
    panel = ChatPanel(dead)
    panel.prompt.value = "Hello?"  # what pressing Enter does with continuous_update=False
    assert panel.prompt.value == ""
    assert panel._task is not None
    await panel._task
    assert "error" in panel.stats.value
    assert "rocm-nb-error" in panel.transcript.children[-1].value


def test_markdown_is_rendered_and_html_escaped() -> None:
    assert "<strong>" in render_markdown("**bold**")
    assert "<script>" not in render_markdown("<script>alert(1)</script>")
