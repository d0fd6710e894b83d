"""What a reply may make run_tools do is bounded (issue 21, item 8), and tool replies that are not what was asked
for are said plainly (item 13).

The hostile replies are llama-server's own streamed ``delta.tool_calls`` format
(``tools/server/server-chat.cpp``, replayed by :func:`tests.test_tools._events`,
byte by byte) from a strict fake; the real server shows the bounds wired
through ``LocalModel.run_tools`` and refuses ``tool_choice="required"`` where
its template cannot call tools.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rocm_nb import Client, LocalModel
from rocm_nb.client.completion import Completion
from rocm_nb.client.tool_loop import MAX_CALLS_PER_STEP, run_tools
from rocm_nb.client.tools import read_arguments
from rocm_nb.errors import SchemaMismatch, StreamProtocolError
from rocm_nb.notebook.chat import run_bubbles
from tests.test_tools import _bytewise, _client, _events, lookup

ASK = [{"role": "user", "content": "Look these up."}]


def _counted() -> tuple[list[int], Callable[[int], str]]:
    """A tool that notes each run, and the list of its runs."""
    runs: list[int] = []

    def note(n: int) -> str:
        """Remember a number.

        Args:
            n: the number.
        """
        runs.append(n)
        return f"noted {n}"

    return runs, note


def _answers(run_messages: list[dict[str, Any]]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in run_messages if m["role"] == "tool"}


@pytest.mark.unit
def test_five_thousand_calls_in_one_reply_run_at_most_max_calls_per_step() -> None:
    tool, note = _counted()
    hostile = _client(lambda body: _events([("note", {"n": i}) for i in range(5000)], []))
    run = run_tools(hostile, ASK, [note], mode="native", max_steps=1)
    assert tool == list(range(MAX_CALLS_PER_STEP))
    assert not run.finished and run.steps == 1
    kept = run.messages[1]["tool_calls"]
    assert [c["id"] for c in kept] == [f"id{i}" for i in range(MAX_CALLS_PER_STEP)]  # the transcript stays valid
    assert _answers(run.messages) == {f"id{i}": f"noted {i}" for i in range(MAX_CALLS_PER_STEP)}
    assert run.messages[-1] == {"role": "user", "content": f"({5000 - MAX_CALLS_PER_STEP} more tool calls in that "
                                                           f"reply were not run: at most {MAX_CALLS_PER_STEP} per "
                                                           "reply.)"}


@pytest.mark.unit
def test_identical_calls_in_one_reply_run_once_and_each_id_is_answered() -> None:
    tool, note = _counted()
    hostile = _client(lambda body: _events([("note", {"n": 7})] * 200, [3]))
    run = run_tools(hostile, ASK, [note], mode="native", max_steps=1, max_calls_per_step=500)
    assert tool == [7]
    assert _answers(run.messages) == {f"id{i}": "noted 7" for i in range(200)}


@pytest.mark.unit
def test_the_total_cap_stops_the_loop_with_every_call_answered() -> None:
    tool, note = _counted()
    step = iter(range(100))

    def reply(body: dict[str, Any]) -> list[str]:
        k = next(step)
        return _events([("note", {"n": 10 * k + i}) for i in range(3)], [])

    run = run_tools(_client(reply), ASK, [note], mode="native", max_steps=5, max_calls=5)
    assert tool == [0, 1, 2, 10, 11] and not run.finished and run.steps == 2
    assert run.answer == ("(no answer: the model asked for more than max_calls=5 tool runs; raise max_calls or "
                          "simplify the question)")
    assert _answers(run.messages)["id2"] == "error: not run: 5 tools have run in this conversation (max_calls=5)"
    assert [m["role"] for m in run.messages[-3:]] == ["tool"] * 3  # each call of the last reply is answered
    with pytest.raises(ValueError, match="max_calls_per_step must be at least 1, got 0"):
        run_tools(_client(reply), ASK, [note], max_calls_per_step=0)
    with pytest.raises(ValueError, match="max_calls must be at least 1, got True"):
        run_tools(_client(reply), ASK, [note], max_calls=True)


@pytest.mark.server
def test_the_bounds_reach_the_real_servers_loop(model: LocalModel) -> None:
    tool, note = _counted()
    run = model.run_tools([{"role": "user", "content": "Remember the number 3, then the number 4."}], [note],
                          tool_choice="required", max_steps=3, max_calls=1, temperature=0, max_tokens=48)
    assert len(tool) == 1  # the first reply's call ran (the schema makes it one); a later one is refused, and said so
    refused = [m for m in run.messages if "error: not run: 1 tools have run" in str(m.get("content"))]
    assert not (refused and run.finished)


# -- item 13: replies that are not what was asked for ------------------------------------------------------


def _json_replies(*texts: str) -> Client:
    """A server whose chat replies are ``texts`` in turn (JSON mode: the reply's content is the JSON)."""
    replies = iter(texts)
    props = {"total_slots": 1, "default_generation_settings": {},
             "chat_template_caps": {"supports_tools": False, "supports_tool_calls": False}}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=props) if request.url.path == "/props" else httpx.Response(404)
        chunk = {"choices": [{"index": 0, "delta": {"content": next(replies)}, "finish_reason": "stop"}]}
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=_bytewise([json.dumps(chunk), "[DONE]"]))

    return Client("http://fake", transport=httpx.MockTransport(handler))


