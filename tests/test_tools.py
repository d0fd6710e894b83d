"""Tool calls: schemas from functions, streamed calls put together, and the run_tools loop.

The loop runs on the real default model in ``json`` mode (the server
constrains each reply with the tools' JSON schema). The pinned server's
native tool calls are checked against the real server where it can show
them (the request is accepted; the tool-aware template loads and is
reported), and the streamed ``delta.tool_calls`` format is replayed in the
shape llama-server writes it (``tools/server/server-chat.cpp``,
``server_chat_msg_diff_to_json_oaicompat``: ``index``, then ``id`` and
``type`` once, then ``function.name`` and ``function.arguments`` pieces).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rocm_nb import Client, LocalModel, ToolCall
from rocm_nb.client._accumulator import Accumulator
from rocm_nb.client.request import check_request
from rocm_nb.client.stream import AsyncTokenStream
from rocm_nb.client.tool_loop import call_tool, run_tools
from rocm_nb.client.tools import TOOL_TEMPLATE, CallParts, tool_schema, tool_schemas


def lookup(word: str, language: Literal["fr", "de"] = "fr") -> str:
    """Translate an English word.

    Args:
        word: the English word, lower case.
        language: the language to translate into.
    """
    return {"fr": {"cat": "chat"}, "de": {"cat": "Katze"}}[language].get(word, "?")


def boom(n: int) -> int:
    """Always fails."""
    raise RuntimeError(f"no luck with {n}")


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


def opaque(n: int) -> Opaque:
    """Returns something JSON cannot write."""
    return Opaque()


# -- schemas --------------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_function_becomes_an_openai_tool_from_its_hints_and_docstring() -> None:
    def f(items: list[int], note: str | None = None, *args: Any, **kwargs: Any) -> None:
        """Do things.

        More text.
        """

    assert tool_schema(lookup) == {"type": "function", "function": {
        "name": "lookup", "description": "Translate an English word.",
        "parameters": {"type": "object", "properties": {
            "word": {"type": "string", "description": "the English word, lower case."},
            "language": {"enum": ["fr", "de"], "description": "the language to translate into."}},
            "required": ["word"]}}}
    params = tool_schema(f)["function"]["parameters"]
    assert params["properties"] == {"items": {"type": "array", "items": {"type": "integer"}},
                                    "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}}
    assert params["required"] == ["items"] and tool_schema(f)["function"]["description"] == "Do things."


@pytest.mark.unit
def test_ready_schemas_pass_and_bad_tools_fail_before_any_request() -> None:
    bare = {"name": "now", "description": "The time."}
    assert tool_schema(bare)["function"]["parameters"] == {"type": "object", "properties": {}}
    assert tool_schema({"type": "function", "function": bare})["function"]["name"] == "now"
    payload = check_request("chat", [{"role": "user", "content": "x"}], {"tools": [lookup, bare],
                                                                        "tool_choice": "required"}).body("llama.cpp")
    assert [t["function"]["name"] for t in payload["tools"]] == ["lookup", "now"]
    assert payload["tool_choice"] == "required"
    with pytest.raises(ValueError, match="two tools are called lookup"):
        tool_schemas([lookup, lookup])
    with pytest.raises(ValueError, match="tool_choice must be"):
        check_request("chat", [], {"tool_choice": "always"}).body("llama.cpp")
    with pytest.raises(ValueError, match="tools must be a list"):
        check_request("chat", [], {"tools": lookup}).body("llama.cpp")  # type: ignore[typeddict-item]
    with pytest.raises(ValueError, match="needs a function name"):
        tool_schema({"description": "nameless"})


# -- streamed calls -------------------------------------------------------------------------------

arguments = st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8),
                            st.one_of(st.text(st.characters(codec="utf-8"), max_size=12), st.integers()),
                            max_size=4)


def _events(calls: list[tuple[str, dict[str, Any]]], cuts: list[int], content: str = "") -> list[str]:
    """Chunks as llama-server streams them, each call's arguments cut into pieces at ``cuts``."""
    out = [json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]})]
    if content:
        out.append(json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]}, ensure_ascii=False))
    for index, (name, args) in enumerate(calls):
        text = json.dumps(args, ensure_ascii=False)
        out.append(json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": index, "id": f"id{index}", "type": "function", "function": {"name": name}}]}}]}))
        bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
        for a, b in itertools.pairwise(bounds):
            out.append(json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": index, "function": {"arguments": text[a:b]}}]}}]}, ensure_ascii=False))
    out.append(json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
                           "timings": {"prompt_n": 3, "predicted_n": 5}}))
    return [*out, "[DONE]"]


def _bytewise(events: list[str]) -> Iterator[bytes]:
    raw = "".join(f"data: {e}\n\n" for e in events).encode()
    return (raw[i:i + 1] for i in range(len(raw)))  # every byte on its own: multi-byte characters split too


