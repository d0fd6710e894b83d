"""The httpx transports under every client: bounded responses (:class:`Limited`) and safe resending (:class:`Redial`).

Bounds. A server that :func:`~rocm_nb.client.connect` reaches may be broken or
hostile. httpx's timeouts bound each *read*, so a server that sends a
keep-alive comment every half second holds a request for ever; an event
is buffered whole until its blank line, so one 300 MB ``data:`` line costs
300 MB of the kernel's memory; and a body is read whole, so a 400 MB error
page costs gigabytes. These transports check every chunk of a response body
as it arrives, *decoded*, before anything buffers it:

* the body is decoded here, not by httpx: every request asks for ``gzip``
  or ``deflate`` only (``Accept-Encoding``), and a compressed body is
  inflated at most 64 KiB per step, so every limit below counts the bytes
  it inflates to (a 0.6 MB gzip body that inflates to one 600 MB event is
  refused after 16 MiB of it). Another encoding (``br``, ``zstd``, two
  at once) is refused with :class:`~rocm_nb.errors.StreamProtocolError`;
* an event stream may not send more than ``max_event_bytes`` (default
  :data:`~rocm_nb.client.stream.MAX_EVENT_BYTES`, 16 MiB) without the blank line that ends an event;
  a longer one is refused with :class:`~rocm_nb.errors.StreamProtocolError`
  naming the limit, having held at most that much;
* any other successful body (JSON from ``/v1/models``, ``/props``,
  ``/tokenize``, embeddings) may not exceed ``max_body_bytes`` (default
  :data:`~rocm_nb.client.stream.MAX_BODY_BYTES`, 16 MiB), refused the same way;
* an error body (a status of 400 or more) is read only up to
  :attr:`GenerationError.body_limit <rocm_nb.errors.GenerationError.body_limit>`
  bytes (16 KiB), enough for any server's error message, and the
  connection is closed there;
* a request may not take longer than ``deadline`` seconds in all, from the
  moment it is sent to its last byte (default :data:`~rocm_nb.client.stream.DEFAULT_DEADLINE_S`,
  one hour; ``None``: no deadline). Past it,
  :class:`~rocm_nb.errors.GenerationTimeout` with ``phase="total"`` is raised
  when the next bytes arrive; a server that sends nothing at all is caught by
  the read timeout.

A :class:`~rocm_nb.LocalModel` talks to its own llama-server, which is
neither: its client has no deadline (a long reply on a slow CPU may take
hours), and the same event limit.

Resending. A server may close an idle keep-alive connection at any moment. httpx drops a
pooled connection that it finds closed before sending (the request provably
never left), but not in the instant between the server's last byte and its
FIN: a request sent then fails with "Server disconnected without sending a
response". From the client's side that is indistinguishable from a server
that read the whole request and then closed without answering, so resending
it could run it twice: for a generation on a paid endpoint, a duplicate,
billed request.

What rocm_nb does about it:

* To a server on this machine (every ``LocalModel``, and ``connect()`` to a
  loopback address) it keeps no connection alive, in sync and async code
  alike, so no request ever meets a connection the server is closing, and
  nothing is resent. The cost is one loopback TCP connect per request:
  measured with httpx against a local socket server on a busy two-core
  machine, a median of 0.9-1.1 ms per request against 0.4-0.5 ms with
  keep-alive (5 runs of 200 GETs; the server's thread start per connection
  included), so about 0.6 ms, beside a generation's time to first token of
  tens of milliseconds at least. The raw baseline in ``benchmarks/bench.py``
  makes the same choice, so its rows compare like with like.
* To a remote server connections stay alive (a TLS handshake per request
  costs more), and this transport resends only requests that are safe to
  repeat (``GET``, ``HEAD``, ``OPTIONS``: ``/props``, ``/health``,
  ``/v1/models``, ``/metrics``), once, as browsers and urllib3 do. A ``POST``
  (a generation, ``/tokenize``) is never resent: its error says the request
  may have reached the server.

Imported on first use, with httpx (``import rocm_nb`` does not load httpx).

Example:
    >>> import httpx
    >>> transport = Limited(httpx.HTTPTransport(), max_event_bytes=2**20, max_body_bytes=2**22, deadline=60.0)
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import AsyncIterator, Iterator

import httpx

from rocm_nb._units import human_bytes
from rocm_nb.client.stream import DEFAULT_DEADLINE_S, MAX_BODY_BYTES, MAX_EVENT_BYTES
from rocm_nb.errors import GenerationError, GenerationTimeout, StreamProtocolError, with_notes

__all__ = ["ACCEPT_ENCODING", "AsyncLimited", "Limited", "Redial"]

_BLANK_LINE = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
"""Two line ends in a row: the end of an event (atomic groups: ``\\r\\n`` is one line end, not two)."""


ACCEPT_ENCODING = "gzip, deflate"
"""What every request accepts: the encodings :class:`_Inflate` decodes step by step (httpx would add br and zstd)."""

_STEP = 2**16
"""The most bytes one step of inflating makes: a compression bomb never inflates more than this at once."""


def _limit(size: int) -> str:
    return f"{human_bytes(size)} ({size} bytes)" if size >= 2**20 else f"{size} bytes"


class _Inflate:
    """Inflates a gzip or deflate body, at most :data:`_STEP` bytes per step.

    As httpx does: ``deflate`` is tried with its zlib wrapper, then raw;
    anything after the end of a gzip stream is ignored.

    Example:
        >>> import gzip
        >>> sum(map(len, _Inflate("gzip").feed(gzip.compress(bytes(10**6)))))
        1000000
    """

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The pieces ``data`` inflates to, each at most :data:`_STEP` bytes."""
        while not self._zlib.eof:
            try:
                piece = self._zlib.decompress(data, _STEP)
            except zlib.error as exc:
                if self._encoding == "deflate" and not self._started:  # a raw deflate stream, without zlib's header
                    self._zlib, self._started = zlib.decompressobj(-zlib.MAX_WBITS), True
                    continue
                raise httpx.DecodingError(f"the server's {self._encoding} body is corrupt ({exc})") from None
            self._started = True
            data = self._zlib.unconsumed_tail
            if piece:
                yield piece
            if not data and len(piece) < _STEP:  # all input used and nothing held back
                return


