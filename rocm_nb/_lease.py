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

from rocm_nb.client import Client
from rocm_nb.client.stream import FailureHook
from rocm_nb.server import LlamaServer, LoadProgress, ServerConfig
from rocm_nb.server._registry import ServerRegistry

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
                api = Client(server.base_url, server.api_key, timeout=self._timeout, on_failure=self._on_failure,
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
    """What :class:`~rocm_nb.LocalModel` and :class:`~rocm_nb.LocalRouter` say alike of the server they hold.

    Each provides ``_lease`` and ``server`` (which raises
    :class:`~rocm_nb.errors.ModelNotStarted` before ``start()``); none of
    these starts a server.

    Example:
        >>> from rocm_nb import LocalModel, LocalRouter
        >>> issubclass(LocalModel, OwnServer) and issubclass(LocalRouter, OwnServer)
        True
    """

    _lease: ServerLease

    @property
    def server(self) -> LlamaServer:
        raise NotImplementedError

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