@pytest.mark.unit
@pytest.mark.parametrize(("reply", "said"), [
    ("[1, 2]", 'error: reply with one JSON object: {"tool": ..., "arguments": {...}} or {"answer": ...}'),
    ('"just text"', "error: reply with one JSON object"),
    ('{"tool": "lookup", "arguments": [1]}', 'error: the tool must be a name and its "arguments" a JSON object'),
    ('{"tool": "lookup", "arguments": {"word": ' + "9" * 5000 + "}}", "error: your reply has a number too long"),
])
def test_json_replies_that_are_not_a_call_or_an_answer_go_back_to_the_model(reply: str, said: str) -> None:
    run = run_tools(_json_replies(reply, '{"answer": "chat"}'), ASK, [lookup], mode="json", max_steps=2)
    assert (run.answer, run.finished) == ("chat", True)
    assert run.messages[2]["role"] == "user" and run.messages[2]["content"].startswith(said)


@pytest.mark.unit
def test_a_five_thousand_digit_argument_is_kept_raw_and_answered_as_unreadable() -> None:
    digits = "9" * 5000
    client = _client(lambda body: [json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "c1", "type": "function",
         "function": {"name": "lookup", "arguments": '{"word": ' + digits + "}"}}]}}]}),
        json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}), "[DONE]"])
    (call,) = client.chat(ASK, tools=[lookup]).tool_calls
    assert call.arguments == {} and call.raw_arguments.endswith(digits + "}")
    run = run_tools(client, ASK, [lookup], mode="native", max_steps=1)
    assert _answers(run.messages)["c1"].startswith("error: the arguments are not a JSON object that can be read")
    bubbles = "".join(run_bubbles(run))  # the chat panel shows the run, with what the model wrote
    assert "🔧 lookup({&quot;word&quot;: 999" in bubbles and "…)" in bubbles


@pytest.mark.unit
def test_json_python_will_not_read_is_a_clear_error_wherever_it_arrives() -> None:
    digits = "9" * 5000
    with pytest.raises(SchemaMismatch, match=r"the reply holds a number too long to read \(Exceeds the limit"):
        Completion('{"n": ' + digits + "}", "stop", None).json()
    events = [json.dumps({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})[:-1] + ', "n": ' + digits + "}"]
    with pytest.raises(StreamProtocolError, match="an event with a number too long or nesting too deep to read"):
        _client(lambda body: [*events, "[DONE]"]).chat(ASK)
    assert read_arguments("[" * 100_000) == {} and read_arguments('{"a": [1]}') == {"a": [1]}


@pytest.mark.unit
def test_required_on_a_template_that_cannot_call_tools_is_refused_before_any_request() -> None:
    client = _json_replies()
    with pytest.raises(ValueError, match=r"tool_choice='required' needs a chat template that can call tools"):
        client.chat(ASK, tools=[lookup], tool_choice="required")
    with pytest.raises(ValueError, match=r"tool_choice=\{'type': 'function'"):
        client.chat(ASK, tools=[lookup], tool_choice={"type": "function", "function": {"name": "lookup"}})


@pytest.mark.server
def test_required_on_the_default_models_template_is_refused_and_auto_still_answers(model: LocalModel) -> None:
    with pytest.raises(ValueError, match="use run_tools") as info:
        model.chat(ASK, tools=[lookup], tool_choice="required", max_tokens=8)
    assert "TOOL_TEMPLATE" in str(info.value)
    assert model.chat(ASK, tools=[lookup], tool_choice="auto", max_tokens=8).text
