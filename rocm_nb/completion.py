"""What a generation is asked with and what comes back: options, payloads, ``Completion``.

``build_payload`` turns a prompt and :class:`Options` into the JSON body of
llama-server's OpenAI-compatible endpoints (``max_tokens`` is always sent);
a :class:`Completion` is the finished result with the server's
:class:`Timings`.

Example:
    >>> build_payload("completion", "Hi", {"max_tokens": 4})["max_tokens"]
    4
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from rocm_nb._markdown import render as render_markdown
from rocm_nb.engines import Engine, translate
from rocm_nb.errors import SchemaMismatch, with_notes
from rocm_nb.logprobs import ContextUse, TokenProb, check_insight_options, translate_options
from rocm_nb.timings import Timings, Usage

if TYPE_CHECKING:
    from rocm_nb.tools import ToolCall

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_SCHEMA_DEPTH",
    "MAX_TOKENS_LIMIT",
    "Completion",
    "Kind",
    "Message",
    "Options",
    "Timings",
    "Usage",
    "build_payload",
    "check_options",
]

Message = Mapping[str, Any]
"""One chat message: ``{"role": "user", "content": "Hi"}``."""

Kind = Literal["completion", "chat"]

DEFAULT_MAX_TOKENS = 512

_RAW = "The raw reply is in the error's .body."


class Options(TypedDict, total=False):
    """Sampling options accepted by every generation method.

    Only the options you pass are sent; the server's defaults apply to the
    rest (llama-server keeps ``cache_prompt`` on by default, so chat turn N
    reuses the KV cache of turns 1..N-1). ``max_tokens`` is always sent
    (default 512): an unbounded generation is never what a notebook wants.

    ``logprobs``, ``top_logprobs``, ``post_sampling``, ``return_progress`` and
    the chat-only ``reasoning_*``/``chat_template_kwargs``: :mod:`rocm_nb.logprobs`.

    Example:
        >>> opts: Options = {"max_tokens": 32, "temperature": 0.0, "seed": 1}
    """

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    stop: str | Sequence[str]
    grammar: str
    json_schema: Mapping[str, Any]
    cache_prompt: bool
    model: str
    tools: Sequence[Callable[..., Any] | Mapping[str, Any]]
    tool_choice: str | Mapping[str, Any]
    logprobs: bool
    top_logprobs: int
    post_sampling: bool
    reasoning_effort: str
    reasoning_budget: int
    chat_template_kwargs: Mapping[str, Any]
    return_progress: bool


_OPTION_NAMES = frozenset(Options.__annotations__)

MAX_TOKENS_LIMIT = 2**31 - 1
"""The largest ``max_tokens`` accepted: llama-server reads it as a 32-bit signed integer."""

MAX_SCHEMA_DEPTH = 64
"""How deeply a ``json_schema`` may nest (objects and lists within each other).

