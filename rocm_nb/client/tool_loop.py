"""The call-and-answer loop: chat with tools until the model answers, running each call it asks for.

:func:`run_tools` calls only the functions it was given, after checking the
arguments against the function's schema (jsonschema), feeds each result (or
the tool's error) back, and stops at ``max_steps``. The schemas and the
calls read from the stream are :mod:`rocm_nb.client.tools`; the loop sits
above the request (it speaks through a model's ``chat``), so it is a module
of its own.

Two ways to ask, chosen per server (``mode="auto"``):

* ``"native"``: the server's own tool calling. In the pinned llama-server it
  needs a chat template that knows tools (``/props`` →
  ``chat_template_caps.supports_tool_calls``; ``--jinja`` is on by default,
  and rocm_nb passes it anyway). Even then the server lets the model write
  free text before a call under ``tool_choice="required"``
  (``common/chat-auto-parser-generator.cpp``), so a small model may never call.
* ``"json"``: rocm_nb describes the tools in a system message and
  constrains the reply with a JSON schema (llama-server turns it into a
  grammar): either ``{"tool": NAME, "arguments": {...}}`` for one of the
  given tools, with the arguments' schema enforced, or ``{"answer": TEXT}``.
  It works with any model, the default one included.

Example:
    >>> call_tool(ToolCall("1", "add", {"a": 2, "b": 3}), {"add": lambda a, b: a + b},
    ...           {"add": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}})
    '5'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Unpack

from rocm_nb.client.completion import Completion, Message, ToolCall
from rocm_nb.client.request import Options
from rocm_nb.client.tools import tool_schemas
from rocm_nb.errors import RocmNbError

__all__ = ["MAX_CALLS", "MAX_CALLS_PER_STEP", "ToolChat", "ToolRun", "call_tool", "run_tools"]


class ToolChat(Protocol):
    """What :func:`run_tools` needs of a model: its ``chat``, and ``props`` (whether its template knows tools).

    A :class:`~rocm_nb.LocalModel`, a :class:`~rocm_nb.client.Client` and a
    :class:`~rocm_nb.LocalRouter` all are one.

    Example:
        >>> from rocm_nb.client import Client
        >>> chat_model: ToolChat = Client("http://127.0.0.1:9")
    """

    def chat(self, messages: Sequence[Message], **options: Unpack[Options]) -> Completion: ...

    def props(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ToolRun:
    """What :func:`run_tools` did: the final ``answer``, the whole transcript, the steps taken.

    ``finished`` is false when ``max_steps`` ran out before the model answered.

    Example:
        >>> ToolRun("42", [], 2, True).answer
        '42'
    """

    answer: str
    messages: list[dict[str, Any]]
    steps: int
    finished: bool


def _errors(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> str:
    from jsonschema import validators
    from jsonschema.exceptions import best_match

    error = best_match(validators.validator_for(schema)(schema).iter_errors(dict(arguments)))
    return "" if error is None else f"at {error.json_path}: {error.message}"


def call_tool(call: ToolCall, functions: Mapping[str, Callable[..., Any]],
              schemas: Mapping[str, Mapping[str, Any]]) -> str:
    """Run one call and return what goes back to the model: the result as text, or the error.

    Example:
        >>> call_tool(ToolCall("1", "rm", {}), {}, {})
        'error: there is no tool called rm; the tools are: (none)'
    """
    if call.name not in functions:
        return f"error: there is no tool called {call.name}; the tools are: {', '.join(functions) or '(none)'}"
    if call.raw_arguments and not call.arguments and call.raw_arguments.strip() not in ("{}", ""):
        return f"error: the arguments are not a JSON object that can be read: {call.raw_arguments[:200]}"
    problem = _errors(schemas[call.name], call.arguments)
    if problem:
        return f"error: the arguments do not match {call.name}'s schema {problem}"
    try:
        result = functions[call.name](**call.arguments)
    except Exception as exc:
        return f"error: {call.name} raised {type(exc).__name__}: {exc}"
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(result)  # not JSON: its repr is the best text there is


Choice = Literal["auto", "required", "none"]


def _json_schema(schemas: Sequence[Mapping[str, Any]], choice: Choice) -> dict[str, Any]:
    calls = [{"type": "object", "properties": {"tool": {"const": s["function"]["name"]},
                                               "arguments": s["function"]["parameters"]},
              "required": ["tool", "arguments"]} for s in schemas]
    answer = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    return {"anyOf": {"required": calls, "none": [answer]}.get(choice, [*calls, answer])}


def _json_system(schemas: Sequence[Mapping[str, Any]]) -> str:
    lines = [f"- {s['function']['name']}: {s['function'].get('description', '')} "
             f"arguments: {json.dumps(s['function']['parameters'])}" for s in schemas]
    return ("You can use these tools:\n" + "\n".join(lines) + '\nTo use one, reply {"tool": NAME, '
            '"arguments": {...}}. A tool\'s result comes back as a user message. When you know the answer, '
            'reply {"answer": TEXT}.')


def _ask_json(source: ToolChat, messages: list[dict[str, Any]], schemas: Sequence[Mapping[str, Any]],
              step: int, choice: Choice, options: Options) -> tuple[str, ToolCall | None, str]:
    """One constrained reply: its text, the call it makes (or ``None``: an answer), and what went wrong."""
    prompt = [{"role": "system", "content": _json_system(schemas)}, *messages]
    asked: Options = {**options, "json_schema": _json_schema(schemas, choice)}
    reply = source.chat(prompt, **asked)
    try:
        data = json.loads(reply.text)
    except json.JSONDecodeError:  # the grammar holds, so only a cut-off reply is not JSON
        return reply.text, None, "your reply was cut off at max_tokens; reply again, shorter"
    except (ValueError, RecursionError):  # JSON that Python will not read: a 5,000-digit integer, deep nesting
        return reply.text, None, "your reply has a number too long or nesting too deep to read; reply again"
    if not isinstance(data, dict):  # a server that does not hold to the schema (not every one takes it)
        return reply.text, None, 'reply with one JSON object: {"tool": ..., "arguments": {...}} or {"answer": ...}'
    if "tool" in data:
        arguments = data.get("arguments") or {}
        if not isinstance(arguments, dict) or not isinstance(data["tool"], str):
            return reply.text, None, 'the tool must be a name and its "arguments" a JSON object; reply again'
        return reply.text, ToolCall(f"call_{step}", data["tool"], arguments, json.dumps(arguments)), ""
    return str(data.get("answer", "")), None, ""


def _native_tools(source: ToolChat) -> bool:
    """Whether the server's chat template knows tool calls (llama-server's ``/props``; other servers: yes)."""
    try:
        caps = source.props().get("chat_template_caps")
    except RocmNbError:  # not a llama-server (no /props): an OpenAI-compatible server takes tools natively
        return True
    return not isinstance(caps, dict) or bool(caps.get("supports_tool_calls"))


MAX_CALLS_PER_STEP = 8
""":func:`run_tools`' default for the calls run from one reply; a reply may ask for more, which are not run."""

