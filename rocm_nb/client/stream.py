"""One streamed generation: an SSE response read into text pieces and a ``Completion``.

:class:`TokenStream` (sync) and :class:`AsyncTokenStream` read the server's
event stream with httpx-sse, yield the text pieces, keep the text so far for
errors (``.partial``) and, once exhausted, hold the :class:`Completion`.
Closing one early closes the HTTP response, which cancels the generation on
the server. :class:`~rocm_nb.client.Client` opens them.

Example:
    >>> with model.stream("Once upon a time", max_tokens=16) as stream:  # doctest: +SKIP
    ...     text = "".join(stream)
    >>> stream.completion.timings.predicted_per_second  # doctest: +SKIP
    118.2
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from rocm_nb.client._accumulator import SO_FAR as _SO_FAR
from rocm_nb.client._accumulator import Accumulator, Delta
from rocm_nb.client.completion import Completion
from rocm_nb.client.logprobs import Progress, SlotContext, TokenProb
from rocm_nb.errors import (
    GenerationError,
    GenerationTimeout,
    ImagesNotSupported,
    RocmNbError,
    ServerUnavailable,
    StreamProtocolError,
    TimeoutPhase,
    with_notes,
)

if TYPE_CHECKING:
    import httpx
    from httpx_sse import ServerSentEvent

__all__ = [
    "DEFAULT_DEADLINE_S",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "AsyncTokenStream",
    "Delta",
    "FailureHook",
    "TokenStream",
    "http_error",
    "redirect_error",
    "transport_error",
]

FailureHook = Callable[[Exception, str], "RocmNbError | None"]
"""Given a transport error (or the error of a stream cut off before the server finished) and the partial text,
return a better error (or None)."""

MAX_EVENT_BYTES = 16 * 2**20
"""The most bytes (decoded) one server-sent event may have (16 MiB; a llama-server event has a few hundred).

A larger one is refused as it arrives, never buffered whole
(:mod:`rocm_nb.client._transports`); ``connect(..., max_event_bytes=N)`` changes it.
"""

MAX_BODY_BYTES = 16 * 2**20
"""The most bytes (decoded) one answer that is not an event stream may have: 16 MiB.

``/v1/models``, ``/props``, ``/tokenize`` and embeddings answer in well under
that. A larger one is refused as it arrives (:mod:`rocm_nb.client._transports`);
``connect(..., max_body_bytes=N)`` changes it. Error bodies are read only
up to :attr:`~rocm_nb.errors.GenerationError.body_limit` (16 KiB).
"""

DEFAULT_DEADLINE_S: float | None = 3600.0
"""How long one request to a server from ``connect()`` may take in all (s): one hour.

