"""llama.cpp RPC workers: lend this machine's devices to a llama-server that names them in ``--rpc``.

:func:`rpc_worker` finds the worker binary (``ggml-rpc-server``, built by
``rocm-nb server install --rpc``) and starts an :class:`RpcWorker`, which is
a child process with the same guarantees as a llama-server (own session,
parent-death signal, private run record, bounded ``close()``).

**Who can use a worker.** ggml-rpc has no authentication, no encryption and
no allow-list (read at the pinned llama.cpp: ``tools/rpc/rpc-server.cpp`` and
``ggml/src/ggml-rpc/``): whoever connects first can allocate the worker's
memory, read and write its buffers and run graphs on its devices. The only
control it offers is the address it binds (``-H``, IPv4 only) and which
devices it exposes (``--device``). So:

* a worker listens on 127.0.0.1, where it is out of the network's reach but
  **not private on this machine**: every local user can connect to it. When
  other people have processes or login sessions here (uids from
  ``UID_MIN`` in ``/etc/login.defs`` up, ``nobody`` included; system
  daemons below it are not counted), starting one warns (``UserWarning``);
* any other address (``0.0.0.0``, a LAN address) is refused unless
  ``allow_network=True`` says the network is trusted and private, and then
  still warns.

``docs/security-rpc.md`` says what to do on a shared machine.

Example:
    >>> RpcWorker(Path("ggml-rpc-server"), port=50052).address  # planned, not started
    '127.0.0.1:50052'
    >>> with rpc_worker() as a, rpc_worker() as b:  # doctest: +SKIP
    ...     model = LocalModel("smollm2-135m", rpc=[a.address, b.address]).start()
"""

from __future__ import annotations

import os
import pwd
import re
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import psutil

from rocm_nb._exposure import free_port, is_loopback
from rocm_nb._process import launch, reap_stale_servers
from rocm_nb.binary import find_server
from rocm_nb.errors import BinaryNotFound, ServerStartError, ServerStartTimeout
from rocm_nb.server import _await_ready, _ChildProcess

__all__ = ["RpcWorker", "rpc_worker"]


def _check_host(host: str, allow_network: bool) -> None:
    if not is_loopback(host) and not allow_network:
        raise ValueError(
            f"an RPC worker on {host} would serve every machine that can reach this one, and ggml-rpc has no "
            "authentication: any of them could use its devices and read or write its memory. Keep the default "
            "host (127.0.0.1), or pass allow_network=True if that network is trusted and private")


class RpcWorker(_ChildProcess):
    """A local llama.cpp RPC worker (``ggml-rpc-server``): lends this machine's
    devices to a llama-server elsewhere that names it in ``--rpc``.

    Same guarantees as :class:`LlamaServer`: own session, parent-death signal,
    run record, SIGTERM then SIGKILL on ``close()``. RPC workers have **no
    authentication**: on 127.0.0.1 every user of this machine can use one
    (starting one warns when others are here), and another ``host`` is a
    :class:`ValueError` unless ``allow_network=True`` (see the module docstring).

    Example:
        >>> with RpcWorker(Path("ggml-rpc-server")) as worker:  # doctest: +SKIP
        ...     worker.address
        '127.0.0.1:50052'
    """

    def __init__(
        self,
        binary: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        threads: int | None = None,
        start_timeout: float = 30.0,
        environ: Mapping[str, str] | None = None,
        allow_network: bool = False,
    ) -> None:
        _check_host(host, allow_network)
        self.binary = binary
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._threads = threads
        self._start_timeout = start_timeout
        self._environ = os.environ if environ is None else environ

    @property
    def address(self) -> str:
        """``host:port``, the form ``--rpc`` and ``LocalModel(rpc=[...])`` take."""
        return f"{self.host}:{self.port}"

    def start(self) -> RpcWorker:
        """Launch the worker and wait until it accepts connections."""
        if self.alive:
            return self
        others = _other_users()
        if others:
            warnings.warn(
                f"other users are on this machine ({', '.join(others)}): the RPC worker on {self.address} has no "
                "authentication, so any of them can connect to it, use its devices and read or write its memory. "
                "Run RPC workers on a machine of your own; docs/security-rpc.md says more", UserWarning, stacklevel=3)
        reap_stale_servers(self._environ)
        argv = [str(self.binary), "-H", self.host, "-p", str(self.port)]
        if self._threads:
            argv += ["-t", str(self._threads)]
        child = launch(argv, self._environ, self._environ, 500, rpc=self.address)
        self._adopt(child)
        try:
            outcome = _await_ready(lambda: self._listening(child.proc.pid), child.proc,
                                   began=time.perf_counter(), timeout=self._start_timeout)
        except BaseException:
            child.stop()
            raise
        if outcome == "ready":
            return self
        if outcome == "timeout":
            child.stop()
            raise ServerStartTimeout(f"the RPC worker did not listen on {self.address} "
                                     f"within {self._start_timeout:.0f} s")
        child.logs.join(1.0)
        child.stop()
        tail = self.log_tail(20)
        raise ServerStartError(
            f"the RPC worker exited (status {child.proc.returncode}) before listening on "
            f"{self.address}. Last lines:\n{tail}",
            returncode=child.proc.returncode, log_tail=tail,
            hint="is the port taken? pick another with port=",
        )

    def _listening(self, pid: int) -> bool:
        """True once *this* process listens on the port (a connect could reach another one)."""
        try:
            sockets = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in sockets)

    def __enter__(self) -> RpcWorker:
        return self.start()


