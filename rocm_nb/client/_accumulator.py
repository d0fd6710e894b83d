"""The pure state of one stream: server-sent event data in, text pieces and a ``Completion`` out.

:class:`Accumulator` holds no I/O: :mod:`rocm_nb.client.stream` feeds it each
event's ``data`` field and asks it for the :class:`~rocm_nb.client.completion.Completion`
when the stream ends. Every field the server streams (text, finish reason,
timings) is read here, in one place.

Each chunk is also read as a :class:`Delta` (answer piece, thinking piece,
token probabilities, prefill progress): what ``stream.deltas()`` yields.

Example:
    >>> acc = Accumulator("chat")
    >>> acc.feed('{"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]}')
    'Hi'
    >>> acc.finish().text
    'Hi'
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any

from rocm_nb.client.completion import Completion, Kind
from rocm_nb.client.logprobs import (
    MAX_TOP_LOGPROBS,
    Progress,
    TokenProb,
    read_context,
    read_progress,
    read_reasoning,
    read_tokens,
)
from rocm_nb.client.timings import Timings, Usage
from rocm_nb.client.tools import CallParts
from rocm_nb.errors import GenerationError, StreamProtocolError, with_notes

__all__ = ["SO_FAR", "Accumulator", "Delta"]

SO_FAR = "The text received so far is in the error's .partial."


@dataclass(frozen=True)
class Delta:
    """One update of a stream: an answer piece, a thinking piece, the tokens it brought, prefill progress.

    ``tokens`` are the chunk's tokens with their probabilities (with
    ``logprobs=True``), those of the thinking as well as of the answer (a
    chunk with ``reasoning`` and no ``text`` brought thinking tokens). A
    delta is false when it carries nothing.

    Example:
        >>> Delta(reasoning="Hmm."), bool(Delta())
        (Delta(text='', reasoning='Hmm.', tokens=(), progress=None), False)
    """

    text: str = ""
    reasoning: str = ""
    tokens: tuple[TokenProb, ...] = ()
    progress: Progress | None = None

    def __bool__(self) -> bool:
        return bool(self.text or self.reasoning or self.tokens or self.progress is not None)


_NOTHING = Delta()


class Accumulator:
    """Pure state of one stream: turns SSE ``data`` fields into text pieces.

    Example:
        >>> acc = Accumulator("completion")
        >>> acc.feed('{"choices": [{"text": "Hel"}]}') + acc.feed('{"choices": [{"text": "lo"}]}')
        'Hello'
        >>> acc.feed("[DONE]"), acc.done, acc.partial
        ('', True, 'Hello')
    """

    def __init__(self, kind: Kind, *, logprobs: bool = False, top: int = MAX_TOP_LOGPROBS) -> None:
        self.kind = kind
        self.logprobs = logprobs
        """Whether token probabilities were asked for: ``Completion.tokens`` is then a list, else ``None``."""
        self.top = top
        """The alternatives per token asked for: no more are read, whatever the server sends."""
        self._text = io.StringIO()  # grows by the text's own size per token, not an object per piece
        self._reasoning = io.StringIO()
        self.tokens: list[TokenProb] = []
        """The answer's tokens so far (``logprobs=True``); thinking tokens are in the deltas only."""
        self.progress: Progress | None = None
        self.n_ctx: int | None = None
        """The slot's context size, when the client knows it (for ``Completion.context``)."""
        self.finish_reason: str | None = None
        self.timings: Timings | None = None
        self.usage: Usage | None = None
        self._pieces = 0
        self.done = False
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.calls = CallParts()

    @property
    def partial(self) -> str:
        return self._text.getvalue()

    @property
    def reasoning(self) -> str:
        """The thinking received so far."""
        return self._reasoning.getvalue()

    def feed(self, data: str) -> str:
        """Consume one event's data; return the answer text it carries ('' if none)."""
        return self.feed_delta(data).text

    def feed_delta(self, data: str) -> Delta:
        """Consume one event's data; return all it carries as a :class:`Delta`."""
        if data.strip() == "[DONE]":
            self.done = True
            return _NOTHING
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise StreamProtocolError(
                f"the server sent a malformed event ({exc.msg}): {data[:200]!r}",
                body=data,
                partial=self.partial,
            ) from None
        except (ValueError, RecursionError):  # JSON, but Python will not read it: over 4,300 digits, too deep
            raise StreamProtocolError(
                f"the server sent an event with a number too long or nesting too deep to read: {data[:200]!r}",
                body=data,
                partial=self.partial,
            ) from None
        if not isinstance(chunk, dict):
            raise StreamProtocolError(
                f"the server sent an unexpected event: {data[:200]!r}", body=data, partial=self.partial
            )
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            code = error.get("code") if isinstance(error, dict) else None
            raise GenerationError(
                f"the server reported an error mid-stream: {message}",
                status_code=code if isinstance(code, int) else None,
                body=data,
                partial=self.partial,
            )
        try:
            delta = self._read(chunk)
        except (TypeError, AttributeError, ValueError, KeyError) as exc:  # valid JSON, but not a completion chunk
            raise StreamProtocolError(
                f"the server sent an event that is not a completion chunk ({exc}): {data[:200]!r}",
                body=data,
                partial=self.partial,
            ) from None
        if delta.text or delta.reasoning:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self._text.write(delta.text)
            self._reasoning.write(delta.reasoning)
            self._pieces += 1
        if delta.tokens and (delta.text or not delta.reasoning):  # the answer's tokens, not the thinking's
            self.tokens.extend(delta.tokens)
        if delta.progress is not None:
            self.progress = delta.progress
        return delta

    def _read(self, chunk: dict[str, Any]) -> Delta:
        """What one chunk carries; its finish reason and timings are kept. Raises on a chunk of the wrong shape."""
        if isinstance(chunk.get("timings"), dict):
            self.timings = Timings.from_server(chunk["timings"])
        self._read_usage(chunk)
        piece = thought = ""
        tokens: list[TokenProb] = []
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            self.calls.read(choice.get("delta") or {})
            text = (choice.get("delta") or {}).get("content") if self.kind == "chat" else choice.get("text")
            if text and not isinstance(text, str):
                raise TypeError(f"its text is {type(text).__name__}, not a string")
            piece += text or ""
            thought += read_reasoning(choice)
            tokens += read_tokens(chunk, choice, self.top)
        progress = read_progress(chunk)
        if not (piece or thought or tokens or progress):
            return _NOTHING
        return Delta(piece, thought, tuple(tokens), progress)

    def _read_usage(self, chunk: dict[str, Any]) -> None:
        """Keep the chunk's ``usage`` (sent when asked with ``stream_options.include_usage``)."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = Usage.from_server(chunk["usage"])

    def finish(self) -> Completion:
        """Check the stream ended properly and return its completion."""
        if not self.done and self.finish_reason is None:
            raise with_notes(StreamProtocolError(
                "the stream ended before the server finished (no finish_reason, no [DONE])",
                partial=self.partial,
            ), SO_FAR if self.partial else "")
        ended = time.perf_counter()
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        timings = self.timings
        if timings is None and (self.usage is not None or self._pieces):  # a server that sends no timings
            timings = Timings.from_client(self.usage, self._pieces, ttft, ended - self.started)
        return Completion(self.partial, self.finish_reason, timings, ttft, ended - self.started, usage=self.usage,
                          tool_calls=self.calls.calls(),
                          reasoning=self.reasoning, tokens=list(self.tokens) if self.logprobs else None,
                          context=read_context(self.timings, self.n_ctx))
