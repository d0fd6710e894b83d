"""A lease on a shared llama-server, with a ``Client`` on it: ``LocalModel``'s state machine.

:class:`~rocm_nb.LocalModel` *holds* a :class:`ServerLease` (composition):
the lease acquires its server from a
:class:`~rocm_nb.server._registry.ServerRegistry` on first use, keeps a
:class:`~rocm_nb.client.Client` on it, and releases it on close. Its life is
an explicit :class:`ModelState`.

Decisions, in one place:

* Starts are serialised per lease (``_start_lock``): two threads making
  the first request at once start one server, and the second waits for it.
  The state fields have their own lock (``_lock``), never held across I/O,
  so ``close()`` never waits for a start in progress: that start, when it
  finishes, sees the lease closed and lets its server go.
* A crashed server is not restarted behind the caller's back: requests fail
  with :class:`~rocm_nb.errors.ServerCrashed` until ``start()`` is called.
* Letting go closes the HTTP client first (streams other threads are
  reading end, so llama-server cancels them and honours SIGTERM at once),
  then releases the server; the last user's release terminates it.
* :meth:`ServerLease.aclient` starts a new lease with
  ``await asyncio.to_thread(start)``: the event loop keeps running while
  the model loads.

Example:
    >>> ModelState.RUNNING.value
    'running'
"""

from __future__ import annotations

import enum
import sys
import threading
from collections.abc import Callable
from typing import Self

from rocm_nb._callbacks import CloseCallbacks
from rocm_nb.client import Client
from rocm_nb.client.stream import FailureHook
from rocm_nb.errors import ModelClosed, ModelNotStarted, RocmNbError
from rocm_nb.server import LlamaServer, LoadProgress, ServerConfig
from rocm_nb.server._registry import ServerRegistry, default_registry

__all__ = ["ModelState", "OwnServer", "ServerLease"]


class ModelState(enum.Enum):
    """Where a :class:`~rocm_nb.LocalModel` is in its life; ``repr(model)`` shows it.

    ``NEW`` until ``start()`` (or ``with``, or the first request), then
    ``RUNNING``; ``CRASHED`` when the server process died (``start()`` gives
    a fresh one); ``CLOSED`` after ``close()``, for good.

    Example:
        >>> ModelState("crashed")
        <ModelState.CRASHED: 'crashed'>
    """

    NEW = "new"
    RUNNING = "running"
    CRASHED = "crashed"
    CLOSED = "closed"


