"""Talk to a running llama-server (or any OpenAI-compatible server) over HTTP.

httpx does the transport (a sync ``Client`` and, lazily, an ``AsyncClient``
on the caller's event loop) and httpx-sse parses the event stream. Every
generation is streamed from the server, even ``generate()``: one code path,
and time to first token is always measured.

The client layer is three modules: this one (the ``Client`` and its
requests), :mod:`rocm_nb.completion` (options, payloads, ``Completion``) and
:mod:`rocm_nb.stream` (reading one event stream); this module re-exports the
public names of the other two.

Example:
    >>> client = connect("http://127.0.0.1:8080", api_key="secret")  # doctest: +SKIP
    >>> for piece in client.stream("Once upon a time", max_tokens=16):  # doctest: +SKIP
    ...     print(piece, end="")
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Unpack

from rocm_nb._batch import Prompt
from rocm_nb.completion import Completion, Kind, Message, Options, Timings, build_payload
from rocm_nb.errors import EventLoopMismatch, GenerationError, ModelClosed, RocmNbError
from rocm_nb.stream import Accumulator, AsyncTokenStream, FailureHook, TokenStream, http_error, transport_error

# httpx, httpx-sse and asyncio are imported where they are first needed, so
# that `import rocm_nb` and constructing a LocalModel stay cheap (together
# about 70 ms); Python caches a module, so the later imports cost nothing.
if TYPE_CHECKING:
    import asyncio
    import ssl

    import httpx

__all__ = [
    "AsyncTokenStream",
    "Client",
    "Completion",
    "Message",
    "Options",
    "Prompt",
    "Timings",
    "TokenStream",
    "connect",
]


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context for all clients: building one costs ~20 ms, which attaching must not pay."""
    import httpx

    return httpx.create_ssl_context()


def _no_better_error(exc: Exception, partial: str) -> RocmNbError | None:
    return None


_closing: set[asyncio.Task[None]] = set()
"""Async clients being closed on their loop: a task nobody references may be collected before it runs."""