MAX_CALLS = 20
""":func:`run_tools`' default for the tool runs of one conversation, all replies together."""

def _call_key(call: ToolCall) -> str:
    """What makes two calls the same: the tool and its arguments."""
    return f"{call.name} {json.dumps(call.arguments, sort_keys=True)}"


def run_tools(source: ToolChat, messages: Sequence[Message], tools: Sequence[Callable[..., Any]], /, *,
              max_steps: int = 5, max_calls_per_step: int = MAX_CALLS_PER_STEP, max_calls: int = MAX_CALLS,
              mode: Literal["auto", "native", "json"] = "auto", **options: Unpack[Options]) -> ToolRun:
    """Chat with ``tools`` until the model answers, running each call it asks for.

    Only the given Python functions are called, and only with arguments
    that match their schema; anything else (an unknown tool, bad arguments,
    an exception in the tool) goes back to the model as the tool's error,
    so it can try again. A result that is not a string is sent as JSON
    (its ``repr`` when it is not JSON). After ``max_steps`` model replies
    without an answer the loop stops: ``finished`` is false and ``answer``
    says so. ``tool_choice="required"`` makes the first reply a call (the
    later ones choose freely; the default is ``"auto"``). A call repeated with the same arguments is
    answered once more and then the model must answer (``tool_choice="none"``
    for one reply): small models otherwise call the same tool until
    ``max_steps``. ``mode``: see the module docstring.
    ``source`` is the model (a :class:`ToolChat`); ``options`` are
    :class:`~rocm_nb.client.request.Options` for each reply, except ``tools``
    and ``json_schema``, which the loop sets itself.

    What the model asks for is bounded, since a model (or a hostile server)
    may ask for thousands of calls in one reply: only a reply's first
    ``max_calls_per_step`` calls are kept (the model is told how many more
    were not run); the same call (tool and arguments) asked for twice in
    one reply runs once, and each call id gets its result; and once
    ``max_calls`` tools have run in all, the loop stops, unfinished, with
    every call of the last reply answered (those not run, with why).

    Example:
        >>> def multiply(a: float, b: float) -> float:
        ...     '''Multiply two numbers.'''
        ...     return a * b
        >>> run = run_tools(model, [{"role": "user", "content": "What is 6 * 7?"}], [multiply])  # doctest: +SKIP
        >>> run.answer, run.steps  # doctest: +SKIP
        ('42', 2)
    """
    for name, value in (("max_steps", max_steps), ("max_calls_per_step", max_calls_per_step),
                        ("max_calls", max_calls)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be at least 1, got {value!r}")
    tool_choice = options.pop("tool_choice", "auto")
    if tool_choice not in ("auto", "required"):
        raise ValueError(f"tool_choice must be 'auto' or 'required', got {tool_choice!r}")
    for own in ("tools", "json_schema"):
        if own in options:
            raise ValueError(f"run_tools() sets {own} itself: pass the tools as its second argument, and no {own}=")
    if any(isinstance(tool, Mapping) or not callable(tool) for tool in tools):
        raise TypeError("run_tools() calls Python functions: pass the functions themselves, not schemas")
    schemas = tool_schemas(tools)
    functions = {s["function"]["name"]: fn for s, fn in zip(schemas, tools, strict=True)}
    parameters = {name: s["function"]["parameters"] for name, s in zip(functions, schemas, strict=True)}
    if mode == "auto":
        mode = "native" if _native_tools(source) else "json"
    transcript = [dict(m) for m in messages]
    choice: Choice = "required" if tool_choice == "required" else "auto"
    seen: set[str] = set()
    ran, refused = 0, f"error: not run: {max_calls} tools have run in this conversation (max_calls={max_calls})"
    for step in range(1, max_steps + 1):
        unasked = 0
        if mode == "json":
            text, call, problem = _ask_json(source, transcript, schemas, step, choice, options)
            calls: tuple[ToolCall, ...] = (call,) if call else ()
            said = text if call or problem else json.dumps({"answer": text})
            transcript.append({"role": "assistant", "content": said})
            if problem:
                transcript.append({"role": "user", "content": f"error: {problem}"})
                continue
        else:
            asked: Options = {**options, "tools": schemas, "tool_choice": choice}
            reply = source.chat(transcript, **asked)
            text, calls = reply.text, reply.tool_calls[:max_calls_per_step]
            unasked = len(reply.tool_calls) - len(calls)
            transcript.append({"role": "assistant", "content": text,
                               **({"tool_calls": [c.message() for c in calls]} if calls else {})})
        if not calls:
            return ToolRun(text, transcript, step, True)
        choice = "auto"
        earlier, results = set(seen), {}
        for call in calls:
            key = _call_key(call)
            if key not in results:  # the same call twice in one reply runs once
                results[key] = call_tool(call, functions, parameters) if ran < max_calls else refused
                ran = min(ran + 1, max_calls)
            result = results[key]
            again = key in earlier  # a model that repeats a call is looping: it answers next, with what it has
            choice = "none" if again else choice
            seen.add(key)
            if mode == "json":
                nudge = ("You made this call before: answer now, from this result." if again
                         else 'If that answers my question, reply {"answer": ...} with it.')
                transcript.append({"role": "user", "content": f"{call.name} returned: {result}\n{nudge}"})
            else:
                transcript.append({"role": "tool", "tool_call_id": call.id, "name": call.name,
                                   "content": f"{result}\n(You made this call before: answer now.)" if again
                                   else result})
        if unasked:
            transcript.append({"role": "user", "content": f"({unasked} more tool calls in that reply were not run: "
                                                          f"at most {max_calls_per_step} per reply.)"})
        if refused in results.values():
            return ToolRun(f"(no answer: the model asked for more than max_calls={max_calls} tool runs; raise "
                           "max_calls or simplify the question)", transcript, step, False)
    return ToolRun(f"(no answer: the model was still calling tools after max_steps={max_steps}; "
                   "raise max_steps or simplify the question)", transcript, max_steps, False)
