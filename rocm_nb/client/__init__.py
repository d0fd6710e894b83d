"""Talk to a running llama-server (or any OpenAI-compatible server) over HTTP.

httpx does the transport (a sync ``Client`` and, lazily, an ``AsyncClient``
on the caller's event loop) and httpx-sse parses the event stream. Every
generation is streamed from the server, even ``generate()``: one code path,
and time to first token is always measured.

The client layer is this module (the ``Client``: connections, requests,
lifetime), :mod:`rocm_nb.client._generation` (the generation API it shares with
``LocalModel``), :mod:`rocm_nb.client.request` (options, checked once into a
request, translated once into its body), :mod:`rocm_nb.client.completion`
(``Completion``), :mod:`rocm_nb.client.stream` (reading one event stream),
:mod:`rocm_nb.client.images` (images into messages) and
:mod:`rocm_nb.client._batch` (``map``).

Example:
    >>> client = connect("http://127.0.0.1:8080", api_key="secret")  # doctest: +SKIP
    >>> for piece in client.stream("Once upon a time", max_tokens=16):  # doctest: +SKIP
    ...     print(piece, end="")
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from rocm_nb.client._accumulator import Accumulator
from rocm_nb.client._generation import GenerationAPI
from rocm_nb.client.completion import Kind
from rocm_nb.client.engines import Capabilities, Engine, ServerFacts, ServerInfo, refuse, root_url, unless_fatal
from rocm_nb.client.logprobs import SlotContext
from rocm_nb.client.request import Request
from rocm_nb.client.status import ServerStatus
from rocm_nb.client.stream import (
    DEFAULT_DEADLINE_S,
    MAX_BODY_BYTES,
    MAX_EVENT_BYTES,
    FailureHook,
    TokenStream,
    http_error,
    redirect_error,
    transport_error,
)
from rocm_nb.errors import (
    GenerationTimeout,
    ModelClosed,
    RocmNbError,
    ServerUnavailable,
    StreamProtocolError,
    with_notes,
)

# httpx, httpx-sse and asyncio are imported where they are first needed, so
# that `import rocm_nb` and constructing a LocalModel stay cheap (together
# about 70 ms); Python caches a module, so the later imports cost nothing.
if TYPE_CHECKING:
    import asyncio
    import ssl

    import httpx

__all__ = ["Client", "connect"]


@functools.cache
def _ssl_context(verify: bool | str = True) -> ssl.SSLContext:
    """One TLS context per ``verify`` (on/off, or a CA bundle's path): building one costs ~20 ms, paid once."""
    import httpx

    if isinstance(verify, str):
        import ssl

        return ssl.create_default_context(cafile=verify)
    return httpx.create_ssl_context(verify=verify)


def _no_better_error(exc: Exception, partial: str) -> RocmNbError | None:
    return None


def _on_this_machine(base_url: str) -> bool:
    """Whether ``base_url`` names a loopback host (a server on this machine).

    Example:
        >>> _on_this_machine("http://127.0.0.1:8080"), _on_this_machine("https://api.example.com")
        (True, False)
    """
    import urllib.parse

    from rocm_nb._exposure import is_loopback

    return is_loopback(urllib.parse.urlsplit(base_url).hostname or "")


_closing: set[asyncio.Task[None]] = set()
"""Async clients being closed on their loop: a task nobody references may be collected before it runs."""


def _close_soon(http: httpx.AsyncClient) -> None:
    """On ``http``'s own loop: close it in a task that is kept until it is done."""
    import asyncio

    task = asyncio.get_running_loop().create_task(http.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


class Client(GenerationAPI):
    """The generation API over one server's HTTP endpoint.

    ``generate``/``stream`` take a prompt string (``/v1/completions``);
    ``chat``/``chat_stream`` take messages and let the server apply the
    model's chat template (``/v1/chat/completions``). Each has an async twin
    (``agenerate``, ``astream``, ``achat``, ``achat_stream``).

    ``timeout`` is the longest silence tolerated while reading (seconds);
    ``deadline`` the longest a whole request may take (seconds, ``None``:
    no limit), however steadily bytes arrive; ``max_event_bytes`` the largest
    server-sent event accepted and ``max_body_bytes`` the largest other answer,
    both counted decoded (:mod:`rocm_nb.client._transports`: a broken or hostile
    server can hold neither the kernel's memory nor a request for ever).
    ``model``, ``headers`` and ``verify`` are :func:`connect`'s.
    ``transport``/``async_transport`` are httpx transport seams for tests;
    ``server`` says what kind of server this is when that is known (a
    ``LocalModel``'s own llama-server), so it is not detected. ``_on_failure``
    is not for users: it is the hook through which the owner of the server
    (a ``LocalModel`` or ``LocalRouter``) explains a transport failure, such
    as :class:`~rocm_nb.errors.ServerCrashed` when its server died.

    To a server on this machine (127.0.0.1, ``::1``, ``localhost``) every
    request opens a fresh connection, so no request can meet a kept-alive
    connection the server is closing, and none is ever sent twice. To a
    remote server the sync client keeps connections alive (a TLS handshake
    per request would cost more) and resends only a request that is safe to
    repeat (a GET) when its connection was dropped; a generation is never
    resent (:mod:`rocm_nb.client._transports`).

    Its async requests use one ``httpx.AsyncClient`` per event loop, made on
    that loop's first async use (an asyncio connection cannot move between
    loops, and a Jupyter kernel may run widget callbacks and cells on
    different loops). The async clients keep no idle connections
    (llama-server closes each after its stream anyway, and a loopback
    connect costs microseconds), so a loop that ends leaves no socket
    behind, and the client of a loop that has closed is dropped.
    ``await client.aclose()`` or ``async with client:`` closes the running
    loop's at once and schedules the others' on their loops; ``close()``
    schedules them all.

    Example:
        >>> with connect("http://127.0.0.1:8080") as client:  # doctest: +SKIP
        ...     print(client.generate("2 + 2 =", max_tokens=4).text)
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        model: str | None = None,
        headers: Mapping[str, str] | None = None,
        verify: bool | str | os.PathLike[str] = True,
        timeout: float = 600.0,
        deadline: float | None = DEFAULT_DEADLINE_S,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_body_bytes: int = MAX_BODY_BYTES,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        server: ServerInfo | None = None,
        _on_failure: FailureHook = _no_better_error,
    ) -> None:
        import httpx

        from rocm_nb.client._transports import Limited, Redial

        self._base_url = root_url(base_url)
        self._api_key = api_key
        self._timeout = timeout
        self._max_body_bytes = max_body_bytes
        self._deadline, self._max_event_bytes = deadline, max_event_bytes
        self._on_failure = _on_failure
        self._headers = {**({"Authorization": f"Bearer {api_key}"} if api_key else {}), **(headers or {})}
        self._verify: bool | str = verify if isinstance(verify, bool) else os.fspath(verify)
        self._facts = ServerFacts(self._probe_json, self.models, model=model, where=self._base_url, info=server)
        self._http_timeout = httpx.Timeout(timeout, connect=10.0)
        local = _on_this_machine(self._base_url)
        # (limits go to the transport: httpx.Client ignores its own limits= when given a transport)
        limits = httpx.Limits(max_keepalive_connections=0) if local else httpx.Limits()
        self._sync = httpx.Client(
            base_url=self._base_url, headers=self._headers, timeout=self._http_timeout,
            transport=Limited(transport or Redial(httpx.HTTPTransport(verify=_ssl_context(self._verify),
                                                                      limits=limits)),
                              deadline=deadline, max_event_bytes=max_event_bytes, max_body_bytes=max_body_bytes),
        )
        self._async_transport = async_transport
        self._asyncs: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._async_lock = threading.Lock()
        self._held: weakref.WeakKeyDictionary[TokenStream, int] = weakref.WeakKeyDictionary()
        """Sync streams whose request was sent, by the thread that sent it (see ``_close_held_streams``)."""
        self._held_lock = threading.Lock()
        self._slot_ctx = SlotContext(self.props)
        self._closed = False

    @property
    def base_url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:8080``."""
        return self._base_url

    @property
    def api_key(self) -> str | None:
        """The bearer token sent with every request (``None`` for none)."""
        return self._api_key

    # -- what the client knows of its server ------------------------------------------------

    @property
    def model(self) -> str | None:
        """The model id every request names unless it passes ``model=`` (``None``: the server lists none).

        Given to :func:`connect`, or else the server's only model (asked
        once); a server with several raises :class:`~rocm_nb.errors.AmbiguousModel`.

        Example:
            >>> from rocm_nb import connect
            >>> connect("http://127.0.0.1:8080", model="qwen3-8b").model
            'qwen3-8b'
        """
        return self._facts.model()

    @property
    def server_info(self) -> ServerInfo:
        """The kind of server (llama.cpp, vLLM, SGLang, Ollama or generic), detected once on first use.

        Example:
            >>> connect("http://127.0.0.1:8080").server_info.engine  # doctest: +SKIP
            'llama.cpp'
        """
        return self._facts.info()

    @property
    def capabilities(self) -> Capabilities:
        """What the server supports: logprobs, tools, grammar, slots, embeddings (see :mod:`rocm_nb.client.engines`).

        Example:
            >>> connect("http://127.0.0.1:8080").capabilities.grammar  # doctest: +SKIP
            True
        """
        return self.server_info.capabilities

    def _payload(self, request: Request) -> dict[str, Any]:
        """The request body: the default model named, the options said the way this server's kind takes them."""
        model = None if "model" in request.options else self._facts.model()
        return request.body(self.server_info.engine, model)

    async def _apayload(self, request: Request) -> dict[str, Any]:
        """:meth:`_payload` for async code: the first call's probes run in a worker thread, off the loop."""
        import asyncio

        if self._facts.known and ("model" in request.options or self._facts.model_known):
            return self._payload(request)
        return await asyncio.to_thread(self._payload, request)

    def _accept(self, options: Mapping[str, Any], kinds: Collection[Kind]) -> Engine:
        """The server's kind, once it has refused what it cannot honour at ``kinds``' endpoints (a batch's check)."""
        engine = self.server_info.engine
        for kind in sorted(kinds):
            refuse(options, engine, kind)
        return engine

    def _probe_json(self, path: str) -> Any:
        """GET ``path`` for :func:`~rocm_nb.client.engines.detect_engine`: its JSON, or ``None`` if not JSON."""
        return unless_fatal(lambda: self._request_json("GET", path))

    def _slots(self, model: str | None) -> int | None:
        """How many requests the server serves at once, if it says (llama.cpp's slots; a router's per model)."""
        slots = self.capabilities.slots
        if slots is None and self.server_info.router:
            with contextlib.suppress(RocmNbError):
                model = model or self._facts.model()
                props = self._request_json("GET", "/props", params={"model": model}) if model else {}
                found = props.get("total_slots") if isinstance(props, dict) else None
                slots = found if isinstance(found, int) and found > 0 else None
        return slots

    def _model_field(self) -> dict[str, str]:
        """``{"model": ...}`` for llama-server's own endpoints (``/tokenize``…) where a router needs it, else ``{}``."""
        model = self._facts.model() if self.server_info.router else None
        return {"model": model} if model else {}

    # -- plumbing ---------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise ModelClosed(
                f"this client for {self._base_url} was closed; create a new one "
                "(LocalModel(...) or rocm_nb.connect(...))"
            )

    def _client(self) -> Client:
        return self

    def _better_error(self, exc: Exception, partial: str) -> RocmNbError | None:
        """A transport failure, explained: this client was closed mid-request, or what ``on_failure`` says."""
        if self._closed:  # close() from another thread or task cut the request off: say so, not "Bad fd"
            return ModelClosed(f"this client for {self._base_url} was closed while a request was running; "
                               "the request was cut off")
        return self._on_failure(exc, partial)

    def _http(self) -> httpx.Client:
        self._ensure_open()
        return self._sync

    def _new_ahttp(self) -> httpx.AsyncClient:
        """A fresh async client on this server; its owner closes it."""
        import httpx

        from rocm_nb.client._transports import AsyncLimited

        self._ensure_open()
        return httpx.AsyncClient(
            base_url=self._base_url,
            headers=self._headers,
            timeout=self._http_timeout,
            # no connection kept: nothing idle to leak when its loop ends, and nothing reused that the
            # server may have dropped, so nothing to redial (rocm_nb.client._transports)
            transport=AsyncLimited(
                self._async_transport or httpx.AsyncHTTPTransport(
                    verify=_ssl_context(self._verify), limits=httpx.Limits(max_keepalive_connections=0)),
                deadline=self._deadline, max_event_bytes=self._max_event_bytes, max_body_bytes=self._max_body_bytes),
        )

    def _ahttp(self) -> httpx.AsyncClient:
        """This client's async client for the running loop (see the class docstring)."""
        import asyncio

        self._ensure_open()
        loop = asyncio.get_running_loop()
        with self._async_lock:
            for ended in [other for other in self._asyncs if other.is_closed()]:
                del self._asyncs[ended]  # its loop has ended, and with it every connection (none is kept idle)
            if loop not in self._asyncs:
                self._asyncs[loop] = self._new_ahttp()
            return self._asyncs[loop]

    def _open_stream(self, request: Request) -> TokenStream:
        payload = self._payload(request)
        http = self._http()
        sent = http.build_request("POST", self._endpoint(request.kind), json=payload)
        stream: weakref.ref[TokenStream] | None = None  # weak: a dropped stream must still close at once

        def send() -> httpx.Response:
            self._close_held_streams()
            response = http.send(sent, stream=True)
            this = stream() if stream is not None else None
            if this is not None:
                with self._held_lock:
                    self._held[this] = threading.get_ident()
            return response

        opened = TokenStream(send, Accumulator(request.kind, logprobs=bool(request.options.get("logprobs"))),
                             self._better_error, self._slot_ctx)
        stream = weakref.ref(opened)
        return opened

    def _close_held_streams(self) -> None:
        """Close the sync streams this thread started on this client: a new request is about to start.

        A stream kept in a variable and left with ``break`` cannot be told
        from one the caller means to resume, so the next request from the
        same thread decides: the older streams end, which cancels their
        generations on the server. Streams read by other threads are left alone.
        """
        me = threading.get_ident()
        with self._held_lock:
            mine = [held for held, reader in self._held.items() if reader == me]
            for held in mine:
                del self._held[held]
        for held in mine:
            held.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self._http().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            better = None if isinstance(exc, httpx.TimeoutException) else self._better_error(exc, "")
            raise (better or transport_error(exc)) from exc
        if response.is_error:
            raise http_error(response, response.text)
        if response.is_redirect:
            raise redirect_error(response)
        return response

    def _request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`_request`'s reply parsed as JSON; one that is not JSON (a proxy's HTML page) is a GenerationError.

        It is a :class:`~rocm_nb.errors.StreamProtocolError` naming the
        endpoint, the content type and the reply's start, so callers that
        degrade on a ``RocmNbError`` (``map``'s slots, ``%rocm_status``) do.
        """
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except (ValueError, RecursionError):
            content_type = response.headers.get("content-type", "")
            raise with_notes(StreamProtocolError(
                f"{method} {path} answered {content_type or 'no content type'}, not JSON: {response.text[:120]!r}",
                status_code=response.status_code,
                body=response.text,
            ), "Is this a llama-server or OpenAI-compatible endpoint, or a proxy's page?") from None

    def status(self) -> ServerStatus:
        """What is known of a server this client does not own: the models it offers, reachable or not.

        A server that answers but not as expected (a proxy's HTML page) is
        in state ``error``, with the reason in ``.error``: one row of a
        status table, never a failure of the whole table.

        Example:
            >>> connect("http://127.0.0.1:9").status().state
            'unreachable'
        """
        images = None
        try:
            names, state, error = self.models(), "running", None
            images = self.capabilities.images
        except RocmNbError as exc:
            names, error = [], str(exc)
            state = "unreachable" if isinstance(exc, ServerUnavailable | GenerationTimeout) else "error"
        return ServerStatus(model=", ".join(names) or "?", file=self._base_url, backend="remote", state=state,
                            error=error, images=images)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connections. Idempotent.

        Example:
            >>> Client("http://127.0.0.1:1").close()
        """
        if self._closed:
            return
        self._closed = True
        self._sync.close()  # also ends streams other threads are reading: the server sees them go
        for loop, http in self._take_asyncs():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing is left open
                loop.call_soon_threadsafe(_close_soon, http)

    async def aclose(self) -> None:
        """Close the HTTP connections: the running loop's async ones now, the others' on their loops. Idempotent.

        Example:
            >>> import asyncio
            >>> asyncio.run(Client("http://127.0.0.1:1").aclose())
        """
        import asyncio

        here = asyncio.get_running_loop()
        with self._async_lock:
            http = self._asyncs.pop(here, None)
        self.close()
        if http is not None:
            await http.aclose()

    def _take_asyncs(self) -> list[tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]]:
        """Forget every async client; return those whose loops are still open, to be closed there."""
        with self._async_lock:
            taken = [(loop, http) for loop, http in self._asyncs.items() if not loop.is_closed()]
            self._asyncs.clear()
        return taken

    def __enter__(self) -> Client:
        self._ensure_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        self._ensure_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()



def connect(
    base_url: str,
    api_key: str | None = None,
    *,
    model: str | None = None,
    headers: Mapping[str, str] | None = None,
    verify: bool | str | os.PathLike[str] = True,
    timeout: float = 600.0,
    deadline: float | None = DEFAULT_DEADLINE_S,
    max_event_bytes: int = MAX_EVENT_BYTES,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Client:
    """A :class:`Client` for a server that is already running (never starts one).

    ``base_url`` may end in ``/v1`` or not, with or without a trailing
    slash: the URL every engine documents works as it is. ``model`` names the
    model every request uses (else the server's only one; see
    :attr:`Client.model`); ``headers`` are sent with every request (a
    gateway's ``X-API-Key``); ``verify`` checks the server's TLS certificate
    (``True``), trusts a CA bundle (its path) or checks nothing (``False``).
    ``timeout`` bounds each silence while reading (s), ``deadline`` a whole
    request (s; one hour by default, ``None`` for none), ``max_event_bytes``
    one server-sent event and ``max_body_bytes`` any other answer (16 MiB
    each by default, counted after decompression): a server that breaks them
    raises :class:`~rocm_nb.errors.GenerationTimeout` (``phase`` ``"read"``
    or ``"total"``) or :class:`~rocm_nb.errors.StreamProtocolError`. An
    error answer is read only up to its first 16 KiB.

    Nothing is sent until the first request, which also finds out, once,
    which kind of server this is (:mod:`rocm_nb.client.engines`).

    Example:
        >>> client = connect("http://127.0.0.1:8080/v1/", api_key="secret")
        >>> client.base_url
        'http://127.0.0.1:8080'
        >>> client.close()
        >>> connect("http://gpu-box:8000/v1", model="Qwen/Qwen3-8B").model
        'Qwen/Qwen3-8B'
    """
    return Client(base_url, api_key, model=model, headers=headers, verify=verify, timeout=timeout,
                  deadline=deadline, max_event_bytes=max_event_bytes, max_body_bytes=max_body_bytes)