def _close_soon(http: httpx.AsyncClient) -> None:
    """On ``http``'s own loop: close it in a task that is kept until it is done."""
    import asyncio

    task = asyncio.get_running_loop().create_task(http.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def parse_metrics(text: str) -> dict[str, float]:
    """Parse Prometheus text (llama-server's ``/metrics``) into a flat dict.

    Example:
        >>> parse_metrics("# HELP x\\nllamacpp:n_decode_total 12\\n")
        {'llamacpp:n_decode_total': 12.0}
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


class _GenerationAPI:
    """The generation API, shared by :class:`Client` and :class:`~rocm_nb.LocalModel`.

    Every public method reaches the server through one of two hooks, so the
    API is written once: ``_client()`` returns the :class:`Client` to use
    (a ``LocalModel`` starts its server there, on the first request), and
    ``await _aclient()`` is its async twin, which must not block the event
    loop (a ``LocalModel`` starts its server in a worker thread).
    ``_better_error`` turns a transport failure into a better error (a
    ``LocalModel``: :class:`~rocm_nb.errors.ServerCrashed` when its server died).

    ``generate``/``stream`` take a prompt string (``/v1/completions``);
    ``chat``/``chat_stream`` take messages and let the server apply the
    model's chat template (``/v1/chat/completions``). Each has an async twin
    (``agenerate``, ``astream``, ``achat``, ``achat_stream``); ``astream``
    and ``achat_stream`` do nothing until iterated.

    Example:
        >>> issubclass(Client, _GenerationAPI)
        True
    """

    def _client(self) -> Client:
        raise NotImplementedError

    async def _aclient(self) -> Client:
        return self._client()

    def _better_error(self, exc: Exception, partial: str) -> RocmNbError | None:
        return None

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def _endpoint(kind: Kind) -> str:
        return "/v1/chat/completions" if kind == "chat" else "/v1/completions"

    def _open_astream(
        self,
        kind: Kind,
        prompt: str | Sequence[Message],
        options: Mapping[str, Any],
        http: httpx.AsyncClient | None = None,
    ) -> AsyncTokenStream:
        """A stream that starts nothing until it is iterated; ``http`` is a batch's own async client."""
        payload = build_payload(kind, prompt, options)  # bad options fail here, before any I/O
        endpoint = self._endpoint(kind)

        async def open_response() -> httpx.Response:
            session = http or (await self._aclient())._ahttp()
            return await session.send(session.build_request("POST", endpoint, json=payload), stream=True)

        return AsyncTokenStream(open_response, Accumulator(kind), self._better_error)

    @staticmethod
    def _drain(stream: TokenStream) -> Completion:
        with stream:
            for _ in stream:
                pass
        assert stream.completion is not None
        return stream.completion

    @staticmethod
    async def _adrain(stream: AsyncTokenStream) -> Completion:
        async with stream:
            async for _ in stream:
                pass
        assert stream.completion is not None
        return stream.completion

    # -- generation -------------------------------------------------------------------------

    def stream(self, prompt: str, **options: Unpack[Options]) -> TokenStream:
        """Stream the continuation of ``prompt`` as text pieces.

        Example:
            >>> for piece in model.stream("The sky is", max_tokens=8):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._client()._open_stream("completion", prompt, options)

    def generate(self, prompt: str, **options: Unpack[Options]) -> Completion:
        """Continue ``prompt`` and return the whole :class:`Completion`.

        Example:
            >>> model.generate("2 + 2 =", max_tokens=4, temperature=0).text  # doctest: +SKIP
            ' 4'
        """
        return self._drain(self.stream(prompt, **options))

    def chat_stream(self, messages: Sequence[Message], **options: Unpack[Options]) -> TokenStream:
        """Stream the assistant's reply to ``messages`` as text pieces.

        Example:
            >>> for piece in model.chat_stream([{"role": "user", "content": "Hi"}]):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._client()._open_stream("chat", messages, options)

    def chat(self, messages: Sequence[Message], **options: Unpack[Options]) -> Completion:
        """Return the assistant's reply to ``messages``.

        Example:
            >>> model.chat([{"role": "user", "content": "Hi!"}]).text  # doctest: +SKIP
            'Hello! How can I help you today?'
        """
        return self._drain(self.chat_stream(messages, **options))

    def astream(self, prompt: str, **options: Unpack[Options]) -> AsyncTokenStream:
        """Async twin of :meth:`stream`.

        Example:
            >>> async for piece in model.astream("The sky is"):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._open_astream("completion", prompt, options)

    async def agenerate(self, prompt: str, **options: Unpack[Options]) -> Completion:
        """Async twin of :meth:`generate`.

        Example:
            >>> (await model.agenerate("2 + 2 =", max_tokens=4)).text  # doctest: +SKIP
        """
        return await self._adrain(self.astream(prompt, **options))

    def achat_stream(self, messages: Sequence[Message], **options: Unpack[Options]) -> AsyncTokenStream:
        """Async twin of :meth:`chat_stream`.

        Example:
            >>> async for piece in model.achat_stream([{"role": "user", "content": "Hi"}]):  # doctest: +SKIP
            ...     print(piece, end="")
        """
        return self._open_astream("chat", messages, options)

    async def achat(self, messages: Sequence[Message], **options: Unpack[Options]) -> Completion:
        """Async twin of :meth:`chat`.

        Example:
            >>> (await model.achat([{"role": "user", "content": "Hi"}])).text  # doctest: +SKIP
        """
        return await self._adrain(self.achat_stream(messages, **options))

    # -- batches (the engine is rocm_nb._batch) --------------------------------------------

    def map(
        self,
        prompts: Iterable[Prompt],
        *,
        chat: bool = True,
        concurrency: int | None = None,
        progress: bool = True,
        **options: Unpack[Options],
    ) -> list[Completion | Exception]:
        """Generate for many prompts at once, over the server's parallel slots.

        Each prompt is a string (sent as a user message, or as a plain
        completion with ``chat=False``) or a list of chat messages. Up to
        ``concurrency`` requests are in flight (default: the server's slots,
        ``total_slots`` in ``/props``; 1 for a server that does not say), with
        a progress bar (``tqdm.auto``: a widget in a notebook) unless
        ``progress=False``.

        Returns one result per prompt, in input order. As with
        ``asyncio.gather(..., return_exceptions=True)``, an item that failed
        holds its exception (for example a :class:`GenerationError` with
        ``.status_code`` 400 for a prompt longer than a slot's context) and the
        others still run. Invalid ``options`` fail every item alike, so they
        raise at once. Ctrl-C (Kernel → Interrupt) cancels the requests in
        flight, on the server too, and raises ``KeyboardInterrupt``.

        Example:
            >>> results = model.map(["Name a colour.", "Name a fruit."], max_tokens=16, temperature=0)  # doctest: +SKIP
            >>> [r.text if isinstance(r, Completion) else f"failed: {r}" for r in results]  # doctest: +SKIP
            ['Blue.', 'Apple.']
        """
        from rocm_nb import _batch

        client = self._client()
        jobs = _batch.plan(prompts, chat=chat, options=options)
        return _batch.run(
            jobs, lambda job, http: client._open_astream(*job, options, http),
            _batch.workers(concurrency, client.props), progress=progress, new_http=client._new_ahttp,
        )

    async def amap(
        self,
        prompts: Iterable[Prompt],
        *,
        chat: bool = True,
        concurrency: int | None = None,
        progress: bool = True,
        **options: Unpack[Options],
    ) -> list[Completion | Exception]:
        """Async twin of :meth:`map`; cancelling it cancels the requests in flight.

        Example:
            >>> results = await model.amap(["Hi", "Bye"], max_tokens=8)  # doctest: +SKIP
        """
        import asyncio

        from rocm_nb import _batch

        await self._aclient()
        jobs = _batch.plan(prompts, chat=chat, options=options)
        slots = await asyncio.to_thread(_batch.workers, concurrency, self.props)
        return await _batch.arun(jobs, lambda job, http: self._open_astream(*job, options, http), slots,
                                 progress=progress)

    # -- server utilities -------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` (llama-server's ``/tokenize``).

        Example:
            >>> model.tokenize("Hello")  # doctest: +SKIP
            [19556]
        """
        body = {"content": text, "add_special": add_special}
        tokens: list[int] = self._client()._request("POST", "/tokenize", json=body).json()["tokens"]
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of token ids (llama-server's ``/detokenize``).

        Example:
            >>> model.detokenize([19556])  # doctest: +SKIP
            'Hello'
        """
        content: str = self._client()._request("POST", "/detokenize", json={"tokens": list(tokens)}).json()["content"]
        return content

    def props(self) -> dict[str, Any]:
        """The server's properties (``/props``): chat template, default settings, slots.

        Example:
            >>> model.props()["total_slots"]  # doctest: +SKIP
            1
        """
        props: dict[str, Any] = self._client()._request("GET", "/props").json()
        return props

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (``/metrics``, needs ``--metrics``).

        Example:
            >>> model.metrics()["llamacpp:tokens_predicted_total"]  # doctest: +SKIP
            48.0
        """
        return parse_metrics(self._client()._request("GET", "/metrics").text)

    def models(self) -> list[str]:
        """Model ids the server offers (``/v1/models``); ``[]`` from a server without that endpoint.

        Raises GenerationError when the server cannot be reached.

        Example:
            >>> connect("http://127.0.0.1:8080").models()  # doctest: +SKIP
            ['SmolLM2-135M-Instruct.Q4_1.gguf']
        """
        try:
            data = self._client()._request("GET", "/v1/models").json().get("data") or []
        except GenerationError as exc:
            if exc.status_code == 404:
                return []
            raise
        return [str(entry.get("id")) for entry in data if isinstance(entry, dict)]

    def health(self) -> bool:
        """True when the server answers ``/health`` with 200 (ready).

        Example:
            >>> model.health()  # doctest: +SKIP
            True
        """
        import httpx

        try:
            return self._client()._http().get("/health").status_code == 200
        except httpx.HTTPError:
            return False


class Client(_GenerationAPI):
    """The generation API over one server's HTTP endpoint.

    ``generate``/``stream`` take a prompt string (``/v1/completions``);
    ``chat``/``chat_stream`` take messages and let the server apply the
    model's chat template (``/v1/chat/completions``). Each has an async twin
    (``agenerate``, ``astream``, ``achat``, ``achat_stream``).

    ``timeout`` is the longest silence tolerated while reading (seconds);
    ``transport``/``async_transport`` are httpx transport seams for tests.

    Its async requests share one ``httpx.AsyncClient``, made on first async
    use and bound to that event loop (an asyncio connection cannot move
    between loops). Using it from a *second* loop while the first is still
    open raises :class:`~rocm_nb.errors.EventLoopMismatch`; once the first loop has closed (an
    ``asyncio.run(...)`` returned) the next loop gets a fresh one. The async
    client keeps no idle connections (llama-server closes each after its
    stream anyway, and a loopback connect costs microseconds), so a loop
    that ends leaves no socket behind. ``await client.aclose()`` or
    ``async with client:`` closes it on its loop; ``close()`` schedules that.

    Example:
        >>> with connect("http://127.0.0.1:8080") as client:  # doctest: +SKIP
        ...     print(client.generate("2 + 2 =", max_tokens=4).text)
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        on_failure: FailureHook = _no_better_error,
    ) -> None:
        import threading

        import httpx

        from rocm_nb._redial import Redial

        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = timeout
        self._on_failure = on_failure
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http_timeout = httpx.Timeout(timeout, connect=10.0)
        self._sync = httpx.Client(
            base_url=self._base_url, headers=self._headers, timeout=self._http_timeout,
            transport=transport or Redial(httpx.HTTPTransport(verify=_ssl_context())),
        )
        self._async_transport = async_transport
        self._async: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._async_lock = threading.Lock()
        self._closed = False

    @property
    def base_url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:8080``."""
        return self._base_url

    @property
    def api_key(self) -> str | None:
        """The bearer token sent with every request (``None`` for none)."""
        return self._api_key

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
        return self._on_failure(exc, partial)

    def _http(self) -> httpx.Client:
        self._ensure_open()
        return self._sync

    def _new_ahttp(self) -> httpx.AsyncClient:
        """A fresh async client on this server; its owner closes it."""
        import httpx

        from rocm_nb._redial import AsyncRedial

        self._ensure_open()
        return httpx.AsyncClient(
            base_url=self._base_url,
            headers=self._headers,
            timeout=self._http_timeout,
            limits=httpx.Limits(max_keepalive_connections=0),  # nothing idle to leak when its loop ends
            transport=self._async_transport or AsyncRedial(httpx.AsyncHTTPTransport(verify=_ssl_context())),
        )

    def _ahttp(self) -> httpx.AsyncClient:
        """This client's async client, bound to the running loop (see the class docstring)."""
        import asyncio

        self._ensure_open()
        loop = asyncio.get_running_loop()
        with self._async_lock:
            if self._async is not None and self._async_loop is not loop:
                assert self._async_loop is not None
                if not self._async_loop.is_closed():
                    raise EventLoopMismatch(
                        f"this client for {self._base_url} is bound to another event loop that is still open; "
                        "an async client serves one loop: make one client (or LocalModel) per loop, or "
                        "`await client.aclose()` on the first loop before using another"
                    )
                self._async = None  # its loop has ended, and with it every connection (none is kept idle)
            if self._async is None:
                self._async, self._async_loop = self._new_ahttp(), loop
            return self._async

    def _open_stream(self, kind: Kind, prompt: str | Sequence[Message], options: Mapping[str, Any]) -> TokenStream:
        payload = build_payload(kind, prompt, options)
        http = self._http()
        request = http.build_request("POST", self._endpoint(kind), json=payload)
        return TokenStream(
            lambda: http.send(request, stream=True), Accumulator(kind), self._on_failure
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self._http().request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            better = None if isinstance(exc, httpx.TimeoutException) else self._on_failure(exc, "")
            raise (better or transport_error(exc)) from exc
        if response.is_error:
            raise http_error(response, response.text)
        return response

    def status(self) -> dict[str, Any]:
        """What ``%rocm_status`` shows for a server this client does not own.

        Example:
            >>> connect("http://127.0.0.1:8080").status()["backend"]  # doctest: +SKIP
            'remote'
        """
        try:
            names, state = self.models(), "running"
        except RocmNbError:
            names, state = [], "unreachable"
        return {"model": ", ".join(names) or "?", "file": self._base_url, "backend": "remote", "state": state}

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
        http, loop = self._take_async()
        if http is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing is left open
                loop.call_soon_threadsafe(_close_soon, http)

    async def aclose(self) -> None:
        """Close the HTTP connections, the async ones on this loop. Idempotent.

        Example:
            >>> import asyncio
            >>> asyncio.run(Client("http://127.0.0.1:1").aclose())
        """
        import asyncio

        http, loop = self._take_async()
        self.close()
        if http is not None:
            if loop is asyncio.get_running_loop():
                await http.aclose()
            elif loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_close_soon, http)

    def _take_async(self) -> tuple[httpx.AsyncClient | None, asyncio.AbstractEventLoop | None]:
        with self._async_lock:
            taken = self._async, self._async_loop
            self._async = self._async_loop = None
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



def connect(base_url: str, api_key: str | None = None, *, timeout: float = 600.0) -> Client:
    """A :class:`Client` for a server that is already running (never starts one).

    Example:
        >>> client = connect("http://127.0.0.1:8080", api_key="secret")
        >>> client.base_url
        'http://127.0.0.1:8080'
        >>> client.close()
    """
    return Client(base_url, api_key, timeout=timeout)