def _first_person_uid() -> int:
    """``UID_MIN`` of ``/etc/login.defs`` (the first uid given to a person; 1000 when it does not say)."""
    try:
        found = re.search(r"^\s*UID_MIN\s+(\d+)", Path("/etc/login.defs").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return int(found[1]) if found else 1000


def _other_users() -> list[str]:
    """Other people on this machine, each with what shows it: ``"ann (3 processes)"``, ``"bob (logged in)"``.

    Counted: login sessions (``psutil.users()``) of other names, and
    processes of uids other than yours and root's from ``UID_MIN`` up
    (people, and ``nobody``); system daemons' uids are not. Where ``/proc``
    hides other users' processes (``hidepid``), only sessions count.

    Example:
        >>> all(isinstance(entry, str) for entry in _other_users())
        True
    """
    me = os.getuid()
    people = _first_person_uid()
    uids = Counter(
        uid for process in psutil.process_iter(["uids"])
        if process.info["uids"] is not None
        and (uid := process.info["uids"].real) not in (me, 0) and uid >= people
    )

    def name(uid: int) -> str:
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"uid {uid}"

    mine = name(me)
    seen = {name(uid): f"{count} process{'es' if count > 1 else ''}" for uid, count in uids.items()}
    for session in psutil.users():
        if session.name != mine:
            seen[session.name] = "logged in" if session.name not in seen else f"{seen[session.name]}, logged in"
    return [f"{who} ({what})" for who, what in sorted(seen.items())]


def rpc_worker(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    threads: int | None = None,
    server: str | os.PathLike[str] | None = None,
    allow_network: bool = False,
) -> RpcWorker:
    """Start a local llama.cpp RPC worker and return its running handle.

    The worker binary is built by ``rocm-nb server install --rpc``. Pass
    ``worker.address`` to ``LocalModel(..., rpc=[...])``. Workers have no
    authentication: on 127.0.0.1 (the default) every user of this machine can
    use one, and starting one warns (:class:`UserWarning`) when others have
    processes or sessions here. Any other ``host`` is a :class:`ValueError`
    unless ``allow_network=True`` says its network is trusted and private
    (then it warns). See :mod:`rocm_nb.server.rpc` and ``docs/security-rpc.md``.

    Example:
        >>> with rpc_worker() as a, rpc_worker() as b:  # doctest: +SKIP
        ...     model = LocalModel("smollm2-135m", rpc=[a.address, b.address]).start()
        >>> rpc_worker(host="0.0.0.0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: an RPC worker on 0.0.0.0 would serve every machine that can reach this one, ...
    """
    _check_host(host, allow_network)
    if not is_loopback(host):
        warnings.warn(f"the RPC worker will listen on {host} without authentication: every machine that can "
                      "reach this one can use its devices and memory", UserWarning, stacklevel=2)
    binary = find_server(server)
    if binary.rpc_path is None:
        raise BinaryNotFound(
            f"the llama-server at {binary.path} was built without the RPC worker; "
            "next step: rocm-nb server install --rpc"
        )
    return RpcWorker(binary.rpc_path, host=host, port=port, threads=threads, allow_network=allow_network).start()