However steadily bytes arrive (:mod:`rocm_nb.client._transports`); ``connect(...,
deadline=None)`` removes it. A ``LocalModel``'s own server has none.
"""


_PHASES: dict[str, TimeoutPhase] = {
    "ConnectTimeout": "connect", "ReadTimeout": "read", "WriteTimeout": "write", "PoolTimeout": "pool",
}


def transport_error(exc: Exception, partial: str = "") -> GenerationError:
    """The :class:`GenerationError` subclass for a failure below HTTP, naming its cause.

    A timeout is a :class:`GenerationTimeout` with the phase that ran out
    and that phase's own limit (a 10 s connect timeout is not a 600 s read
    stall); a refused or lost connection is :class:`ServerUnavailable`; an
    answer that cannot be decoded is a :class:`StreamProtocolError`.

    Example:
        >>> import httpx
        >>> request = httpx.Request("GET", "http://127.0.0.1:9/props", extensions={"timeout": {"connect": 10.0}})
        >>> error = transport_error(httpx.ConnectTimeout("timed out", request=request))
        >>> type(error).__name__, error.phase, str(error)
        ('GenerationTimeout', 'connect', 'no connection to http://127.0.0.1:9/props within the 10.0 s connect timeout')
    """
    import httpx

    try:
        request: httpx.Request | None = exc.request if isinstance(exc, httpx.RequestError) else None
    except RuntimeError:  # an httpx error raised without its request
        request = None
    url = str(request.url) if request is not None else "the server"
    so_far = _SO_FAR if partial else ""
    if isinstance(exc, httpx.TimeoutException):
        phase = _PHASES.get(type(exc).__name__, "read")
        limits = request.extensions.get("timeout", {}) if request is not None else {}
        limit = limits.get(phase)
        within = f"the {limit} s {phase} timeout" if limit is not None else f"the {phase} timeout"
        message, step = {
            "connect": (f"no connection to {url} within {within}",
                        "Is the server running, and is the address right?"),
            "read": (f"the server sent nothing for {limit} s and looks hung" if limit is not None
                     else "the server sent nothing before the read timeout and looks hung",
                     "Restart the model, or pass a larger timeout= if it is only slow."),
            "write": (f"could not send the request to {url} within {within}",
                      "The server is not reading requests: it may be overloaded or hung."),
            "pool": (f"no free connection to {url} within {within}",
                     "Too many requests at once on one client: wait for some to finish."),
        }[phase]
        return with_notes(GenerationTimeout(message, phase=phase, timeout=limit, partial=partial), so_far, step)
    if isinstance(exc, httpx.ConnectError):
        untrusted = "CERTIFICATE_VERIFY_FAILED" in str(exc)
        return with_notes(ServerUnavailable(f"could not reach {url} ({exc})", partial=partial),
                          "Its TLS certificate is not trusted here: pass connect(..., verify='/path/to/ca.pem') "
                          "with the CA that signed it" if untrusted else
                          "Is the server running, and is the address right?")
    if isinstance(exc, httpx.DecodingError):
        return with_notes(StreamProtocolError(f"could not decode the answer from {url} ({exc})", partial=partial),
                          so_far)
    if isinstance(exc, httpx.TransportError):
        return with_notes(ServerUnavailable(
            f"lost the connection to {url} ({type(exc).__name__}: {exc})", partial=partial), so_far,
            *getattr(exc, "__notes__", ()))  # e.g. rocm_nb.client._transports's: why it was not resent
    return with_notes(GenerationError(f"the request to {url} failed ({type(exc).__name__}: {exc})",
                                      partial=partial), so_far)


_SAID: tuple[tuple[str, str], ...] = (  # what llama-server says, and what it means for a rocm_nb user
    ("does not support logits computation",
     "this server computes embeddings (or reranking scores) only, so it cannot generate text: call embed() on it, "
     "or load a chat model (without embedding=True or reranking=True) to generate"),
    ("does not support embeddings",
     "this server does not compute embeddings: load an embedding model, LocalModel('minilm', embedding=True), "
     "and call embed() on that one"),
    ("does not support reranking",
     "this server does not rerank: load a model as a reranker, LocalModel(..., reranking=True), and call rerank() "
     "on that one"),
)
"""llama-server's words for a request its mode cannot serve (``tools/server``), said as what to do here (its
own words, which name its command-line flags, stay in the error's ``.body``)."""

_NO_IMAGES = "image input is not supported"
"""How llama-server refuses an image part when it was started without a projector."""


def http_error(response: httpx.Response, body: str) -> GenerationError:
    """The error for a non-2xx answer: its status, the request, and what the server said (or what it means).

    A refused image is :class:`ImagesNotSupported`; a request the server's
    mode cannot serve (chat on an embedding server, embeddings on a chat
    server) says what to do in rocm_nb's terms.

    Example:
        >>> import httpx
        >>> request = httpx.Request("POST", "http://127.0.0.1:8080/v1/embeddings")
        >>> said = '{"error": {"message": "This server does not support embeddings. Start it with `--embeddings`"}}'
        >>> print(http_error(httpx.Response(501, request=request), said))  # doctest: +ELLIPSIS
        the server answered 501 to POST /v1/embeddings: this server does not compute embeddings: load ...
        >>> body = '{"error": {"message": "image input is not supported - hint: provide the mmproj"}}'
        >>> str(http_error(httpx.Response(500, request=request), body))  # doctest: +ELLIPSIS
        'this server takes no images; it said: "image input is not supported - hint: provide the mmproj". ...'
    """
    try:
        detail = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = body[:500]
    if isinstance(detail, str) and _NO_IMAGES in detail:
        return ImagesNotSupported(
            f'this server takes no images; it said: "{detail}". Send text only, or use a vision model: a '
            "llama-server started with its projector (--mmproj), or LocalModel(model, mmproj=...)",
            status_code=response.status_code, body=body)
    detail = next((meaning for said, meaning in _SAID if said in str(detail)), detail)
    return GenerationError(
        f"the server answered {response.status_code} to {response.request.method} "
        f"{response.request.url.path}: {detail}",
        status_code=response.status_code,
        body=body,
    )


