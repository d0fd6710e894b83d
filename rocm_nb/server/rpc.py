"""llama.cpp RPC workers: lend this machine's devices to a llama-server that names them in ``--rpc``.

:func:`rpc_worker` finds the worker binary (``ggml-rpc-server``, built by
``rocm-nb server install --rpc``) and starts an :class:`RpcWorker`, which is
a child process with the same guarantees as a llama-server (own session,
parent-death signal, private run record, bounded ``close()``). Workers have
no authentication: they listen on 127.0.0.1 unless told otherwise, which
warns.

Example:
    >>> RpcWorker(Path("ggml-rpc-server"), port=50052).address  # planned, not started
    '127.0.0.1:50052'
    >>> with rpc_worker() as a, rpc_worker() as b:  # doctest: +SKIP
    ...     model = LocalModel("smollm2-135m", rpc=[a.address, b.address]).start()
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import psutil

from rocm_nb._exposure import free_port, is_loopback
from rocm_nb._process import launch, reap_stale_servers
from rocm_nb.binary import find_server
from rocm_nb.errors import BinaryNotFound, ServerStartError, ServerStartTimeout
from rocm_nb.server import _await_ready, _ChildProcess

__all__ = ["RpcWorker", "rpc_worker"]


class RpcWorker(_ChildProcess):
    """A local llama.cpp RPC worker (``ggml-rpc-server``): lends this machine's
    devices to a llama-server elsewhere that names it in ``--rpc``.

    Same guarantees as :class:`LlamaServer`: own session, parent-death signal,
    run record, SIGTERM then SIGKILL on ``close()``. RPC workers have **no
    authentication**: bind them to 127.0.0.1 or a trusted network only.

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
    ) -> None:
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


def rpc_worker(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    threads: int | None = None,
    server: str | os.PathLike[str] | None = None,
) -> RpcWorker:
    """Start a local llama.cpp RPC worker and return its running handle.

    The worker binary is built by ``rocm-nb server install --rpc``. Pass
    ``worker.address`` to ``LocalModel(..., rpc=[...])``. Workers have no
    authentication: keep ``host`` on 127.0.0.1 or a trusted network (any
    other address warns, :class:`UserWarning`).

    Example:
        >>> with rpc_worker() as a, rpc_worker() as b:  # doctest: +SKIP
        ...     model = LocalModel("smollm2-135m", rpc=[a.address, b.address]).start()
    """
    if not is_loopback(host):
        warnings.warn(f"the RPC worker will listen on {host} without authentication: every machine that can "
                      "reach this one can use its devices and memory", UserWarning, stacklevel=2)
    binary = find_server(server)
    if binary.rpc_path is None:
        raise BinaryNotFound(
            f"the llama-server at {binary.path} was built without the RPC worker; "
            "next step: rocm-nb server install --rpc"
        )
    return RpcWorker(binary.rpc_path, host=host, port=port, threads=threads).start()
