"""What a generation is asked with: :class:`Options`, their checks, and the request body.

``build_payload`` turns a prompt and :class:`Options` into the JSON body of
an OpenAI-compatible streaming endpoint (``max_tokens`` is always sent).

Example:
    >>> build_payload("completion", "Hi", {"max_tokens": 4})["max_tokens"]
    4
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

from rocm_nb.client.completion import Kind, Message, check_schema_shape
from rocm_nb.client.engines import Engine, translate
from rocm_nb.client.logprobs import check_insight_options, translate_options
from rocm_nb.client.tools import check_tools, tool_schemas

__all__ = ["DEFAULT_MAX_TOKENS", "MAX_TOKENS_LIMIT", "Options", "build_payload", "check_content", "check_options"]

DEFAULT_MAX_TOKENS = 512

class Options(TypedDict, total=False):
    """Sampling options accepted by every generation method.

    Only the options you pass are sent; the server's defaults apply to the
    rest (llama-server keeps ``cache_prompt`` on by default, so chat turn N
    reuses the KV cache of turns 1..N-1). ``max_tokens`` is always sent
    (default 512): an unbounded generation is never what a notebook wants.

    ``logprobs``, ``top_logprobs``, ``post_sampling``, ``return_progress`` and
    the chat-only ``reasoning_*``/``chat_template_kwargs``: :mod:`rocm_nb.client.logprobs`.

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
            check_schema_shape(value)
        elif name == "model" and (not isinstance(value, str) or not value):
            raise ValueError(f"model must be a model id (a non-empty string; models() lists them), got {value!r}")
        elif name in ("tools", "tool_choice"):
            check_tools(value if name == "tools" else None, value if name == "tool_choice" else None)
    check_insight_options(options)
    return dict(options)


def check_content(messages: Sequence[Message]) -> None:
    """The content parts' family: a message's ``content`` list holds typed parts, images already encoded.

    Every OpenAI-compatible engine takes ``text`` and ``image_url`` parts as
    they are, so parts need no translation; an image the caller has not had
    encoded (rocm_nb's ``{"type": "image", ...}``, which ``chat()`` encodes)
    or an ``image_url`` part without a URL is refused here, before any request.

    Example:
        >>> check_content([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
        Traceback (most recent call last):
        ...
        ValueError: an image_url part needs {"image_url": {"url": "data:image/png;base64,…"}}; got {'type': ...}
    """
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            kind = part.get("type") if isinstance(part, Mapping) else None
            if not isinstance(kind, str):
                raise TypeError(f"a message's content list holds parts like {{'type': 'text', 'text': ...}}; "
                                f"got {part!r:.80}")
            if kind == "image":
                raise TypeError('an {"type": "image"} part is encoded by chat(), chat_stream() and user_message(); '
                                "pass the messages through one of them")
            where = part.get("image_url")
            if kind == "image_url" and not (isinstance(where, Mapping) and isinstance(where.get("url"), str)):
                raise ValueError('an image_url part needs {"image_url": {"url": "data:image/png;base64,…"}}; '
                                 f"got {part!r:.80}")


def build_payload(
    kind: Kind, prompt: str | Sequence[Message], options: Mapping[str, Any], engine: Engine = "llama.cpp",
) -> dict[str, Any]:
    """Return the JSON body of a streaming request, after checking the options.

    The options are said the way ``engine`` takes them
    (:func:`rocm_nb.client.engines.translate`: an option it cannot honour is a
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
        payload["tools"] = tool_schemas(payload["tools"])
    if kind == "chat":
        if isinstance(prompt, str):
            raise TypeError("chat() takes a list of messages; use generate() for a plain prompt")
        check_content(prompt)
        payload["messages"] = [dict(m) for m in prompt]
    else:
        if not isinstance(prompt, str):
            raise TypeError("generate() takes a prompt string; use chat() for messages")
        payload["prompt"] = prompt
    translate_options(kind, payload)
    return payload