def _on_event_loop() -> bool:
    """True in a thread that runs an asyncio loop (without importing asyncio when nothing has)."""
    if "asyncio" not in sys.modules:
        return False
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class ServerLease:
    """One user's share of the registry's server for ``config``, and a :class:`Client` on it.

    ``on_failure`` explains transport failures of the client's requests;
    ``closed_error()`` is what using the lease after ``close()`` raises.

    Example:
        >>> lease = ServerLease(config, default_registry, start_timeout=300, timeout=600,  # doctest: +SKIP
        ...                     on_failure=lambda exc, partial: None, closed_error=lambda: ModelClosed("closed"))
        >>> lease.client().generate("Hi", max_tokens=4).text  # doctest: +SKIP
    """

    def __init__(
        self,
        config: ServerConfig,
        registry: ServerRegistry[ServerConfig, LlamaServer],
        *,
        start_timeout: float,
        timeout: float,
        on_failure: FailureHook,
        closed_error: Callable[[], Exception],
    ) -> None:
        self._config = config
        self._registry = registry
        self._start_timeout = start_timeout
        self._timeout = timeout
        self._on_failure = on_failure
        self._closed_error = closed_error
        self._lock = threading.Lock()  # guards the three fields below; never held across I/O
        self._start_lock = threading.Lock()  # one start at a time; close() never takes it
        self._server: LlamaServer | None = None  # kept after close(), for logs and the exit status
        self._api: Client | None = None
        self._closed = False

    @property
    def state(self) -> ModelState:
        """NEW, RUNNING, CRASHED or CLOSED (no I/O: a look at the process)."""
        if self._closed:
            return ModelState.CLOSED
        server = self._server
        if server is None:
            return ModelState.NEW
        return ModelState.RUNNING if server.alive else ModelState.CRASHED

    @property
    def server(self) -> LlamaServer | None:
        """The server in use (or last used); ``None`` before the first start."""
        return self._server

    def start(self, progress: LoadProgress | None = None) -> None:
        """Acquire a running server (replacing a crashed one); blocks while it loads."""
        with self._start_lock:
            with self._lock:
                if self._closed:
                    raise self._closed_error()
                if self._server is not None and self._server.alive:
                    return
                crashed, self._server, self._api = (self._server, self._api), None, None
            self._let_go(*crashed)
            server = self._registry.acquire(
                self._config, lambda: LlamaServer(self._config, start_timeout=self._start_timeout).start(progress)
            )
            try:
                api = Client(server.base_url, server.api_key, timeout=self._timeout, _on_failure=self._on_failure,
                             deadline=None)  # our own server: a long reply on a slow CPU may take hours
            except BaseException:  # Ctrl-C just after the load: nobody holds this share, so give it back
                self._registry.release(self._config, server)
                raise
            with self._lock:
                closed = self._closed
                if not closed:
                    self._server, self._api = server, api
            if closed:  # close() ran while the server loaded: this lease may not keep it
                self._let_go(server, api)
                raise self._closed_error()

    def client(self) -> Client:
        """The client of the server; a NEW lease starts here (the first request)."""
        if self.state is ModelState.NEW:
            self.start()
        api = self._api
        if api is None:  # closed meanwhile, or another thread is replacing a crashed server
            if self._closed:
                raise self._closed_error()
            self.start()
            return self.client()
        return api

    async def aclient(self) -> Client:
        """:meth:`client` for async code: a NEW lease starts in a worker thread, not on the loop."""
        if self.state is ModelState.NEW:
            import asyncio

            await asyncio.to_thread(self.start)
        return self.client()

    def exit_status(self) -> int | None:
        """The server's exit status if it has died, else ``None``.

        A dying server may still be closing its sockets when a client sees
        them go: off the event loop this waits up to 1 s for its exit (a
        bounded ``wait``); on the event loop it only looks, so it never
        blocks the loop.
        """
        server = self._server
        if server is None:
            return None
        return server.returncode if _on_event_loop() else server.wait(1.0)

    def _let_go(self, server: LlamaServer | None, api: Client | None) -> None:
        """Close the HTTP client (its streams end: the server cancels them), then release the server."""
        if api is not None:
            api.close()
        if server is not None:
            self._registry.release(self._config, server)

    def _detach(self, before: Callable[[], object]) -> tuple[LlamaServer | None, Client | None] | None:
        """Mark closed, run ``before()``; what is left to let go, or ``None`` if already closed."""
        with self._lock:
            if self._closed:
                return None
            self._closed = True
            api, self._api = self._api, None
            server = self._server
        before()
        return server, api

    def close(self, before: Callable[[], object] = lambda: None) -> None:
        """Close for good: ``before()``, then the HTTP client, then the lease on the server. Idempotent."""
        taken = self._detach(before)
        if taken is not None:
            self._let_go(*taken)

    async def aclose(self, before: Callable[[], object] = lambda: None) -> None:
        """:meth:`close` for async code: the async connections close on this loop, the server off it."""
        import asyncio

        taken = self._detach(before)
        if taken is None:
            return
        server, api = taken
        if api is not None:
            await api.aclose()
        await asyncio.to_thread(self._let_go, server, None)


