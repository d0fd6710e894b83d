"""httpx transports that resend a request once when a kept-alive connection was dropped.

A server may close an idle keep-alive connection at any moment; llama-server
closes one after each streamed response. httpx notices a closed connection
before reusing it, except in the instant between the server's last byte and
its FIN: a request sent then fails with "Server disconnected without sending a
response" although the server never saw it. Browsers and urllib3 resend such
a request on a fresh connection, and so do these transports, once. A server
that really went away fails the second try too, with the error a caller
expects (connection refused, or the same disconnect).

Imported on first use, with httpx (``import rocm_nb`` does not load httpx).

Example:
    >>> import httpx
    >>> with httpx.Client(transport=Redial(httpx.HTTPTransport())) as http:  # doctest: +SKIP
    ...     http.get("http://127.0.0.1:8080/health")
"""

from __future__ import annotations

import httpx

__all__ = ["AsyncRedial", "Redial"]


class Redial(httpx.BaseTransport):
    """Wraps a sync transport: a request that found its connection dropped is sent once more."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._inner.handle_request(request)
        except httpx.RemoteProtocolError:
            return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class AsyncRedial(httpx.AsyncBaseTransport):
    """Async twin of :class:`Redial`."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.RemoteProtocolError:
            return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
