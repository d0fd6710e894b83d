"""Tool calls: Python functions as JSON schemas, calls read from the stream, and the call-and-answer loop.

``chat(messages, tools=[fn, schema, ...], tool_choice="auto")`` sends the
tools in OpenAI's format; a Python function becomes one through
:func:`tool_schema` (its name, its docstring's first paragraph and ``Args:``
lines, its parameters' type hints). The server's calls come back as
``Completion.tool_calls``, each a :class:`ToolCall`, streamed or not: the
stream's ``delta.tool_calls`` pieces are put together by :class:`CallParts`.

:func:`run_tools` runs the loop: it calls only the functions it was given,
after checking the arguments against the function's schema (jsonschema),
feeds each result (or the tool's error) back, and stops at ``max_steps``.

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
    >>> def add(a: int, b: int = 0) -> int:
    ...     '''Add two numbers.
    ...
    ...     Args:
    ...         a: the first number.
    ...         b: the second.
    ...     '''
    ...     return a + b
    >>> tool_schema(add)["function"]["parameters"]
    {'type': 'object', 'properties': {'a': {'type': 'integer', 'description': 'the first number.'}, \
'b': {'type': 'integer', 'description': 'the second.'}}, 'required': ['a']}
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rocm_nb.client.completion import Completion, Kind, Message, ToolCall
from rocm_nb.errors import RocmNbError

__all__ = ["TOOL_OPTIONS", "TOOL_TEMPLATE", "CallParts", "ToolRun", "call_tool", "check_tool_options", "run_tools",
           "tool_schema", "tool_schemas", "translate_tool_options"]

Tool = Callable[..., Any] | Mapping[str, Any]

TOOL_TEMPLATE = str(Path(__file__).with_name("templates") / "chatml-tools.jinja")
"""A ChatML chat template that knows tools (``<tool_call>{...}</tool_call>``), for models like the default one.

Pass it to a server as ``LocalModel(..., extra_args=["--chat-template-file", TOOL_TEMPLATE])``
to try the server's native tool calls with a model whose own template has none.
"""

_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object",
                          list: "array", tuple: "array", type(None): "null"}


# -- schemas from functions -------------------------------------------------------------------


def _type_schema(hint: Any) -> dict[str, Any]:
    """A JSON schema for one type hint (``str``, ``list[int]``, ``Literal["a", "b"]``, ``X | None``…)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _TYPES:
        return {"type": _TYPES[hint]}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, Sequence) or origin is getattr(typing, "Sequence", None):
        return {"type": "array", **({"items": _type_schema(args[0])} if args else {})}
    if origin in (dict, Mapping):
        return {"type": "object"}
    if origin in (types.UnionType, typing.Union):
        return {"anyOf": [_type_schema(arg) for arg in args]}
    return {}  # Any, or a class JSON cannot name: no constraint


def _doc_parts(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The docstring's first paragraph, and each ``name: text`` under its ``Args:``/``Parameters:`` heading."""
    import inspect  # imported here: `import rocm_nb` stays cheap

    doc = inspect.getdoc(fn) or ""
    summary = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
    params: dict[str, str] = {}
    section = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?)+)", doc, re.MULTILINE)
    if section:
        name = ""
        for line in section.group(1).splitlines():
            match = re.match(r"\s+(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", line)
            if match and (len(line) - len(line.lstrip())) <= 8:
                name, params[match.group(1)] = match.group(1), match.group(2).strip()
            elif name and line.strip():
                params[name] += " " + line.strip()
    return summary, params


