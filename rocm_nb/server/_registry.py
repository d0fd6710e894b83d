"""One running server per configuration in this process, shared by lease.

Re-running a notebook cell that makes ``LocalModel(...)`` with an equal
configuration attaches to the running server instead of loading the model a
second time. :class:`ServerRegistry` is that bookkeeping:

* :meth:`~ServerRegistry.acquire` starts a configuration once. The start
  runs **without** the registry's lock held: the first caller owns a
  :class:`concurrent.futures.Future` for that configuration and starts the
  server; callers for the same configuration join that future; callers for
  another configuration, :meth:`~ServerRegistry.release` and
  :meth:`~ServerRegistry.running` never wait for it. A start that fails is
  removed (its waiters get the same error), so a later try starts afresh.
* A server that died is replaced on the next acquire; its old holders still
  release it, and that release closes it.
* :meth:`~ServerRegistry.release` closes the server when its last user lets
  go, outside the lock (terminating may take up to its grace and kill wait).

:data:`default_registry` is the process-wide one :class:`~rocm_nb.LocalModel`
uses unless given ``registry=`` (tests inject a fresh one).

Example:
    >>> class Fake:
    ...     alive = True
    ...     def close(self) -> None: self.alive = False
    >>> registry: ServerRegistry[str, Fake] = ServerRegistry()
    >>> a = registry.acquire("cfg", Fake)
    >>> registry.acquire("cfg", Fake) is a, registry.running() == [a]
    (True, True)
    >>> registry.release("cfg", a); a.alive
    True
    >>> registry.release("cfg", a); a.alive, registry.running()
    (False, [])
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from rocm_nb.server import LlamaServer, ServerConfig

__all__ = ["ServerRegistry", "default_registry"]


class _Server(Protocol):
    @property
    def alive(self) -> bool: ...

    def close(self) -> object: ...


K = TypeVar("K", bound=Hashable)
S = TypeVar("S", bound=_Server)


@dataclass
class _Entry(Generic[S]):
    future: Future[S]
    users: int

    def server(self) -> S | None:
        """The started server, ``None`` while starting or after a failed start."""
        if not self.future.done() or self.future.exception() is not None:
            return None
        return self.future.result()


class ServerRegistry(Generic[K, S]):
    """Starts each configuration once and counts its users; thread-safe, no lock held while starting.

    Example:
        >>> registry: ServerRegistry[int, object] = ServerRegistry()  # doctest: +SKIP
        >>> server = registry.acquire(config, lambda: LlamaServer(config).start())  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[K, _Entry[S]] = {}

    def acquire(self, key: K, start: Callable[[], S]) -> S:
        """The running server for ``key``, started by ``start()`` if there is none; one more user.

        Example:
            >>> ServerRegistry().acquire("k", lambda: "a server")  # doctest: +SKIP
        """
        with self._lock:
            entry = self._entries.get(key)
            server = None if entry is None else entry.server()
            if entry is not None and (not entry.future.done() or (server is not None and server.alive)):
                entry.users += 1
                owner = False
            else:  # none yet, or the one we had died: start a fresh one
                entry = self._entries[key] = _Entry(Future(), 1)
                owner = True
        if not owner:
            try:
                return entry.future.result()  # raises the starter's error if its start failed
            except BaseException:  # that error, or Ctrl-C while waiting: this caller holds no lease
                self._forget_waiter(key, entry)
                raise
        started: S | None = None
        try:
            started = start()
            entry.future.set_result(started)
        except BaseException as exc:
            if entry.future.done():  # Ctrl-C just after the start was published: give this caller's share back
                self._forget_waiter(key, entry)
                raise
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            entry.future.set_exception(exc)
            if started is not None:  # Ctrl-C between the start and its publication: nobody can reach it
                started.close()
            raise
        return started

    def _forget_waiter(self, key: K, entry: _Entry[S]) -> None:
        server = entry.server()
        if server is not None:  # interrupted just as the start finished
            self.release(key, server)
            return
        with self._lock:
            entry.users -= 1  # a failed entry is already gone; a pending one still counts its starter

    def release(self, key: K, server: S) -> None:
        """One user fewer for ``server``; the last one out closes it.

        A server that was already replaced (it died and a fresh one took its
        place) is closed at once: nobody can be using it.

        Example:
            >>> registry.release(config, server)  # doctest: +SKIP
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.server() is not server:
                last = True
            else:
                entry.users -= 1
                last = entry.users <= 0
                if last:
                    del self._entries[key]
        if last:
            server.close()

    def running(self) -> list[S]:
        """The servers started and still alive.

        Example:
            >>> ServerRegistry().running()
            []
        """
        with self._lock:
            servers = [entry.server() for entry in self._entries.values()]
        return [server for server in servers if server is not None and server.alive]


default_registry: ServerRegistry[ServerConfig, LlamaServer] = ServerRegistry()
"""The process-wide registry: one server per configuration for every ``LocalModel`` in this process."""
