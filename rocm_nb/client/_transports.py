"""The httpx transports under every client: bounded responses (:class:`Limited`) and safe resending (:class:`Redial`).

Bounds. A server that :func:`~rocm_nb.client.connect` reaches may be broken or
hostile. httpx's timeouts bound each *read*, so a server that sends a
keep-alive comment every half second holds a request for ever; and an event
is buffered whole until its blank line, so one 300 MB ``data:`` line costs
300 MB of the kernel's memory. These transports check every chunk of a
response body as it arrives, before anything buffers it:

* an event stream may not send more than ``max_event_bytes`` (default
  :data:`~rocm_nb.client.stream.MAX_EVENT_BYTES`, 16 MiB) without the blank line that ends an event;
  a longer one is refused with :class:`~rocm_nb.errors.StreamProtocolError`
  naming the limit, having held at most that much;
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
    >>> transport = Limited(httpx.HTTPTransport(), max_event_bytes=2**20, deadline=60.0)
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx

from rocm_nb._units import human_bytes
from rocm_nb.client.stream import DEFAULT_DEADLINE_S, MAX_EVENT_BYTES
from rocm_nb.errors import GenerationTimeout, StreamProtocolError, with_notes

__all__ = ["AsyncLimited", "Limited", "Redial"]

_BLANK_LINE = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
"""Two line ends in a row: the end of an event (atomic groups: ``\\r\\n`` is one line end, not two)."""


class _Meter:
    """Checks each chunk of one response as it arrives: the event's size so far, and the deadline."""

    def __init__(self, request: httpx.Request, started: float, max_event_bytes: int, deadline: float | None,
                 *, events: bool) -> None:
        self._url = str(request.url)
        self._started = started
        self._max = max_event_bytes
        self._deadline = deadline
        self._events = events  # count per event only in an event stream
        self._size = 0  # bytes since the last blank line
        self._tail = b""  # the stream's last bytes: a blank line may straddle two chunks

    def check_time(self) -> None:
        if self._deadline is not None and time.monotonic() - self._started > self._deadline:
            raise with_notes(GenerationTimeout(
                f"the request to {self._url} took longer than its {self._deadline} s deadline",
                phase="total", timeout=self._deadline,
            ), "The server kept sending, but never finished. Pass a larger deadline= to connect(), "
               "or deadline=None, if it is only slow.")

    def check(self, chunk: bytes) -> None:
        self.check_time()
        if not self._events:
            return
        window = self._tail + chunk
        end = max((blank.end() for blank in _BLANK_LINE.finditer(window)), default=None)
        self._size = len(window) - end if end is not None else self._size + len(chunk)
        self._tail = window[-3:]
        if self._size > self._max:
            limit = f"{human_bytes(self._max)} ({self._max} bytes)" if self._max >= 2**20 else f"{self._max} bytes"
            raise with_notes(StreamProtocolError(
                f"the server at {self._url} sent an event over the limit of {limit}; "
                f"refused after reading {self._size} bytes of it"
            ), "A llama-server event is a few hundred bytes. If this server's really are larger, "
               "pass a larger max_event_bytes= to connect().")


class _SyncBody(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, meter: _Meter) -> None:
        self._inner = inner
        self._meter = meter

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._meter.check(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, meter: _Meter) -> None:
        self._inner = inner
        self._meter = meter

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._meter.check(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_event_stream(response: httpx.Response) -> bool:
    return "text/event-stream" in response.headers.get("content-type", "")


class Limited(httpx.BaseTransport):
    """Wraps a sync transport: every response's events are capped and every request has a deadline."""

    def __init__(self, inner: httpx.BaseTransport, *, max_event_bytes: int = MAX_EVENT_BYTES,
                 deadline: float | None = DEFAULT_DEADLINE_S) -> None:
        self._inner = inner
        self._max = max_event_bytes
        self._deadline = deadline

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = self._inner.handle_request(request)
        meter = _Meter(request, started, self._max, self._deadline, events=_is_event_stream(response))
        assert isinstance(response.stream, httpx.SyncByteStream)
        try:
            meter.check_time()
        except BaseException:
            response.stream.close()
            raise
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_SyncBody(response.stream, meter), extensions=response.extensions)

    def close(self) -> None:
        self._inner.close()


class AsyncLimited(httpx.AsyncBaseTransport):
    """Async twin of :class:`Limited`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, max_event_bytes: int = MAX_EVENT_BYTES,
                 deadline: float | None = DEFAULT_DEADLINE_S) -> None:
        self._inner = inner
        self._max = max_event_bytes
        self._deadline = deadline

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        response = await self._inner.handle_async_request(request)
        meter = _Meter(request, started, self._max, self._deadline, events=_is_event_stream(response))
        assert isinstance(response.stream, httpx.AsyncByteStream)
        try:
            meter.check_time()
        except BaseException:
            await response.stream.aclose()
            raise
        return httpx.Response(response.status_code, headers=response.headers,
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
