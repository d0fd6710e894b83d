"""What a generation is asked with: :class:`Options`, checked once into a :class:`Request`, said once in its body.

The options come in families, and each family declares its options, its
check and its translation once, in its own module:

======== ======================================================= ==========================
family   options                                                 module
======== ======================================================= ==========================
sampling ``max_tokens``, ``temperature``, ``top_p`` … ``model``   here (:data:`SAMPLING`)
tools    ``tools``, ``tool_choice``                               :mod:`rocm_nb.client.tools`
insight  ``logprobs``, ``top_logprobs``, ``post_sampling``,       :mod:`rocm_nb.client.logprobs`
         ``return_progress``, ``reasoning_*``,
         ``chat_template_kwargs``
======== ======================================================= ==========================

A request goes one way: the generation API's entry makes a :class:`Request`
(:func:`check_request`: every family's check, once, before any I/O), and the
client makes its body once (:meth:`Request.body`): the server kind's
translation first (:mod:`rocm_nb.client.engines`, which may refuse an option
that kind cannot honour), then each family's. ``max_tokens`` is always sent.

Example:
    >>> check_request("completion", "Hi", {"max_tokens": 4}).body("llama.cpp")
    {'stream': True, 'max_tokens': 4, 'stream_options': {'include_usage': True}, 'prompt': 'Hi'}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from rocm_nb.client import logprobs, tools
from rocm_nb.client.completion import Kind, Message, check_schema_shape
from rocm_nb.client.engines import Engine, refuse, translate

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TEMPERATURE",
    "FAMILIES",
    "MAX_TOKENS_LIMIT",
    "SAMPLING",
    "Family",
    "Options",
    "Request",
    "check_content",
    "check_options",
    "check_request",
]

DEFAULT_MAX_TOKENS = 512
"""``max_tokens`` when none is given: an unbounded generation is never what a notebook wants."""

DEFAULT_TEMPERATURE = 0.8
"""llama-server's own default temperature (``common/common.h``: ``temp = 0.80f``), used when none is sent.

rocm_nb sends a temperature only when one is given; the chat panel's slider
starts here, and sends its value only once it is moved.
"""

MAX_TOKENS_LIMIT = 2**31 - 1
"""The largest ``max_tokens`` accepted: llama-server reads it as a 32-bit signed integer."""


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


@dataclass(frozen=True)
class Family:
    """One family of options: which it owns, its check (before any I/O) and its translation (into the body).

    ``check(options, kind)`` raises a ``ValueError`` (or ``TypeError``) naming
    the first bad option; ``kind`` is ``None`` when the endpoint is not known
    yet. ``translate(kind, body)`` rewrites the family's options in the
    request body in place, after the server kind's translation.

    Example:
        >>> [family.name for family in FAMILIES]
        ['sampling', 'tools', 'insight']
    """

    name: str
    options: frozenset[str]
    check: Callable[[Mapping[str, Any], Kind | None], None]
    translate: Callable[[Kind, dict[str, Any]], None]


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


def check_sampling(options: Mapping[str, Any], kind: Kind | None = None) -> None:
    """The sampling family's check: numbers finite and in range, stop strings non-empty, a JSON-schema dict.

    Example:
        >>> check_sampling({"temperature": float("nan")})
        Traceback (most recent call last):
        ...
        ValueError: temperature must be a finite number ≥ 0, got nan
    """
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


def translate_sampling(kind: Kind, body: dict[str, Any]) -> None:
    """The sampling family's translation: ``max_tokens`` always sent, one ``stop`` string as a list.

    Example:
        >>> body = {"stop": "\\n"}
        >>> translate_sampling("chat", body); body
        {'stop': ['\\n'], 'max_tokens': 512}
    """
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    body.setdefault("max_tokens", DEFAULT_MAX_TOKENS)


SAMPLING = Family("sampling", frozenset({"max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty",
                                         "seed", "stop", "grammar", "json_schema", "cache_prompt", "model"}),
                  check_sampling, translate_sampling)
"""The sampling options and the request's own (``max_tokens``, ``stop``, ``grammar``, ``json_schema``, ``model``…)."""

FAMILIES: tuple[Family, ...] = (
    SAMPLING,
    Family("tools", tools.TOOL_OPTIONS, tools.check_tool_options, tools.translate_tool_options),
    Family("insight", logprobs.INSIGHT_OPTIONS, logprobs.check_insight_options, logprobs.translate_options),
)
"""Every option family, in the order their translations run (each option belongs to exactly one)."""