def redirect_error(response: httpx.Response) -> StreamProtocolError:
    """The error for a redirect, naming its status and where it points (requests never follow one).

    Following it would send the request, and its API key, to another address.

    Example:
        >>> import httpx
        >>> request = httpx.Request("POST", "http://127.0.0.1:8080/v1/completions")
        >>> str(redirect_error(httpx.Response(301, headers={"location": "https://x/v1/completions"}, request=request)))
        "the server redirected POST /v1/completions (301 Moved Permanently) to 'https://x/v1/completions'"
    """
    location = response.headers.get("location", "")
    return with_notes(StreamProtocolError(
        f"the server redirected {response.request.method} {response.request.url.path} "
        f"({response.status_code} {response.reason_phrase}) to {location!r}",
        status_code=response.status_code,
    ), "rocm_nb does not follow redirects, so the API key goes nowhere else: "
       "connect to the address the server names, if you trust it.")


def _check_event_stream(response: httpx.Response) -> None:
    if response.is_redirect:
        raise redirect_error(response)
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        raise with_notes(StreamProtocolError(
            f"expected an event stream from {response.request.url.path}, got {content_type!r}",
            status_code=response.status_code,
        ), "Is this a llama-server or OpenAI-compatible endpoint?")


class _StreamBase:
    """What the sync and async streams share: state, error translation.

    ``open_response`` starts the HTTP request when the stream is first read
    (a response, or for the async stream an awaitable of one).
    """

    def __init__(
        self,
        open_response: Callable[[], Any],
        acc: Accumulator,
        on_failure: FailureHook,
        slot_ctx: SlotContext | None = None,
    ) -> None:
        self._open_response = open_response
        self._acc = acc
        self._on_failure = on_failure
        self.slot_ctx = slot_ctx
        """Where the slot's context size comes from, for ``Completion.context`` (set by the client)."""
        self.completion: Completion | None = None
        """The finished :class:`Completion`, set once the stream is exhausted."""
        self._response: httpx.Response | None = None
        self._closed = False

    @property
    def text(self) -> str:
        """All answer text received so far."""
        return self._acc.partial

    @property
    def reasoning(self) -> str:
        """All thinking received so far (empty for a model that does not think)."""
        return self._acc.reasoning

    @property
    def tokens(self) -> list[TokenProb]:
        """The answer's tokens so far with their probabilities (with ``logprobs=True``; else empty)."""
        return self._acc.tokens

    @property
    def progress(self) -> Progress | None:
        """The latest prefill progress (with ``return_progress=True``), ``None`` before any."""
        return self._acc.progress

    def _wants_ctx(self) -> bool:
        """Whether the reply is a llama-server's (it reports its cache) and a context size can be had."""
        timings = self._acc.timings
        return self.slot_ctx is not None and timings is not None and timings.cached_tokens is not None

    def _translate(self, exc: Exception) -> Exception:
        if isinstance(exc, ValueError | TypeError):  # bad input found before the request (an option the server refuses)
            return exc
        if isinstance(exc, RocmNbError):
            if isinstance(exc, GenerationError) and not exc.partial:  # raised below, where the text is unknown
                exc.partial = self._acc.partial
            return exc
        import httpx

        partial = self._acc.partial
        if not isinstance(exc, httpx.TimeoutException):  # a hung server is not a dead one: no diagnosis
            better = self._on_failure(exc, partial)
            if better is not None:
                return better
        return transport_error(exc, partial)

    def _finished(self) -> None:
        if self._wants_ctx():
            assert self.slot_ctx is not None
            self._acc.n_ctx = self.slot_ctx()
        try:
            self.completion = self._acc.finish()
        except StreamProtocolError as exc:  # cut off before the server finished: its owner may know why
            better = self._on_failure(exc, self._acc.partial)  # (a router's model unloaded, a crashed server)
            if better is None:
                raise
            raise better from exc


