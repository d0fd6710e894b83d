"""Seeing inside a generation: token probabilities, reasoning, prefill progress and context use.

The value types (:class:`TokenProb`, :class:`TokenPiece`, :class:`Progress`,
:class:`ContextUse`) and the functions that read them from llama-server's
answers live here; :mod:`rocm_nb.client._accumulator` calls one function per field.
The options that ask for them (``logprobs``, ``top_logprobs``,
``post_sampling``, ``reasoning_effort``, ``reasoning_budget``,
``chat_template_kwargs``, ``return_progress``: :data:`INSIGHT_OPTIONS`) are
this module's family of options (:mod:`rocm_nb.client.request`): checked by
:func:`check_insight_options` and put in the server's own names by
:func:`translate_options`.

How the pinned llama-server reports tokens, and so what these objects hold:

- Each generated token comes with ``token`` (its text), ``bytes`` (its raw
  bytes), ``logprob`` and ``top_logprobs`` (``prob`` and ``top_probs`` with
  ``post_sampling_probs``). The OpenAI chat format is the same shape.
- A character split across tokens (an emoji is often two to four byte
  tokens) is held back by the server until it is whole, then reported as
  *one* entry: its text and bytes are the whole character, its probability
  and alternatives those of the token that completed it. So the texts of
  :attr:`Completion.tokens <rocm_nb.client.completion.Completion.tokens>` always join
  to the text, and no entry carries half a character.
- An alternative that is a byte fragment (not UTF-8 on its own) has the
  fragment in ``bytes``; its ``text`` is those bytes decoded with U+FFFD for
  what is not valid UTF-8 (``"\\ufffd"``), never a crash or a silent ``""``.

Example:
    >>> t = read_token({"token": " Paris", "bytes": [32, 80, 97, 114, 105, 115], "logprob": -0.105,
    ...                 "top_logprobs": [{"token": " Paris", "logprob": -0.105}, {"token": " Lyon", "logprob": -3.2}]})
    >>> t.text, round(t.prob, 2), t.top[1]
    (' Paris', 0.9, (' Lyon', -3.2))
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rocm_nb.errors import RocmNbError

if TYPE_CHECKING:
    from rocm_nb.client.timings import Timings

__all__ = [
    "DEFAULT_TOP_LOGPROBS",
    "INSIGHT_OPTIONS",
    "MAX_TOP_LOGPROBS",
    "ContextUse",
    "Progress",
    "SlotContext",
    "TokenPiece",
    "TokenProb",
    "check_insight_options",
    "read_context",
    "read_pieces",
    "read_progress",
    "read_reasoning",
    "read_token",
    "read_tokens",
    "translate_options",
]

DEFAULT_TOP_LOGPROBS = 5
"""Alternatives per token when ``logprobs=True`` is given without ``top_logprobs`` (and the notebook's default)."""

MAX_TOP_LOGPROBS = 20
"""The most alternatives per token anywhere in rocm_nb (options, magics, widgets).

OpenAI's API refuses ``top_logprobs`` above 20, and so does vLLM by default
(``--max-logprobs 20``); the pinned llama-server takes any number (it
caps ``n_probs`` at the vocabulary, ``populate_token_probs`` in
``tools/server/server-context.cpp``, and defaults to 20 when
``logprobs`` comes without ``top_logprobs``). 20 is what every server
``connect()`` reaches can answer.
"""

INSIGHT_OPTIONS = frozenset({"logprobs", "top_logprobs", "post_sampling", "return_progress", "reasoning_effort",
                             "reasoning_budget", "chat_template_kwargs"})
"""This module's family of options (:data:`rocm_nb.client.request.FAMILIES`)."""

_CHAT_ONLY = ("reasoning_effort", "reasoning_budget", "chat_template_kwargs")


@dataclass(frozen=True)
class TokenProb:
    """One generated token with its probability and the alternatives the model weighed.

    ``logprob`` is the natural log of the probability (≤ 0); ``top`` holds
    the most likely tokens at that step as ``(text, logprob)`` pairs, most
    likely first (after the sampler chain with ``post_sampling=True``);
    ``bytes`` are the token's raw bytes; ``id`` its vocabulary id when the
    server says (llama-server does).

    Example:
        >>> t = TokenProb(" blue", -0.2231, [(" blue", -0.2231), (" grey", -1.9)], b" blue", 3821)
        >>> round(t.prob, 3), t.top[0][0]
        (0.8, ' blue')
    """

    text: str
    logprob: float
    top: list[tuple[str, float]]
    bytes: bytes
    id: int | None = None

    @property
    def prob(self) -> float:
        """The probability, ``exp(logprob)`` (0 to 1)."""
        return math.exp(self.logprob)


@dataclass(frozen=True)
class TokenPiece:
    """One token of a tokenized text: its id, its text and its raw bytes.

    A byte-fallback token (a fragment of a character) has the fragment in
    ``bytes`` and U+FFFD in ``text``; ``b"".join(p.bytes for p in pieces)``
    is always the text's UTF-8.

    Example:
        >>> TokenPiece(28, "\\ufffd", b"\\xf0").bytes
        b'\\xf0'
    """

    id: int
    text: str
    bytes: bytes


@dataclass(frozen=True)
class Progress:
    """How far the server has read the prompt (prefill): tokens ``processed`` of ``total``, ``cached`` reused.

    Example:
        >>> Progress(processed=600, total=1100, cached=100).fraction
        0.5
    """

    processed: int
    total: int
    cached: int

    @property
    def fraction(self) -> float:
        """The share of the prompt's uncached part read so far (0 to 1); 1 when all of it was cached."""
        todo = self.total - self.cached
        return 1.0 if todo <= 0 else min(1.0, max(0.0, (self.processed - self.cached) / todo))


@dataclass(frozen=True)
class ContextUse:
    """How full the slot's context is after a reply: ``used`` tokens of ``n_ctx``.

    ``used`` counts the cached prompt, the prompt read this time and the
    reply (llama-server's ``cache_n + prompt_n + predicted_n``): what the next
    chat turn starts from.

    Example:
        >>> ContextUse(used=1024, n_ctx=4096).fraction
        0.25
    """

    used: int
    n_ctx: int

    @property
    def fraction(self) -> float:
        """``used / n_ctx`` (0 for a context of size 0)."""
        return self.used / self.n_ctx if self.n_ctx > 0 else 0.0


class SlotContext:
    """A server's context size per slot, asked of it once (``/props``), for ``Completion.context``.

    ``None`` when the server does not say (not a llama-server, or ``/props``
    fails); the answer is kept either way, so it is asked at most once.

    Example:
        >>> size = SlotContext(lambda: {"default_generation_settings": {"n_ctx": 4096}})
        >>> size(), size.known
        (4096, True)
    """

    def __init__(self, props: Callable[[], Any]) -> None:
        self._props = props
        self.known = False
        self.value: int | None = None

    def __call__(self) -> int | None:
        if not self.known:
            try:
                value = self._props()["default_generation_settings"]["n_ctx"]
                self.value = value if isinstance(value, int) and not isinstance(value, bool) else None
            except (RocmNbError, KeyError, TypeError):
                self.value = None
            self.known = True
        return self.value


# -- options ------------------------------------------------------------------------------------


def check_insight_options(options: Mapping[str, Any], kind: str | None = None) -> None:
    """Check the options of this module; a ``ValueError`` names the first bad one.

    The reasoning options shape the chat template, so a plain completion
    (``kind="completion"``: :meth:`generate` sends its prompt as it is)
    refuses them.

    Example:
        >>> check_insight_options({"logprobs": True, "top_logprobs": 3})
        >>> check_insight_options({"top_logprobs": 3})
        Traceback (most recent call last):
        ...
        ValueError: top_logprobs needs logprobs=True as well
        >>> check_insight_options({"reasoning_budget": -2})
        Traceback (most recent call last):
        ...
        ValueError: reasoning_budget must be an integer ≥ -1 (-1: no limit, 0: no thinking), got -2
        >>> check_insight_options({"reasoning_effort": "low"}, "completion")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: reasoning_effort shape(s) the chat template, so only chat() and chat_stream() take them; ...
    """
    if kind == "completion":
        given = [name for name in _CHAT_ONLY if name in options]
        if given:
            raise ValueError(f"{', '.join(given)} shape(s) the chat template, so only chat() and chat_stream() "
                             "take them; generate() sends its prompt as it is")
    for name in ("logprobs", "post_sampling", "return_progress"):
        if name in options and not isinstance(options[name], bool):
            raise ValueError(f"{name} must be True or False, got {options[name]!r}")
    top = options.get("top_logprobs")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP_LOGPROBS):
        raise ValueError(f"top_logprobs must be an integer from 1 to {MAX_TOP_LOGPROBS}, got {top!r}")
    for name in ("top_logprobs", "post_sampling"):
        if options.get(name) not in (None, False) and not options.get("logprobs"):
            raise ValueError(f"{name} needs logprobs=True as well")
    effort = options.get("reasoning_effort")
    if effort is not None and (not isinstance(effort, str) or not effort.strip()):
        raise ValueError(f"reasoning_effort must be a non-empty string such as 'low', 'medium', 'high' or "
                         f"'none', got {effort!r}")
    budget = options.get("reasoning_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < -1):
        raise ValueError(f"reasoning_budget must be an integer ≥ -1 (-1: no limit, 0: no thinking), got {budget!r}")
    kwargs = options.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError(f"chat_template_kwargs must be a dict with string keys, got {kwargs!r}")
        try:
            json.dumps(dict(kwargs), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"chat_template_kwargs is not plain JSON ({exc})") from None


def translate_options(kind: str, payload: dict[str, Any]) -> None:
    """Rename this module's options in ``payload`` to what the endpoint of ``kind`` takes (in place).

    Chat sends OpenAI's ``logprobs``/``top_logprobs``; a completion sends the
    number as ``logprobs`` (OpenAI's legacy name, llama-server's alias of
    ``n_probs``: it reads ``top_logprobs`` only in chat). ``post_sampling``
    is ``post_sampling_probs``, ``reasoning_budget``
    ``reasoning_budget_tokens``.

    Example:
        >>> payload = {"logprobs": True, "post_sampling": True}
        >>> translate_options("completion", payload); payload
        {'logprobs': 5, 'post_sampling_probs': True}
        >>> payload = {"logprobs": True, "top_logprobs": 2, "reasoning_budget": 64}
        >>> translate_options("chat", payload); payload
        {'logprobs': True, 'top_logprobs': 2, 'reasoning_budget_tokens': 64}
    """
    if payload.get("logprobs"):
        top = payload.pop("top_logprobs", DEFAULT_TOP_LOGPROBS)
        if kind == "chat":
            payload["top_logprobs"] = top
        else:
            payload["logprobs"] = top
    else:
        payload.pop("logprobs", None)
    if payload.pop("post_sampling", False):
        payload["post_sampling_probs"] = True
    if "reasoning_budget" in payload:
        payload["reasoning_budget_tokens"] = payload.pop("reasoning_budget")


# -- reading the server's answers ----------------------------------------------------------------


def _text_of(entry: Mapping[str, Any]) -> tuple[str, bytes]:
    """An entry's text and bytes: the bytes decoded (U+FFFD for fragments) when given, else its ``token``."""
    raw = entry.get("bytes")
    if isinstance(raw, list):
        data = bytes(raw)
        return data.decode("utf-8", errors="replace"), data
    text = str(entry.get("token", ""))
    return text, text.encode("utf-8")


_ROUNDING = 1e-4
"""How far past 0 (a log-probability) or 1 (a probability) a server's float rounding may reach."""


def _logprob_of(entry: Mapping[str, Any]) -> float:
    """``logprob``, or ``log(prob)`` for post-sampling entries (``-inf`` for a probability of 0).

    A number that is no log of a probability (NaN, infinite, or above 0,
    beyond rounding) is a ``ValueError``: a broken or hostile server's, never
    shown as a probability.
    """
    if "logprob" in entry:
        value = float(entry["logprob"])
        if not math.isfinite(value) or value > _ROUNDING:
            raise ValueError(f"a logprob of {value} is not the log of a probability")
        return min(value, 0.0)
    prob = float(entry["prob"])
    if not 0.0 <= prob <= 1.0 + _ROUNDING:  # NaN fails this too
        raise ValueError(f"a probability of {prob} is not one")
    return math.log(min(prob, 1.0)) if prob > 0 else -math.inf


def read_token(entry: Mapping[str, Any], top: int = MAX_TOP_LOGPROBS) -> TokenProb:
    """One entry of ``logprobs.content`` (or llama.cpp's ``completion_probabilities``) as a :class:`TokenProb`.

    The token's text is the server's ``token`` (the text it sent, a
    character held back until whole); alternatives are read from their
    bytes, so a byte fragment shows as U+FFFD. Only the first ``top``
    alternatives are read (what was asked for: a server may send
    thousands), and a number that is no (log) probability is a ``ValueError``.

    Example:
        >>> read_token({"token": "🌟", "bytes": [240, 159, 140, 159], "prob": 0.5,
        ...             "top_probs": [{"token": "\\ufffd", "bytes": [159], "prob": 0.5}]}).top
        [('\\ufffd', -0.6931471805599453)]
    """
    alternatives = (entry.get("top_logprobs", entry.get("top_probs")) or ())[:top]
    raw = entry.get("bytes")
    text = entry.get("token")
    if not isinstance(text, str):
        text = _text_of(entry)[0]
    token_id = entry.get("id")
    return TokenProb(
        text=text,
        logprob=_logprob_of(entry),
        top=[(_text_of(alt)[0], _logprob_of(alt)) for alt in alternatives],
        bytes=bytes(raw) if isinstance(raw, list) else text.encode("utf-8"),
        id=token_id if isinstance(token_id, int) else None,
    )


def read_tokens(chunk: Mapping[str, Any], choice: Mapping[str, Any], top: int = MAX_TOP_LOGPROBS) -> list[TokenProb]:
    """The tokens one streamed chunk reports: ``choice.logprobs.content`` (OpenAI) or ``completion_probabilities``.

    Each with at most ``top`` alternatives (see :func:`read_token`).

    Example:
        >>> read_tokens({}, {"logprobs": {"content": [{"token": "Hi", "logprob": 0.0, "top_logprobs": []}]}})
        [TokenProb(text='Hi', logprob=0.0, top=[], bytes=b'Hi', id=None)]
        >>> read_tokens({}, {"logprobs": None})
        []
    """
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, Mapping) else chunk.get("completion_probabilities")
    return [read_token(entry, top) for entry in entries or ()]