_OPTION_NAMES = frozenset().union(*(family.options for family in FAMILIES))


def check_options(options: Mapping[str, Any], kind: Kind | None = None) -> dict[str, Any]:
    """``options`` as a dict, after every family's check (an unknown name: ``TypeError``; a bad value: ``ValueError``).

    Numbers must be finite and in range (a NaN temperature would otherwise
    reach the server as invalid JSON), stop strings non-empty, and a
    ``json_schema`` JSON that nests at most
    :data:`~rocm_nb.client.completion.MAX_SCHEMA_DEPTH` levels. ``kind``,
    when known, also refuses what that endpoint cannot take (the reasoning
    options shape a chat template, so a plain completion refuses them).

    Example:
        >>> check_options({"temperature": 0.5, "stop": "\\n"})
        {'temperature': 0.5, 'stop': '\\n'}
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
    for family in FAMILIES:
        family.check(options, kind)
    return dict(options)


@dataclass(frozen=True)
class Request:
    """One generation request, checked: its endpoint, prompt (a string, or chat messages) and options.

    Made by :func:`check_request`, which checks the options; a batch checks
    its options once and makes each item's request directly, which checks
    only the prompt's shape. ``accepted_by`` names the server kind whose
    refusals were already checked (a batch checks them once, for all its
    items). :meth:`body` translates it once.

    Example:
        >>> Request("chat", "Hi", {})
        Traceback (most recent call last):
        ...
        TypeError: chat() takes a list of messages; use generate() for a plain prompt
    """

    kind: Kind
    prompt: str | Sequence[Message]
    options: Mapping[str, Any]
    accepted_by: Engine | None = None

    def __post_init__(self) -> None:
        if self.kind == "chat" and isinstance(self.prompt, str):
            raise TypeError("chat() takes a list of messages; use generate() for a plain prompt")
        if self.kind != "chat" and not isinstance(self.prompt, str):
            raise TypeError("generate() takes a prompt string; use chat() for messages")
        if not isinstance(self.prompt, str):
            check_content(self.prompt)

    def body(self, engine: Engine, model: str | None = None) -> dict[str, Any]:
        """The JSON body for a server of kind ``engine``, naming ``model`` unless the options name one.

        The options are said the way ``engine`` takes them
        (:func:`rocm_nb.client.engines.translate`: an option it cannot honour
        is a ``ValueError`` here, before any request, unless ``accepted_by``
        says so already), then each family translates its own, and the
        stream asks for its token counts (``stream_options.include_usage``).

        Example:
            >>> check_request("chat", [{"role": "user", "content": "Hi"}], {"stop": "."}).body("vllm", "m")
            {'stream': True, 'stop': ['.'], 'model': 'm', 'max_tokens': 512, 'stream_options': \
{'include_usage': True}, 'messages': [{'role': 'user', 'content': 'Hi'}]}
        """
        if self.accepted_by != engine:
            refuse(self.options, engine, self.kind)
        named = {"model": model} if model and "model" not in self.options else {}
        body: dict[str, Any] = {"stream": True, **translate({**self.options, **named}, engine, self.kind)}
        for family in FAMILIES:
            family.translate(self.kind, body)
        body["stream_options"] = {"include_usage": True}
        if isinstance(self.prompt, str):
            body["prompt"] = self.prompt
        else:
            body["messages"] = [dict(m) for m in self.prompt]
        return body


def check_content(messages: Sequence[Message]) -> None:
    """The content parts' shape: a message's ``content`` list holds typed parts, images already encoded.

    Every OpenAI-compatible engine takes ``text`` and ``image_url`` parts as
    they are, so parts need no translation; an image the caller has not had
    encoded (rocm_nb's ``{"type": "image", ...}``, which ``chat()`` encodes:
    :mod:`rocm_nb.client.images`) or an ``image_url`` part without a URL is
    refused here, before any request.

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


def check_request(kind: Kind, prompt: str | Sequence[Message], options: Mapping[str, Any]) -> Request:
    """The request for ``prompt`` at ``kind``'s endpoint, with its options checked (every family, once).

    Example:
        >>> check_request("completion", "Hi", {"max_tokens": 0})
        Traceback (most recent call last):
        ...
        ValueError: max_tokens must be a positive integer ≤ 2147483647, got 0
    """
    return Request(kind, prompt, check_options(options, kind))