def tool_schema(tool: Tool) -> dict[str, Any]:
    """The OpenAI tool description of a Python function, or a ready schema checked and completed.

    A ready schema is either the whole ``{"type": "function", "function": {...}}``
    or just its ``{"name", "description", "parameters"}`` part.

    Example:
        >>> tool_schema({"name": "now", "parameters": {"type": "object", "properties": {}}})["type"]
        'function'
    """
    if isinstance(tool, Mapping):
        function = tool.get("function", tool)
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ValueError(f"a tool schema needs a function name: {str(dict(tool))[:120]}")
        return {"type": "function", "function": {"parameters": {"type": "object", "properties": {}},
                                                 **dict(function)}}
    if not callable(tool):
        raise TypeError(f"a tool is a Python function or a schema dict, not {type(tool).__name__}")
    import inspect

    summary, described = _doc_parts(tool)
    hints = typing.get_type_hints(tool)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in inspect.signature(tool).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        properties[name] = {**_type_schema(hints.get(name, Any)),
                            **({"description": described[name]} if name in described else {})}
        if parameter.default is parameter.empty:
            required.append(name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {"type": "function", "function": {"name": tool.__name__, "description": summary or tool.__name__,
                                             "parameters": parameters}}


def tool_schemas(tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """:func:`tool_schema` of each tool; two tools of one name are a ``ValueError``."""
    schemas = [tool_schema(tool) for tool in tools]
    names = [s["function"]["name"] for s in schemas]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two tools are called {', '.join(twice)}: give each tool its own name")
    return schemas


TOOL_OPTIONS = frozenset({"tools", "tool_choice"})
"""This module's family of options (:data:`rocm_nb.client.request.FAMILIES`)."""


def check_tool_options(options: Mapping[str, Any], kind: Kind | None = None) -> None:
    """The ``tools``/``tool_choice`` options' shapes, checked before any request (the tools family's check).

    Example:
        >>> check_tool_options({"tools": [], "tool_choice": "sometimes"})
        Traceback (most recent call last):
        ...
        ValueError: tool_choice must be 'auto', 'none', 'required' or a dict naming a function, got 'sometimes'
    """
    tools, tool_choice = options.get("tools"), options.get("tool_choice")
    if tools is not None:
        if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Sequence):
            raise ValueError("tools must be a list of Python functions or tool schemas")
        tool_schemas(tools)
    if tool_choice is not None and not isinstance(tool_choice, Mapping) \
            and tool_choice not in ("auto", "none", "required"):
        raise ValueError(f"tool_choice must be 'auto', 'none', 'required' or a dict naming a function, "
                         f"got {tool_choice!r}")


def translate_tool_options(kind: Kind, body: dict[str, Any]) -> None:
    """The tools family's translation: each tool (a Python function or a schema) as its OpenAI schema.

    Example:
        >>> body = {"tools": [{"name": "now"}]}
        >>> translate_tool_options("chat", body); body["tools"][0]["type"]
        'function'
    """
    if "tools" in body:
        body["tools"] = tool_schemas(body["tools"])


# -- calls read from the stream ---------------------------------------------------------------


@dataclass
class CallParts:
    """Tool calls as they stream in: ``delta.tool_calls`` pieces, put together by ``index``.

    Example:
        >>> parts = CallParts()
        >>> parts.read({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "add", "arguments": '{"a"'}}]})
        >>> parts.read({"tool_calls": [{"index": 0, "function": {"arguments": ': 1}'}}]})
        >>> parts.calls()
        (ToolCall(id='c1', name='add', arguments={'a': 1}, raw_arguments='{"a": 1}'),)
    """

    _calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def read(self, delta: Mapping[str, Any]) -> None:
        """Take one chunk's ``delta`` (its ``tool_calls``, if any)."""
        for piece in delta.get("tool_calls") or ():
            index = int(piece.get("index", len(self._calls)))
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            function = piece.get("function") or {}
            for key, value in (("id", piece.get("id")), ("name", function.get("name")),
                               ("arguments", function.get("arguments"))):
                if value is None:
                    continue
                if not isinstance(value, str):  # some servers send arguments as an object
                    value = json.dumps(value)
                call[key] = call[key] + value if key == "arguments" else call[key] or value

    def calls(self) -> tuple[ToolCall, ...]:
        """The calls so far, each with its arguments parsed (``{}`` when they are not a JSON object)."""
        done = []
        for index in sorted(self._calls):
            call = self._calls[index]
            try:
                arguments = json.loads(call["arguments"] or "{}")
            except json.JSONDecodeError:
                arguments = None
            done.append(ToolCall(call["id"] or f"call_{index}", call["name"],
                                 arguments if isinstance(arguments, dict) else {}, call["arguments"]))
        return tuple(done)


# -- the loop ---------------------------------------------------------------------------------


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
        return f"error: the arguments are not a JSON object: {call.raw_arguments[:200]}"
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


def _ask_json(model: Any, messages: list[dict[str, Any]], schemas: Sequence[Mapping[str, Any]],
              step: int, choice: Choice, options: Mapping[str, Any]) -> tuple[str, ToolCall | None, str]:
    """One constrained reply: its text, the call it makes (or ``None``: an answer), and what went wrong."""
    prompt = [{"role": "system", "content": _json_system(schemas)}, *messages]
    reply: Completion = model.chat(prompt, json_schema=_json_schema(schemas, choice), **options)
    try:
        data = json.loads(reply.text)
    except json.JSONDecodeError:  # the grammar holds, so only a cut-off reply is not JSON
        return reply.text, None, "your reply was cut off at max_tokens; reply again, shorter"
    if "tool" in data:
        arguments = data.get("arguments") or {}
        return reply.text, ToolCall(f"call_{step}", str(data["tool"]), dict(arguments), json.dumps(arguments)), ""
    return str(data.get("answer", "")), None, ""


def _native_tools(model: Any) -> bool:
    """Whether the server's chat template knows tool calls (llama-server's ``/props``; other servers: yes)."""
    try:
        caps = model.props().get("chat_template_caps")
    except RocmNbError:  # not a llama-server (no /props): an OpenAI-compatible server takes tools natively
        return True
    return not isinstance(caps, dict) or bool(caps.get("supports_tool_calls"))


def run_tools(model: Any, messages: Sequence[Message], tools: Sequence[Callable[..., Any]], *,
              max_steps: int = 5, tool_choice: Literal["auto", "required"] = "auto",
              mode: Literal["auto", "native", "json"] = "auto", **options: Any) -> ToolRun:
    """Chat with ``tools`` until the model answers, running each call it asks for.

    Only the given Python functions are called, and only with arguments
    that match their schema; anything else (an unknown tool, bad arguments,
    an exception in the tool) goes back to the model as the tool's error,
    so it can try again. A result that is not a string is sent as JSON
    (its ``repr`` when it is not JSON). After ``max_steps`` model replies
    without an answer the loop stops: ``finished`` is false and ``answer``
    says so. ``tool_choice="required"`` makes the first reply a call (the
    later ones choose freely). A call repeated with the same arguments is
    answered once more and then the model must answer (``tool_choice="none"``
    for one reply): small models otherwise call the same tool until
    ``max_steps``. ``mode``: see the module docstring.
    ``options`` are :class:`~rocm_nb.client.completion.Options` for each reply.

    Example:
        >>> def multiply(a: float, b: float) -> float:
        ...     '''Multiply two numbers.'''
        ...     return a * b
        >>> run = run_tools(model, [{"role": "user", "content": "What is 6 * 7?"}], [multiply])  # doctest: +SKIP
        >>> run.answer, run.steps  # doctest: +SKIP
        ('42', 2)
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if tool_choice not in ("auto", "required"):
        raise ValueError(f"tool_choice must be 'auto' or 'required', got {tool_choice!r}")
    if any(isinstance(tool, Mapping) or not callable(tool) for tool in tools):
        raise TypeError("run_tools() calls Python functions: pass the functions themselves, not schemas")
    schemas = tool_schemas(tools)
    functions = {s["function"]["name"]: fn for s, fn in zip(schemas, tools, strict=True)}
    parameters = {name: s["function"]["parameters"] for name, s in zip(functions, schemas, strict=True)}
    if mode == "auto":
        mode = "native" if _native_tools(model) else "json"
    transcript = [dict(m) for m in messages]
    choice: Choice = tool_choice
    seen: set[str] = set()
    for step in range(1, max_steps + 1):
        if mode == "json":
            text, call, problem = _ask_json(model, transcript, schemas, step, choice, options)
            calls = (call,) if call else ()
            said = text if call or problem else json.dumps({"answer": text})
            transcript.append({"role": "assistant", "content": said})
            if problem:
                transcript.append({"role": "user", "content": f"error: {problem}"})
                continue
        else:
            reply = model.chat(transcript, tools=schemas, tool_choice=choice, **options)
            text, calls = reply.text, reply.tool_calls
            transcript.append({"role": "assistant", "content": text,
                               **({"tool_calls": [c.message() for c in calls]} if calls else {})})
        if not calls:
            return ToolRun(text, transcript, step, True)
        choice = "auto"
        for call in calls:
            result = call_tool(call, functions, parameters)
            key = f"{call.name} {json.dumps(call.arguments, sort_keys=True)}"
            again = key in seen  # a model that repeats a call is looping: it answers next, with what it has
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
    return ToolRun(f"(no answer: the model was still calling tools after max_steps={max_steps}; "
                   "raise max_steps or simplify the question)", transcript, max_steps, False)