Real schemas nest a few levels; the validator and llama-server's grammar
converter recurse per level, so a deeper one is refused up front with a
``ValueError`` instead of failing later with a ``RecursionError``.
"""

_NUMBER_RULES: dict[str, tuple[str, Callable[[float], bool]]] = {  # option -> (allowed range, check)
    "temperature": ("a finite number ≥ 0", lambda v: v >= 0),
    "top_p": ("a number in (0, 1]", lambda v: 0 < v <= 1),
    "min_p": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "repeat_penalty": ("a finite number > 0", lambda v: v > 0),
}
_INT_RULES: dict[str, tuple[str, Callable[[int], bool]]] = {
    "max_tokens": (f"a positive integer ≤ {MAX_TOKENS_LIMIT}", lambda v: 0 < v <= MAX_TOKENS_LIMIT),
    "top_k": ("an integer ≥ 0 (0: no limit)", lambda v: v >= 0),
    "seed": ("an integer in [0, 2³²−1], or −1 for a random seed", lambda v: -1 <= v < 2**32),
}


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


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as a dict, after checking each one's type and range; a ``ValueError`` names the first bad one.

    Numbers must be finite and in range (a NaN temperature would otherwise
    reach the server as invalid JSON), stop strings non-empty, and a
    ``json_schema`` JSON that nests at most :data:`MAX_SCHEMA_DEPTH` levels.
    Every generation checks its options here before any request is sent.

    Example:
        >>> check_options({"temperature": 0.5, "stop": "\\n"})
        {'temperature': 0.5, 'stop': '\\n'}
        >>> check_options({"temperature": float("nan")})
        Traceback (most recent call last):
        ...
        ValueError: temperature must be a finite number ≥ 0, got nan
        >>> check_options({"top_p": 1.5})
        Traceback (most recent call last):
        ...
        ValueError: top_p must be a number in (0, 1], got 1.5
        >>> check_options({"max_tokens": 2**31})
        Traceback (most recent call last):
        ...
        ValueError: max_tokens must be a positive integer ≤ 2147483647, got 2147483648
    """
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(sorted(unknown))}; "
            f"valid options are {', '.join(sorted(_OPTION_NAMES))}"
        )
    for name, value in options.items():
        if name in _NUMBER_RULES:
            allowed, ok = _NUMBER_RULES[name]
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not ok(value):
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        elif name in _INT_RULES:
            allowed, whole = _INT_RULES[name]
            if isinstance(value, bool) or not isinstance(value, int) or not whole(value):
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        elif name == "stop":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, Sequence) or not all(isinstance(s, str) and s for s in stops):
                raise ValueError(f"stop must be a non-empty string or a list of them, got {value!r}")
        elif name == "json_schema":
            _check_schema_shape(value)
        elif name == "model" and (not isinstance(value, str) or not value):
            raise ValueError(f"model must be a model id (a non-empty string; models() lists them), got {value!r}")
        elif name in ("tools", "tool_choice"):
            from rocm_nb.tools import check_tools

            check_tools(value if name == "tools" else None, value if name == "tool_choice" else None)
    check_insight_options(options)
    return dict(options)


def _check_schema_shape(schema: object) -> None:
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


def build_payload(
    kind: Kind, prompt: str | Sequence[Message], options: Mapping[str, Any], engine: Engine = "llama.cpp",
) -> dict[str, Any]:
    """Return the JSON body of a streaming request, after checking the options.

    The options are said the way ``engine`` takes them
    (:func:`rocm_nb.engines.translate`: an option it cannot honour is a
    ``ValueError`` here, before any request), and the stream asks for its
    token counts (``stream_options.include_usage``).

    Example:
        >>> build_payload("completion", "Hi", {"max_tokens": 4})
        {'stream': True, 'max_tokens': 4, 'stream_options': {'include_usage': True}, 'prompt': 'Hi'}
        >>> build_payload("completion", "Hi", {"max_tokens": 0})
        Traceback (most recent call last):
        ...
        ValueError: max_tokens must be a positive integer ≤ 2147483647, got 0
    """
    checked = check_options(options)
    payload: dict[str, Any] = {"stream": True, **translate(checked, engine, kind),
                               "max_tokens": checked.get("max_tokens", DEFAULT_MAX_TOKENS),
                               "stream_options": {"include_usage": True}}
    if isinstance(payload.get("stop"), str):
        payload["stop"] = [payload["stop"]]
    if "tools" in payload:
        from rocm_nb.tools import tool_schemas

        payload["tools"] = tool_schemas(payload["tools"])
    if kind == "chat":
        if isinstance(prompt, str):
            raise TypeError("chat() takes a list of messages; use generate() for a plain prompt")
        payload["messages"] = [dict(m) for m in prompt]
    else:
        if not isinstance(prompt, str):
            raise TypeError("generate() takes a prompt string; use chat() for messages")
        payload["prompt"] = prompt
    translate_options(kind, payload)
    return payload


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
    ``tokens`` (with ``logprobs=True``) and ``context``: :mod:`rocm_nb.logprobs`.
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
        return render_markdown(self.text) + (f"<p><sub>{html.escape(stats)}</sub></p>" if stats else "")

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
        if schema is not None:
            from jsonschema import SchemaError, validators  # imported here: `import rocm_nb` stays cheap
            from jsonschema.exceptions import best_match

            rules = dict(schema)
            _check_schema_shape(rules)  # too deep a schema: a ValueError now, not a RecursionError below
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