PROPS = {"total_slots": 1, "default_generation_settings": {}, "chat_template_caps": {"supports_tool_calls": True}}
"""What a llama-server whose template knows tools answers to ``GET /props`` (the fields rocm_nb reads)."""


def _client(reply: Callable[[dict[str, Any]], list[str]], seen: list[dict[str, Any]] | None = None) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            found = {"/props": PROPS, "/v1/models": {"data": [{"id": "fake.gguf"}]}}.get(request.url.path)
            return httpx.Response(200 if found else 404, json=found or {"error": "not found"})
        body = json.loads(request.content)
        if seen is not None:
            seen.append(body)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=_bytewise(reply(body)))

    return Client("http://fake", transport=httpx.MockTransport(handler))


@pytest.mark.unit
@settings(max_examples=60, deadline=None)
@given(first=arguments, second=arguments, cuts=st.lists(st.integers(min_value=0), max_size=12),
       content=st.text(st.characters(codec="utf-8"), max_size=10))
def test_streamed_tool_calls_split_at_every_byte_are_put_together(
    first: dict[str, Any], second: dict[str, Any], cuts: list[int], content: str
) -> None:
    calls = [("lookup", first), ("boom", second)]
    reply = _client(lambda body: _events(calls, cuts, content)).chat([{"role": "user", "content": "x"}],
                                                                      tools=[lookup, boom])
    assert reply.text == content and reply.finish_reason == "tool_calls"
    assert reply.tool_calls == (
        ToolCall("id0", "lookup", first, json.dumps(first, ensure_ascii=False)),
        ToolCall("id1", "boom", second, json.dumps(second, ensure_ascii=False)),
    )


@pytest.mark.unit
def test_arguments_that_are_not_a_json_object_are_kept_raw() -> None:
    parts = CallParts()
    parts.read({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "[1, "}}]})
    (call,) = parts.calls()
    assert (call.id, call.arguments, call.raw_arguments) == ("call_0", {}, "[1, ")
    assert call_tool(call, {"f": lookup}, {"f": {}}).startswith("error: the arguments are not a JSON object")


# -- running one call -----------------------------------------------------------------------------


@pytest.mark.unit
def test_call_tool_runs_only_given_functions_with_valid_arguments() -> None:
    functions = {"lookup": lookup, "boom": boom, "opaque": opaque}
    schemas = {name: tool_schema(fn)["function"]["parameters"] for name, fn in functions.items()}
    assert call_tool(ToolCall("1", "lookup", {"word": "cat", "language": "de"}), functions, schemas) == "Katze"
    assert call_tool(ToolCall("1", "exec", {}), functions, schemas) == (
        "error: there is no tool called exec; the tools are: lookup, boom, opaque")
    assert call_tool(ToolCall("1", "lookup", {"language": "es"}), functions, schemas).startswith(
        "error: the arguments do not match lookup's schema at $")
    assert call_tool(ToolCall("1", "boom", {"n": 3}), functions, schemas) == (
        "error: boom raised RuntimeError: no luck with 3")
    assert call_tool(ToolCall("1", "opaque", {"n": 1}), functions, schemas) == "<Opaque thing>"


# -- the loop, native calls in the server's own format -------------------------------------------


@pytest.mark.unit
def test_native_loop_feeds_results_back_as_tool_messages() -> None:
    seen: list[dict[str, Any]] = []

    def reply(body: dict[str, Any]) -> list[str]:
        if body["messages"][-1]["role"] == "tool":
            return [json.dumps({"choices": [{"index": 0, "delta": {"content": "It is chat."},
                                              "finish_reason": "stop"}]}), "[DONE]"]
        return _events([("lookup", {"word": "cat"})], [2, 5])

    run = run_tools(_client(reply, seen), [{"role": "user", "content": "cat in French?"}], [lookup], mode="native",
                    tool_choice="required")
    assert (run.answer, run.steps, run.finished) == ("It is chat.", 2, True)
    assert [body["tool_choice"] for body in seen] == ["required", "auto"]
    assert seen[0]["tools"] == [tool_schema(lookup)]
    assert run.messages[1]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"word": "cat"}'}
    assert run.messages[2] == {"role": "tool", "tool_call_id": "id0", "name": "lookup", "content": "chat"}


@pytest.mark.unit
def test_a_repeated_call_makes_the_model_answer_and_max_steps_is_a_clear_stop() -> None:
    seen: list[dict[str, Any]] = []
    looping = _client(lambda body: _events([("lookup", {"word": "cat"})], []), seen)
    run = run_tools(looping, [{"role": "user", "content": "?"}], [lookup], mode="native", max_steps=3)
    assert not run.finished and run.steps == 3
    assert "still calling tools after max_steps=3" in run.answer
    assert [body["tool_choice"] for body in seen] == ["auto", "auto", "none"]
    assert run.messages[4]["content"] == "chat\n(You made this call before: answer now.)"
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        run_tools(looping, [], [lookup], max_steps=0)
    with pytest.raises(TypeError, match="pass the functions themselves"):
        run_tools(looping, [], [tool_schema(lookup)])