class OwnServer:
    """The life of a server of one's own, written once for ``LocalModel`` and ``LocalRouter``.

    A subclass makes its :class:`ServerLease` with :meth:`_hold` and says
    what it is (``_what``, for messages: ``"this LocalModel (smollm2-135m)"``)
    and how to make a fresh one (``_again``). Everything else is here:
    ``start``, ``close``/``aclose``, ``with`` and ``async with``,
    close callbacks, the ``_client``/``_aclient`` hooks of the generation API,
    ``state``, ``server`` (which raises
    :class:`~rocm_nb.errors.ModelNotStarted` before ``start()``),
    ``base_url``, ``api_key``, ``pid`` and ``logs``. None of the properties
    starts a server.

    Example:
        >>> from rocm_nb import LocalModel, LocalRouter
        >>> [cls.close is OwnServer.close for cls in (LocalModel, LocalRouter)]
        [True, True]
    """

    _lease: ServerLease
    _on_close: CloseCallbacks
    _what: str
    """What this is, for messages: ``this LocalModel (smollm2-135m)``."""
    _again: str
    """How to get a fresh one, for messages: ``create a new one with LocalModel('smollm2-135m')``."""

    def _hold(self, config: ServerConfig, registry: ServerRegistry[ServerConfig, LlamaServer] | None, *,
              start_timeout: float, timeout: float) -> None:
        """Make the lease on ``config``'s server (not started) and the close callbacks."""
        self._lease = ServerLease(config, default_registry if registry is None else registry,
                                  start_timeout=start_timeout, timeout=timeout, on_failure=self._better_error,
                                  closed_error=self._closed_error)
        self._on_close = CloseCallbacks(self._what, lambda: self.state is ModelState.CLOSED)

    # -- lifetime ---------------------------------------------------------------------------

    def start(self, progress: LoadProgress | None = None) -> Self:
        """Start the server (or attach to a running one with the same configuration); returns ``self``.

        A server that crashed is replaced by a fresh one.
        ``progress(elapsed_seconds, last_log_line)`` is called while loading.
        It blocks while the model loads: async code gets the same from its
        first request (or ``async with``) without blocking its loop.

        Example:
            >>> model = LocalModel().start()  # doctest: +SKIP
        """
        self._lease.start(progress)
        return self

    def close(self) -> None:
        """Stop using the server; it stops when its last user closes. Idempotent.

        The close callbacks run first (a GPU monitor stops sampling), then
        streams that other threads are reading end (with
        :class:`~rocm_nb.errors.ModelClosed`), then the server is let go.

        Example:
            >>> model.close()  # doctest: +SKIP
        """
        self._lease.close(before=self._on_close.run)

    async def aclose(self) -> None:
        """:meth:`close` for async code: the async connections close on this loop, the server off it.

        Example:
            >>> await model.aclose()  # doctest: +SKIP
        """
        await self._lease.aclose(before=self._on_close.run)

    def add_close_callback(self, fn: Callable[[], object]) -> None:
        """Call ``fn()`` once when this is closed; at once if it already is.

        As with ``Future.add_done_callback``: what watches the model (a GPU
        monitor) registers here, so the model needs to know nothing of it. A
        callback that raises is reported as a ``RuntimeWarning``; the others
        still run, and the model still closes.

        Example:
            >>> model.add_close_callback(lambda: print("closed"))  # doctest: +SKIP
            >>> model.close()  # doctest: +SKIP
            closed
        """
        self._on_close.add(fn)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _closed_error(self) -> ModelClosed:
        return ModelClosed(f"{self._what} was closed; {self._again}")

    def _better_error(self, exc: Exception, partial: str) -> RocmNbError | None:
        """A transport failure, explained: this was closed while a request was running (else nothing to add)."""
        if self.state is ModelState.CLOSED:
            return ModelClosed(f"{self._what} was closed while a request was running; the request was cut off. "
                               f"{self._again[0].upper()}{self._again[1:]}")
        return None

    def _client(self) -> Client:
        return self._lease.client()

    async def _aclient(self) -> Client:
        return await self._lease.aclient()

    # -- what notebooks show ----------------------------------------------------------------

    @property
    def state(self) -> ModelState:
        """Where this is in its life (no I/O: a look at the process).

        Example:
            >>> LocalModel("smollm2-135m").state.value  # doctest: +SKIP
            'new'
        """
        return self._lease.state

    @property
    def server(self) -> LlamaServer:
        """The :class:`~rocm_nb.server.LlamaServer` in use (never starts one).

        Raises :class:`~rocm_nb.errors.ModelNotStarted` before ``start()`` and
        :class:`~rocm_nb.errors.ModelClosed` after ``close()``; after a crash
        it is the server that died.

        Example:
            >>> LocalModel("smollm2-135m").server  # doctest: +SKIP
            Traceback (most recent call last):
            rocm_nb.errors.ModelNotStarted: this LocalModel (smollm2-135m) has not started; call model.start() ...
        """
        if self.state is ModelState.CLOSED:
            raise self._closed_error()
        server = self._lease.server
        if server is None:
            handle = type(self).__name__.removeprefix("Local").lower()  # model, router
            raise ModelNotStarted(f"{self._what} has not started; call {handle}.start() (or use "
                                  f"`with {type(self).__name__}(...)`) first: properties never start a server")
        return server

    @property
    def base_url(self) -> str:
        """The server's root URL, for any OpenAI client with ``/v1`` added (after ``start()``; see ``server``)."""
        return self.server.base_url

    @property
    def api_key(self) -> str:
        """The server's per-session API key (after ``start()``; see ``server``)."""
        return self.server.api_key

    @property
    def pid(self) -> int | None:
        """The server's process id, or ``None`` when it is not running."""
        server = self._lease.server
        return server.pid if server is not None and server.alive else None

    def logs(self, n: int | None = None) -> list[str]:
        """The server's last ``n`` log lines (all kept lines by default; none before the first start).

        Example:
            >>> print("\\n".join(model.logs(5)))  # doctest: +SKIP
        """
        server = self._lease.server
        return [] if server is None else server.logs(n)
