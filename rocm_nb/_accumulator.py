"""The pure state of one stream: server-sent event data in, text pieces and a ``Completion`` out.

:class:`Accumulator` holds no I/O: :mod:`rocm_nb.stream` feeds it each
event's ``data`` field and asks it for the :class:`~rocm_nb.completion.Completion`
when the stream ends. Every field the server streams (text, finish reason,
timings) is read here, in one place.

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
from typing import Any

from rocm_nb.completion import Completion, Kind, Timings, Usage
from rocm_nb.errors import GenerationError, StreamProtocolError, with_notes
from rocm_nb.tools import CallParts

__all__ = ["SO_FAR", "Accumulator"]

SO_FAR = "The text received so far is in the error's .partial."


class Accumulator:
    """Pure state of one stream: turns SSE ``data`` fields into text pieces.

    Example:
        >>> acc = Accumulator("completion")
        >>> acc.feed('{"choices": [{"text": "Hel"}]}') + acc.feed('{"choices": [{"text": "lo"}]}')
        'Hello'
        >>> acc.feed("[DONE]"), acc.done, acc.partial
        ('', True, 'Hello')
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._text = io.StringIO()  # grows by the text's own size per token, not an object per piece
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

    def feed(self, data: str) -> str:
        """Consume one event's data; return the text it carries ('' if none)."""
        if data.strip() == "[DONE]":
            self.done = True
            return ""
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise StreamProtocolError(
                f"the server sent a malformed event ({exc.msg}): {data[:200]!r}",
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
            piece = self._read(chunk)
        except (TypeError, AttributeError, ValueError) as exc:  # valid JSON, but not a completion chunk
            raise StreamProtocolError(
                f"the server sent an event that is not a completion chunk ({exc}): {data[:200]!r}",
                body=data,
                partial=self.partial,
            ) from None
        if piece:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self._text.write(piece)
            self._pieces += 1
        return piece

    def _read(self, chunk: dict[str, Any]) -> str:
        """The text of one chunk; its finish reason and timings are kept. Raises on a chunk of the wrong shape."""
        if isinstance(chunk.get("timings"), dict):
            self.timings = Timings.from_server(chunk["timings"])
        self._read_usage(chunk)
        piece = ""
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            self.calls.read(choice.get("delta") or {})
            text = (choice.get("delta") or {}).get("content") if self.kind == "chat" else choice.get("text")
            if text and not isinstance(text, str):
                raise TypeError(f"its text is {type(text).__name__}, not a string")
            piece += text or ""
        return piece

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
                          tool_calls=self.calls.calls())