# -- the real server --------------------------------------------------------------------------------


def translate(word: Literal["cat", "dog"], language: Literal["fr", "de"] = "fr") -> str:
    """Translate an English word (one of the few it knows).

    Args:
        word: the English word.
        language: the language to translate into.
    """
    return lookup(word, language)


CALL_TOKENS = 320
"""Room for any call these tests allow: arguments from enums or integers (at most 17 characters in llama.cpp's
grammar) and at most 22 characters of whitespace at each of the dozen places JSON allows it, so the call is
never cut at max_tokens, whatever the model picks."""


@pytest.mark.server
def test_required_tool_call_with_the_default_model_names_a_tool_and_validates(model: LocalModel) -> None:
    run = model.run_tools([{"role": "user", "content": "How do you say cat in German?"}], [translate, boom],
                          tool_choice="required", max_steps=1, temperature=0, max_tokens=CALL_TOKENS)
    assert not run.finished and "max_steps=1" in run.answer
    call = json.loads(run.messages[1]["content"])
    assert call["tool"] in ("translate", "boom")
    from jsonschema import validate

    validate(call["arguments"], tool_schema(translate if call["tool"] == "translate" else boom)["function"][
        "parameters"])
    assert run.messages[2]["role"] == "user" and run.messages[2]["content"].startswith(f"{call['tool']} returned: ")


@pytest.mark.server
@pytest.mark.parametrize(("tool", "expected"), [(boom, "boom returned: error: boom raised RuntimeError: no luck with"),
                                               (opaque, "opaque returned: <Opaque thing>")])
def test_a_failing_or_odd_tool_goes_back_to_the_model(model: LocalModel, tool: Callable[..., Any],
                                                      expected: str) -> None:
    run = model.run_tools([{"role": "user", "content": "Try the tool with 3."}], [tool], tool_choice="required",
                          max_steps=2, temperature=0, max_tokens=CALL_TOKENS)
    assert run.messages[2]["content"].startswith(expected)
    assert 1 <= run.steps <= 2 and len(run.messages) >= 3


@pytest.mark.server
def test_the_server_takes_native_tools_and_the_tool_template_loads(model: LocalModel) -> None:
    reply = model.chat([{"role": "user", "content": "Say hi."}], tools=[lookup], tool_choice="auto", max_tokens=8,
                       temperature=0.0)
    assert reply.tool_calls == () and reply.text  # SmolLM2's own template has no tools: the server writes text
    assert model.props()["chat_template_caps"]["supports_tool_calls"] is False
    with LocalModel(ctx_size=2048, extra_args=["--chat-template-file", TOOL_TEMPLATE]) as tooled:
        caps = tooled.props()["chat_template_caps"]
        assert caps["supports_tools"] and caps["supports_tool_calls"]
        reply = tooled.chat([{"role": "user", "content": "cat in French?"}], tools=[lookup], max_tokens=8)
        assert reply.finish_reason in ("length", "stop", "tool_calls")


# -- the chat panel ---------------------------------------------------------------------------------


@pytest.mark.unit
async def test_the_panel_shows_tool_calls_and_results_as_bubbles_of_their_own() -> None:
    from rocm_nb.client.tool_loop import ToolRun
    from rocm_nb.notebook.chat import ChatPanel

    raw = "".join(f"data: {e}\n\n" for e in _events([("lookup", {"word": "cat"})], [3])).encode()

    class Source:  # the async side of a server that answers with a tool call, in llama-server's format
        def achat_stream(self, messages: Any, **options: Any) -> AsyncTokenStream:
            async def respond() -> httpx.Response:
                request = httpx.Request("POST", "http://fake/v1/chat/completions")
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw,
                                      request=request)

            return AsyncTokenStream(respond, Accumulator("chat"), lambda exc, partial: None)

    panel = ChatPanel(Source(), tools=[lookup])
    await panel.send("cat in French?")
    bubbles = [child.value for child in panel.transcript.children]
    assert len(bubbles) == 3 and "rocm-nb-tool" in bubbles[2]
    assert "🔧 lookup({&quot;word&quot;: &quot;cat&quot;})" in bubbles[2]
    call = ToolCall("a", "lookup", {"word": "cat"}).message()
    run = ToolRun("chat", [{"role": "user", "content": "cat?"},
                           {"role": "assistant", "content": "", "tool_calls": [call]},
                           {"role": "tool", "tool_call_id": "a", "name": "lookup", "content": "chat"},
                           {"role": "assistant", "content": "chat"}], 2, True)
    panel.show_run(run)
    shown = [child.value for child in panel.transcript.children[3:]]
    assert ["rocm-nb-user" in shown[0], "🔧 lookup" in shown[1], "↩ lookup: chat" in shown[2]] == [True, True, True]
    assert "rocm-nb-assistant" in shown[3] and len(shown) == 4
    assert panel.history[-2:] == [{"role": "user", "content": "cat?"}, {"role": "assistant", "content": "chat"}]
