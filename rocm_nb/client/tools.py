"""Tool calls: Python functions as JSON schemas (the ``tools`` option family), and calls read from the stream.

``chat(messages, tools=[fn, schema, ...], tool_choice="auto")`` sends the
tools in OpenAI's format; a Python function becomes one through
:func:`tool_schema` (its name, its docstring's first paragraph and ``Args:``
lines, its parameters' type hints). The server's calls come back as
``Completion.tool_calls``, each a :class:`~rocm_nb.client.completion.ToolCall`,
streamed or not: the stream's ``delta.tool_calls`` pieces are put together
by :class:`CallParts`. The loop that calls them and feeds the results back
is :mod:`rocm_nb.client.tool_loop`.

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

from rocm_nb.client.completion import Kind, ToolCall

__all__ = ["TOOL_OPTIONS", "TOOL_TEMPLATE", "CallParts", "Tool", "check_tool_options", "read_arguments", "tool_schema",
           "tool_schemas", "translate_tool_options"]

Tool = Callable[..., Any] | Mapping[str, Any]
"""A tool: a Python function, or a ready OpenAI tool schema (a dict)."""

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
        """The calls so far, each with its arguments parsed (``{}`` when they are not a JSON object it can read).

        Example:
            >>> parts, digits = CallParts(), '{"n": ' + "9" * 5000 + "}"
            >>> parts.read({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": digits}}]})
            >>> parts.calls()[0].arguments, len(parts.calls()[0].raw_arguments)
            ({}, 5007)
        """
        return tuple(ToolCall(call["id"] or f"call_{index}", call["name"], read_arguments(call["arguments"]),
                              call["arguments"]) for index, call in sorted(self._calls.items()))


def read_arguments(raw: str) -> dict[str, Any]:
    """A tool call's arguments as the model wrote them (JSON), read as an object; ``{}`` when they are not one.

    Model output is untrusted: not JSON, JSON that is no object, and JSON
    Python refuses to read (an integer over 4,300 digits, nesting deeper
    than the interpreter's stack) all give ``{}``, never an exception; the
    raw text stays in :attr:`~rocm_nb.client.completion.ToolCall.raw_arguments`.

    Example:
        >>> read_arguments('{"a": 1}'), read_arguments("[1]"), read_arguments("9" * 5000), read_arguments("")
        ({'a': 1}, {}, {}, {})
    """
    try:
        arguments = json.loads(raw or "{}")
    except (ValueError, RecursionError):  # not JSON, or JSON Python will not read (a 5,000-digit integer)
        return {}
    return arguments if isinstance(arguments, dict) else {}
