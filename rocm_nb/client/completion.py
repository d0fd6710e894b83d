"""What a generation gives back: :class:`Completion` (text, timings, tokens, tool calls) and :class:`ToolCall`.

The types a request and its result share live here too: :data:`Message`
(one chat message), :data:`Kind` (a completion or a chat), and the shape
check of a JSON schema, which applies both to ``json_schema=`` and to
:meth:`Completion.json`. What a request is asked with is
:mod:`rocm_nb.client.request`.

Example:
    >>> Completion(text="Hello", finish_reason="stop", timings=None).text
    'Hello'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rocm_nb._escape import html_text
from rocm_nb._markdown import render as render_markdown
from rocm_nb.client.logprobs import ContextUse, TokenProb
from rocm_nb.client.timings import Timings, Usage
from rocm_nb.errors import SchemaMismatch, with_notes

__all__ = [
    "MAX_SCHEMA_DEPTH",
    "Completion",
    "Kind",
    "Message",
    "ToolCall",
    "check_schema_shape",
]

Message = Mapping[str, Any]
"""One chat message: ``{"role": "user", "content": "Hi"}``."""

Kind = Literal["completion", "chat"]
"""Which endpoint: ``/v1/completions`` (a prompt) or ``/v1/chat/completions`` (messages)."""

_RAW = "The raw reply is in the error's .body."


MAX_SCHEMA_DEPTH = 64
"""How deeply a ``json_schema`` may nest (objects and lists within each other).