def read_reasoning(choice: Mapping[str, Any]) -> str:
    """The thinking piece of a chat chunk (``delta.reasoning_content``; ``delta.reasoning`` elsewhere).

    Example:
        >>> read_reasoning({"delta": {"reasoning_content": "Let me see."}})
        'Let me see.'
    """
    delta = choice.get("delta") or {}
    piece = delta.get("reasoning_content", delta.get("reasoning"))
    if piece and not isinstance(piece, str):
        raise TypeError(f"its reasoning is {type(piece).__name__}, not a string")
    return piece or ""


def read_progress(chunk: Mapping[str, Any]) -> Progress | None:
    """The prefill progress a chunk carries (``prompt_progress``, sent with ``return_progress``), if any.

    Example:
        >>> read_progress({"prompt_progress": {"total": 1500, "cache": 0, "processed": 512, "time_ms": 80}})
        Progress(processed=512, total=1500, cached=0)
    """
    data = chunk.get("prompt_progress")
    if not isinstance(data, Mapping):
        return None
    return Progress(processed=int(data.get("processed", 0)), total=int(data.get("total", 0)),
                    cached=int(data.get("cache", 0)))


def read_context(timings: Timings | None, n_ctx: int | None) -> ContextUse | None:
    """The context in use after a reply, from the final timings and the slot's ``n_ctx``.

    Only a server that reports its cache (llama-server's ``cache_n``) says
    enough; otherwise, or without ``n_ctx``, ``None``.

    Example:
        >>> from rocm_nb.client.timings import Timings
        >>> read_context(Timings.from_server({"cache_n": 20, "prompt_n": 4, "predicted_n": 8}), 4096)
        ContextUse(used=32, n_ctx=4096)
        >>> read_context(Timings.from_server({"prompt_n": 4}), 4096) is None
        True
    """
    if timings is None or n_ctx is None or timings.cached_tokens is None:
        return None
    return ContextUse(used=timings.cached_tokens + timings.prompt_tokens + timings.predicted_tokens, n_ctx=n_ctx)


def read_pieces(tokens: Sequence[Any]) -> list[TokenPiece]:
    """``/tokenize`` with ``with_pieces``: each ``piece`` is a string, or a list of byte values when not UTF-8.

    Example:
        >>> read_pieces([{"id": 9906, "piece": "Hello"}, {"id": 28, "piece": [240, 159]}])
        [TokenPiece(id=9906, text='Hello', bytes=b'Hello'), TokenPiece(id=28, text='\\ufffd', bytes=b'\\xf0\\x9f')]
    """
    pieces = []
    for token in tokens:
        piece = token["piece"]
        data = bytes(piece) if isinstance(piece, list) else str(piece).encode("utf-8")
        pieces.append(TokenPiece(id=int(token["id"]), text=data.decode("utf-8", errors="replace"), bytes=data))
    return pieces