class TokenStream(_StreamBase):
    """An iterator of text pieces from one streaming request.

    Closing it early (an exception, ``close()``, leaving a ``with`` block,
    dropping it, or a newer request from the same thread: see
    ``Client.stream``) closes the HTTP stream, which cancels the generation
    on the server; ``break`` alone does not close a stream held in a
    variable. After the last piece, ``.completion`` holds the result.

    Example:
        >>> with model.stream("Once upon a time", max_tokens=8) as s:  # doctest: +SKIP
        ...     text = "".join(s)
        >>> s.completion.finish_reason  # doctest: +SKIP
        'length'
    """

    _open_response: Callable[[], httpx.Response]
    _events: Iterator[ServerSentEvent] | None = None

    def __iter__(self) -> TokenStream:
        return self

    def __next__(self) -> str:
        return self._pull(text_only=True).text

    def deltas(self) -> Iterator[Delta]:
        """Every update of this stream as a :class:`Delta`: answer and thinking pieces, tokens, progress.

        Iterate the stream itself *or* its deltas, not both.

        Example:
            >>> for d in model.chat_stream(messages, return_progress=True).deltas():  # doctest: +SKIP
            ...     print(d.reasoning or d.text or d.progress, end="")
        """
        while True:
            try:
                yield self._pull(text_only=False)
            except StopIteration:
                return

    def _pull(self, *, text_only: bool) -> Delta:
        """The next delta with answer text (or with anything, ``text_only=False``); StopIteration at the end."""
        if self._closed:
            raise StopIteration
        try:
            if self._events is None:
                self._response = self._open_response()
                if self._response.is_error:
                    raise http_error(self._response, self._response.read().decode("utf-8", "replace"))
                _check_event_stream(self._response)
                from httpx_sse import EventSource

                self._events = EventSource(self._response).iter_sse()
            for event in self._events:
                delta = self._acc.feed_delta(event.data)
                if delta.text if text_only else delta:
                    return delta
                if self._acc.done:
                    break
            self._finished()
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception):
                raise self._translate(exc) from exc
            raise
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Close the HTTP stream (cancelling the generation if it still runs). Idempotent."""
        self._closed = True
        if self._response is not None:
            self._response.close()

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class AsyncTokenStream(_StreamBase):
    """The async twin of :class:`TokenStream`: ``async for piece in stream``.

    Example:
        >>> async with model.astream("Hi", max_tokens=8) as s:  # doctest: +SKIP
        ...     async for piece in s:
        ...         print(piece, end="")
    """

    _events: AsyncIterator[ServerSentEvent] | None = None

    def __aiter__(self) -> AsyncTokenStream:
        return self

    async def __anext__(self) -> str:
        return (await self._pull(text_only=True)).text

    async def deltas(self) -> AsyncIterator[Delta]:
        """Every update of this stream as a :class:`Delta` (see :meth:`TokenStream.deltas`).

        Example:
            >>> async for d in model.achat_stream(messages).deltas():  # doctest: +SKIP
            ...     print(d.reasoning or d.text, end="")
        """
        while True:
            try:
                yield await self._pull(text_only=False)
            except StopAsyncIteration:
                return

    async def _pull(self, *, text_only: bool) -> Delta:
        if self._closed:
            raise StopAsyncIteration
        try:
            if self._events is None:
                self._response = await self._open_response()
                if self._response.is_error:
                    body = (await self._response.aread()).decode("utf-8", "replace")
                    raise http_error(self._response, body)
                _check_event_stream(self._response)
                from httpx_sse import EventSource

                self._events = EventSource(self._response).aiter_sse()
            async for event in self._events:
                delta = self._acc.feed_delta(event.data)
                if delta.text if text_only else delta:
                    return delta
                if self._acc.done:
                    break
            if self._wants_ctx() and self.slot_ctx is not None and not self.slot_ctx.known:
                import asyncio

                await asyncio.to_thread(self.slot_ctx)  # asked once per client, off the event loop
            self._finished()
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, Exception):
                raise self._translate(exc) from exc
            raise
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Close the HTTP stream (cancelling the generation if it still runs). Idempotent."""
        self._closed = True
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> AsyncTokenStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