Real schemas nest a few levels; the validator and llama-server's grammar
converter recurse per level, so a deeper one is refused up front with a
``ValueError`` instead of failing later with a ``RecursionError``.
"""

def _nesting(value: object, limit: int) -> int:
    """How deeply ``value``'s dicts and lists nest, counted up to ``limit + 1`` (no recursion).

    Example:
        >>> _nesting({"a": [{"b": 1}]}, 64), _nesting("x", 64)
        (3, 0)
    """
    depth, level = 0, [value]
    while depth <= limit:
        containers = [item for item in level if isinstance(item, Mapping | list | tuple)]
        if not containers:
            break
        depth += 1
        level = [child for c in containers for child in (c.values() if isinstance(c, Mapping) else c)]
    return depth


def check_schema_shape(schema: object) -> None:
    """A ``ValueError`` unless ``schema`` is a plain-JSON dict nesting at most :data:`MAX_SCHEMA_DEPTH` levels.

    Checked before a request asks for it (``json_schema=``) and before a
    reply is validated against it (:meth:`Completion.json`).

    Example:
        >>> check_schema_shape({"type": "object"})
        >>> check_schema_shape([1])
        Traceback (most recent call last):
        ...
        ValueError: json_schema must be a dict (a JSON schema), got list
    """
    if not isinstance(schema, Mapping):
        raise ValueError(f"json_schema must be a dict (a JSON schema), got {type(schema).__name__}")
    if _nesting(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"json_schema nests more than {MAX_SCHEMA_DEPTH} levels deep; "
                         "flatten it (a $ref to a definition can stand for a repeated part)")
    try:
        json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"json_schema is not plain JSON ({exc}); use dicts, lists, strings, "
                         "finite numbers, booleans and None") from None


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for: ``.id``, ``.name`` and ``.arguments`` (a dict).

    ``raw_arguments`` is the arguments' text as the server sent it; when it
    is not a JSON object, ``arguments`` is empty and :func:`~rocm_nb.client.tool_loop.run_tools`
    tells the model so.

    Example:
        >>> ToolCall("call_1", "add", {"a": 1}).arguments["a"]
        1
    """

    id: str
    name: str
    arguments: dict[str, Any]
    raw_arguments: str = ""

    def message(self) -> dict[str, Any]:
        """This call as it goes back to the server in the assistant's message."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.raw_arguments or json.dumps(self.arguments)}}



def _acceptance_part(timings: Timings | None) -> list[str]:
    """The speculative decoding part of :meth:`Completion.stats` (none when nothing was drafted)."""
    if timings is None or timings.acceptance is None:
        return []
    return [f"drafts {timings.acceptance:.0%} accepted ({timings.draft_accepted}/{timings.draft_tokens})"]


@dataclass(frozen=True)
class Completion:
    """The result of one generation.

    ``ttft_s`` (time to first token, thinking included) and ``elapsed_s``
    are measured by the client; ``timings`` come from the server, or, from a
    server that sends none, from the client's clocks (``timings.source ==
    "client"``; ``None`` when nothing was generated); ``usage`` holds the
    server's token counts; ``reasoning`` (the thinking, apart from ``text``),
    ``tokens`` (with ``logprobs=True``) and ``context``: :mod:`rocm_nb.client.logprobs`.
    A notebook shows one as HTML rendered from its Markdown, with images as
    text and raw HTML escaped, so it makes the browser fetch nothing
    (:mod:`rocm_nb._markdown`).

    Example:
        >>> c = Completion(text="Hello ![x](http://evil/)", finish_reason="stop", timings=None)
        >>> c._repr_html_()
        '<p>Hello <span class="rocm-nb-image">[image: x](http://evil/)</span></p>\\n'
    """

    text: str
    finish_reason: str | None
    timings: Timings | None
    ttft_s: float | None = None
    elapsed_s: float | None = None
    usage: Usage | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    tokens: list[TokenProb] | None = None
    context: ContextUse | None = None

    def stats(self) -> str:
        """One line of statistics, empty when nothing was measured.

        Example:
            >>> Completion("x", "stop", None, ttft_s=0.05, elapsed_s=0.2).stats()
            'first token 50 ms · 0.20 s'
            >>> Completion("x", "stop", Timings(5, 10.0, 20, 100.0, 200.0, draft_tokens=16,
            ...                                          draft_accepted=12)).stats()
            '20 tokens · 200.0 tok/s · prompt 5 tok · drafts 75% accepted (12/16)'
        """
        parts = []
        if self.timings is not None:
            t = self.timings
            parts.append(f"{t.predicted_tokens} tokens · {t.predicted_per_second:.1f} tok/s")
            parts.append(f"prompt {t.prompt_tokens} tok")
            if t.source == "client":
                parts.append("measured by the client")
        parts += _acceptance_part(self.timings)
        if self.ttft_s is not None:
            parts.append(f"first token {self.ttft_s * 1000:.0f} ms")
        if self.elapsed_s is not None:
            parts.append(f"{self.elapsed_s:.2f} s")
        if self.context is not None:
            parts.append(f"context {self.context.used}/{self.context.n_ctx} ({self.context.fraction:.0%})")
        return " · ".join(parts)

    def _repr_html_(self) -> str:
        stats = self.stats()
        return render_markdown(self.text) + (f"<p><sub>{html_text(stats)}</sub></p>" if stats else "")

    def code(self) -> str:
        """The code in the reply: the first fenced block's content, else the whole text.

        Markdown is parsed with markdown-it-py, so ```` ``` ```` and ``~~~``
        fences both count, and a block cut off by ``max_tokens`` still yields
        the code written so far.

        Example:
            >>> Completion("Here it is:\\n```python\\nprint(1)\\n```\\nEnjoy.", "stop", None).code()
            'print(1)'
            >>> Completion("print(2)\\n", "stop", None).code()
            'print(2)'
        """
        from markdown_it import MarkdownIt  # imported here: `import rocm_nb` stays cheap

        for token in MarkdownIt("commonmark").parse(self.text):
            if token.type == "fence":
                return token.content.rstrip("\n")
        return self.text.strip()

    def json(self, schema: Mapping[str, Any] | None = None) -> Any:
        """The reply parsed as JSON and, given a JSON ``schema``, validated against it.

        Raises :class:`~rocm_nb.errors.SchemaMismatch` (a
        ``GenerationError`` and a ``ValueError``) naming the problem (where
        the JSON breaks, or which value breaks which rule of the schema); the
        raw reply is kept in its ``.body``. An invalid schema is a plain
        ``ValueError``.

        Example:
            >>> Completion('{"colour": "red"}', "stop", None).json({"type": "object", "required": ["colour"]})
            {'colour': 'red'}
            >>> schema = {"properties": {"colour": {"type": "string"}}}
            >>> Completion('{"colour": 1}', "stop", None).json(schema)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            rocm_nb.errors.SchemaMismatch: the reply does not match the JSON schema at $.colour: 1 is not ...
        """
        try:
            data = json.loads(self.text)
        except RecursionError:
            raise with_notes(SchemaMismatch(
                "the reply nests too deeply to parse as JSON", body=self.text, partial=self.text), _RAW) from None
        except json.JSONDecodeError as exc:
            cut = self.finish_reason == "length"
            raise with_notes(SchemaMismatch(
                f"the reply is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
                + ("; it was cut off at max_tokens" if cut else ""),
                body=self.text,
                partial=self.text,
            ), "Allow more tokens (max_tokens=)." if cut else "", _RAW) from None
        except ValueError as exc:  # valid JSON that Python will not read: an integer over 4,300 digits
            raise with_notes(SchemaMismatch(
                f"the reply holds a number too long to read ({str(exc).split(':')[0]})", body=self.text,
                partial=self.text), "Ask for the number as a string in the schema, or shorter.", _RAW) from None
        if schema is not None:
            from jsonschema import SchemaError, validators  # imported here: `import rocm_nb` stays cheap
            from jsonschema.exceptions import best_match

            rules = dict(schema)
            check_schema_shape(rules)  # too deep a schema: a ValueError now, not a RecursionError below
            validator_class = validators.validator_for(rules)
            try:
                validator_class.check_schema(rules)
            except SchemaError as exc:
                raise ValueError(f"the JSON schema itself is invalid: {exc.message}; fix the schema") from None
            try:
                error = best_match(validator_class(rules).iter_errors(data))
            except RecursionError:  # a recursive schema ($ref) walking a deeply nested reply
                raise with_notes(SchemaMismatch(
                    "the reply nests too deeply to check against the JSON schema",
                    body=self.text, partial=self.text), _RAW) from None
            if error is not None:
                raise with_notes(SchemaMismatch(
                    f"the reply does not match the JSON schema at {error.json_path}: {error.message}",
                    body=self.text,
                    partial=self.text,
                ), _RAW)
        return data
