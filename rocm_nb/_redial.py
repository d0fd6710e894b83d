"""An httpx transport that resends a request once when a kept-alive connection was dropped, if that is safe.

A server may close an idle keep-alive connection at any moment. httpx drops a
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
    >>> with httpx.Client(transport=Redial(httpx.HTTPTransport())) as http:  # doctest: +SKIP
    ...     http.get("https://llm.example.com/health")
"""

from __future__ import annotations

import httpx

__all__ = ["Redial"]

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