class _Meter:
    """Decodes and checks each chunk of one response as it arrives: its size, and the deadline.

    ``kind`` is ``"events"`` (an event stream: each event is capped),
    ``"body"`` (any other successful answer: the whole is capped) or
    ``"error"`` (a status of 400 or more: only a prefix is kept, and
    :attr:`full` says when it is complete).
    """

    def __init__(self, request: httpx.Request, response: httpx.Response, started: float, max_event_bytes: int,
                 max_body_bytes: int, deadline: float | None) -> None:
        self._url = str(request.url)
        self._started = started
        self._deadline = deadline
        self.kind = "error" if response.status_code >= 400 else "events" if _is_event_stream(response) else "body"
        self._max = {"events": max_event_bytes, "body": max_body_bytes, "error": GenerationError.body_limit}[self.kind]
        self._size = 0  # bytes of the event (since the last blank line) or of the body so far
        self._tail = b""  # the stream's last bytes: a blank line may straddle two chunks
        self.full = False
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "deflate"):
            raise with_notes(StreamProtocolError(
                f"the server at {self._url} answered {response.status_code} with a body encoded as {encoding!r}, "
                f"which rocm_nb did not ask for (it asks for {ACCEPT_ENCODING})",
                status_code=response.status_code,
            ), "A proxy in between may be compressing answers regardless: configure it to honour Accept-Encoding.")
        self._inflate = None if encoding == "identity" else _Inflate(encoding)

    def check_time(self) -> None:
        if self._deadline is not None and time.monotonic() - self._started > self._deadline:
            raise with_notes(GenerationTimeout(
                f"the request to {self._url} took longer than its {self._deadline} s deadline",
                phase="total", timeout=self._deadline,
            ), "The server kept sending, but never finished. Pass a larger deadline= to connect(), "
               "or deadline=None, if it is only slow.")

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        """The checked pieces ``chunk`` decodes to; raises as soon as a limit is passed."""
        self.check_time()
        for piece in self._inflate.feed(chunk) if self._inflate is not None else (chunk,):
            if self.kind == "error":
                kept = piece[: self._max - self._size]
                self._size += len(kept)
                self.full = self._size >= self._max
                if kept:
                    yield kept
                if self.full:
                    return
                continue
            if self.kind == "events":
                window = self._tail + piece
                end = max((blank.end() for blank in _BLANK_LINE.finditer(window)), default=None)
                self._size = len(window) - end if end is not None else self._size + len(piece)
                self._tail = window[-3:]
            else:
                self._size += len(piece)
            if self._size > self._max:
                raise self._too_large()
            yield piece

    def _too_large(self) -> StreamProtocolError:
        if self.kind == "events":
            return with_notes(StreamProtocolError(
                f"the server at {self._url} sent an event over the limit of {_limit(self._max)}; "
                f"refused after reading {self._size} bytes of it"
            ), "A llama-server event is a few hundred bytes. If this server's really are larger, "
               "pass a larger max_event_bytes= to connect().")
        return with_notes(StreamProtocolError(
            f"the server at {self._url} sent an answer over the limit of {_limit(self._max)}; "
            f"refused after reading {self._size} bytes of it"
        ), "If this server's answers really are larger, pass a larger max_body_bytes= to connect().")


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, meter: _Meter) -> None:
        self._inner = inner
        self._meter = meter

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            yield from self._meter.decode(chunk)
            if self._meter.full:  # an error body's prefix is all that is read
                break

    def close(self) -> None:
        self._inner.close()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, meter: _Meter) -> None:
        self._inner = inner
        self._meter = meter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            for piece in self._meter.decode(chunk):
                yield piece
            if self._meter.full:
                break

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


def _decoded_headers(response: httpx.Response) -> httpx.Headers:
    """The response's headers without what httpx would decode or count again: the body is decoded here."""
    headers = response.headers.copy()
    for name in ("content-encoding", "content-length"):
        headers.pop(name, None)
    return headers


class Limited(httpx.BaseTransport):
    """Wraps a sync transport: every body is decoded here and capped, and every request has a deadline."""

    def __init__(self, inner: httpx.BaseTransport, *, max_event_bytes: int = MAX_EVENT_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES, deadline: float | None = DEFAULT_DEADLINE_S) -> None:
        self._inner = inner
        self._limits = (max_event_bytes, max_body_bytes, deadline)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        response = self._inner.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        try:
            meter = _Meter(request, response, started, *self._limits)
            meter.check_time()
        except BaseException:
            response.stream.close()
            raise
        return httpx.Response(response.status_code, headers=_decoded_headers(response),
                              stream=_SyncBody(response.stream, meter), extensions=response.extensions)

    def close(self) -> None:
        self._inner.close()


class AsyncLimited(httpx.AsyncBaseTransport):
    """Async twin of :class:`Limited`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, max_event_bytes: int = MAX_EVENT_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES, deadline: float | None = DEFAULT_DEADLINE_S) -> None:
        self._inner = inner
        self._limits = (max_event_bytes, max_body_bytes, deadline)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        try:
            meter = _Meter(request, response, started, *self._limits)
            meter.check_time()
        except BaseException:
            await response.stream.aclose()
            raise
        return httpx.Response(response.status_code, headers=_decoded_headers(response),
                              stream=_AsyncBody(response.stream, meter), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


_SAFE_TO_REPEAT = frozenset({"GET", "HEAD", "OPTIONS"})


class Redial(httpx.BaseTransport):
    """Wraps a sync transport: a safe-to-repeat request that found its connection dropped is sent once more."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._inner.handle_request(request)
        except httpx.RemoteProtocolError as exc:
            if request.method not in _SAFE_TO_REPEAT:
                exc.add_note(f"The {request.method} request was not resent: the server may have received it, "
                             "and a second one could run (and bill) it twice.")
                raise
            return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()
