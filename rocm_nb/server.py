"""One llama-server process: launch, readiness, logs, teardown, orphan protection.

The server runs in its own session (so a kernel's SIGINT never reaches it),
listens on 127.0.0.1 on a free port and requires a random per-server API key.
Its output is drained from the start into a ring buffer (a full pipe would
block it).

Nothing is left behind:

* ``close()`` sends SIGTERM, waits, then SIGKILL, and reaps; it is idempotent
  and also registered through ``weakref.finalize`` (which runs at interpreter
  exit, like ``atexit``) for servers nobody closed.
* If the owning Python process is killed outright (``kill -9``, a kernel
  restart that times out), the kernel delivers SIGKILL to the server: the
  parent-death signal is armed in the child, and the child is forked from a
  launcher thread that lives as long as the process (the signal fires when
  the forking *thread* exits, so a short-lived thread would kill it early).
* Every server is recorded under ``<cache>/run/``; the next start reaps the
  servers of owners that are gone (belt and braces for platforms or
  sandboxes where the parent-death signal does not apply).

Example:
    >>> config = ServerConfig(binary=Path("llama-server"), model=Path("m.gguf"), ctx_size=2048)
    >>> config.argv(port=8080, api_key="k")[:3]
    ['llama-server', '-m', 'm.gguf']
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from rocm_nb._paths import cache_root
from rocm_nb.errors import ServerStartError, ServerStartTimeout, describe_exit

__all__ = ["LlamaServer", "RpcWorker", "ServerConfig", "free_port", "reap_stale_servers", "running_records"]

_Popen = subprocess.Popen[bytes]
Progress = Callable[[float, str], None]
"""``progress(elapsed_seconds, last_log_line)`` while a server loads."""

_PR_SET_PDEATHSIG = 1
_BIND_FAILURES = ("couldn't bind", "address already in use", "failed to bind")
_OOM_SIGNS = ("out of memory", "failed to allocate", "cudamalloc failed", "hipmalloc failed",
              "unable to allocate", "bad_alloc", "failed to load model")


@dataclass(frozen=True)
class ServerConfig:
    """Everything that decides what a llama-server is; equal configs share a server.

    ``env`` holds extra environment variables for the server only (for
    example ``HIP_VISIBLE_DEVICES``) as sorted pairs, so the config stays
    hashable. ``flash_attn`` (``"on"``, ``"off"``, ``"auto"``) and the KV
    cache types ``cache_type_k``/``cache_type_v`` (``"f16"``, ``"q8_0"``…)
    become ``--flash-attn``, ``--cache-type-k`` and ``--cache-type-v``; left
    at ``None`` the flag is omitted and the server's default applies (flash
    attention ``auto``, ``f16`` caches).

    Example:
        >>> argv = ServerConfig(Path("s"), Path("m.gguf"), ctx_size=512).argv(1, "k")
        >>> argv[:9]
        ['s', '-m', 'm.gguf', '--host', '127.0.0.1', '--port', '1', '--api-key', 'k']
        >>> argv[9:]
        ['-c', '512', '-ngl', '0', '--parallel', '1', '--jinja', '--metrics']
        >>> ServerConfig(Path("s"), Path("m.gguf"), 512, flash_attn="on", cache_type_v="q8_0").argv(1, "k")[-4:]
        ['--flash-attn', 'on', '--cache-type-v', 'q8_0']
    """

    binary: Path
    model: Path
    ctx_size: int
    gpu_layers: int = 0
    parallel: int = 1
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    host: str = "127.0.0.1"
    rpc: tuple[str, ...] = ()
    flash_attn: str | None = None
    cache_type_k: str | None = None
    cache_type_v: str | None = None

    def argv(self, port: int, api_key: str) -> list[str]:
        """The command line for a server on ``port`` guarded by ``api_key``."""
        return [
            str(self.binary),
            "-m", str(self.model),
            "--host", self.host,
            "--port", str(port),
            "--api-key", api_key,
            "-c", str(self.ctx_size),
            "-ngl", str(self.gpu_layers),
            "--parallel", str(self.parallel),
            "--jinja",
            "--metrics",
            *(["--rpc", ",".join(self.rpc)] if self.rpc else []),
            *(["--flash-attn", self.flash_attn] if self.flash_attn else []),
            *(["--cache-type-k", self.cache_type_k] if self.cache_type_k else []),
            *(["--cache-type-v", self.cache_type_v] if self.cache_type_v else []),
            *self.extra_args,
        ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it).

    Another process may take it before the server binds; :class:`LlamaServer`
    retries on a new port when that happens.

    Example:
        >>> 1024 <= free_port() <= 65535
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# -- launching from a thread that never exits ------------------------------------------------


def _arm_parent_death_signal(parent_pid: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Launcher:
    """A daemon thread that forks every server, so the parent-death signal
    is tied to a thread that lives exactly as long as the process."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], _Popen], Future[_Popen]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)

    def popen(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rocm_nb-launcher", daemon=True)
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        parent = os.getpid()
        self._jobs.put((
            lambda: subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                preexec_fn=_arm_parent_death_signal(parent),
            ),
            future,
        ))
        return future.result()


_launcher = _Launcher()


# -- bookkeeping of running servers -----------------------------------------------------------


def _run_dir(environ: Mapping[str, str] | None = None) -> Path:
    return cache_root(environ) / "run"


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def running_records(environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Records of the llama-servers and RPC workers rocm_nb runs on this machine (any process).

    Example:
        >>> running_records({"ROCM_NB_CACHE": "/nonexistent"})
        []
    """
    run_dir = _run_dir(environ)
    records = []
    for path in sorted(run_dir.glob("*.json")) if run_dir.is_dir() else ():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(path.read_text())
            if _create_time(int(data["server_pid"])) == data["server_created"]:
                records.append(data)
    return records


def reap_stale_servers(environ: Mapping[str, str] | None = None) -> list[int]:
    """Kill servers whose owning process is gone; return their pids.

    A record is only acted on when the server process still has the start
    time recorded for it, so a recycled pid is never killed.

    Example:
        >>> reap_stale_servers({"ROCM_NB_CACHE": "/nonexistent"})
        []
    """
    reaped: list[int] = []
    run_dir = _run_dir(environ)
    for record in run_dir.glob("*.json") if run_dir.is_dir() else ():
        try:
            data = json.loads(record.read_text())
            owner_alive = _create_time(int(data["owner_pid"])) == data["owner_created"]
            server_pid = int(data["server_pid"])
            server_alive = _create_time(server_pid) == data["server_created"]
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            continue
        if owner_alive:
            continue
        if server_alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server_pid, signal.SIGKILL)
            reaped.append(server_pid)
        record.unlink(missing_ok=True)
    return reaped


# -- the process ------------------------------------------------------------------------------


class _LogBuffer:
    """The server's output, drained by a thread into a bounded ring buffer."""

    def __init__(self, pipe: object, max_lines: int) -> None:
        self.lines: deque[str] = deque(maxlen=max_lines)
        self._thread = threading.Thread(target=self._drain, args=(pipe,), name="rocm_nb-log", daemon=True)
        self._thread.start()

    def _drain(self, pipe: object) -> None:
        for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class _Running:
    """What the finaliser needs to stop a server: no reference to the owner."""

    proc: subprocess.Popen[bytes]
    record: Path
    logs: _LogBuffer
    stopped: bool = field(default=False)

    def stop(self, grace: float = 3.0) -> None:
        if self.stopped:
            return
        self.stopped = True
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.logs.join(1.0)
        if proc.stdout is not None:
            proc.stdout.close()
        self.record.unlink(missing_ok=True)


def _launch(argv: Sequence[str], env: Mapping[str, str], environ: Mapping[str, str], log_lines: int,
            **record: object) -> _Running:
    """Start a child the rocm_nb way: own session, parent-death signal, drained output, a run record."""
    proc = _launcher.popen(argv, env)
    assert proc.stdout is not None
    run_dir = _run_dir(environ)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"{proc.pid}.json"
    path.write_text(json.dumps({
        "owner_pid": os.getpid(),
        "owner_created": _create_time(os.getpid()),
        "server_pid": proc.pid,
        "server_created": _create_time(proc.pid),
        **record,
    }))
    return _Running(proc, path, _LogBuffer(proc.stdout, log_lines))


class _ChildProcess:
    """What LlamaServer and RpcWorker share: the running child, its logs, its teardown."""

    _running: _Running | None = None
    _finalizer: weakref.finalize[..., _ChildProcess] | None = None

    def _adopt(self, running: _Running) -> None:
        """Own a freshly launched child; the finaliser stops it if nobody closes it."""
        if self._finalizer is not None:
            self._finalizer.detach()
        self._running = running
        self._finalizer = weakref.finalize(self, running.stop)

    @property
    def pid(self) -> int | None:
        """The process id (``None`` before start)."""
        return None if self._running is None else self._running.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, else ``None``."""
        return None if self._running is None else self._running.proc.poll()

    @property
    def alive(self) -> bool:
        """True while the process runs and has not been closed."""
        return self._running is not None and not self._running.stopped and self.returncode is None

    def logs(self, n: int | None = None) -> list[str]:
        """The last ``n`` lines of the process's output (all kept lines by default).

        Example:
            >>> server.logs(2)  # doctest: +SKIP
            ['main: server is listening on http://127.0.0.1:40123', '...']
        """
        lines = [] if self._running is None else list(self._running.logs.lines)
        return lines if n is None else lines[-n:]

    def log_tail(self, n: int = 30) -> str:
        """The last ``n`` log lines as one string."""
        return "\n".join(self.logs(n))

    def close(self, grace: float = 3.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, SIGKILL, reap. Idempotent.

        Example:
            >>> server.close(); server.close()  # doctest: +SKIP
        """
        if self._running is not None:
            self._running.stop(grace)
        if self._finalizer is not None:
            self._finalizer.detach()

    def __exit__(self, *exc: object) -> None:
        self.close()


class LlamaServer(_ChildProcess):
    """A running llama-server for one :class:`ServerConfig`.

    ``start()`` returns once ``/health`` answers 200. Use it as a context
    manager or call ``close()``; both are idempotent.

    Example:
        >>> with LlamaServer(config) as server:  # doctest: +SKIP
        ...     print(server.base_url, server.pid)
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        start_timeout: float = 300.0,
        log_lines: int = 2000,
        environ: Mapping[str, str] | None = None,
        bind_attempts: int = 5,
        port_picker: Callable[[str], int] = free_port,
    ) -> None:
        self.config = config
        self.api_key = secrets.token_urlsafe(24)
        self.port: int | None = None
        self.started_at: float | None = None
        self.load_seconds: float | None = None
        self._start_timeout = start_timeout
        self._log_lines = log_lines
        self._environ = os.environ if environ is None else environ
        self._bind_attempts = bind_attempts
        self._port_picker = port_picker

    # -- state ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        return f"http://{self.config.host}:{self.port}"

    # -- start ------------------------------------------------------------------------------

    def start(self, progress: Progress | None = None) -> LlamaServer:
        """Launch the process and wait until it is ready. No-op when running.

        ``progress(elapsed_seconds, last_log_line)`` is called from this thread
        while the model loads, a few times a second.
        """
        if self.alive:
            return self
        reap_stale_servers(self._environ)
        began = time.perf_counter()
        for attempt in range(1, self._bind_attempts + 1):
            port = self._port_picker(self.config.host)
            self._spawn(port)
            try:
                self._wait_ready(began, progress)
            except ServerStartError as exc:
                if attempt < self._bind_attempts and any(s in exc.log_tail.lower() for s in _BIND_FAILURES):
                    continue  # another process took the port between probe and bind
                raise
            self.load_seconds = time.perf_counter() - began
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, port: int) -> None:
        env = {**self._environ, **dict(self.config.env)}
        argv = self.config.argv(port, self.api_key)
        running = _launch(argv, env, self._environ, self._log_lines, model=str(self.config.model), port=port,
                          rpc=list(self.config.rpc))
        self.port = port
        self.started_at = time.time()
        self._adopt(running)

    def _healthy(self) -> bool:
        """One ``/health`` probe over plain HTTP (stdlib: no TLS set-up on the start path)."""
        connection = http.client.HTTPConnection(self.config.host, self.port, timeout=2.0)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _wait_ready(self, began: float, progress: Progress | None) -> None:
        assert self._running is not None
        proc = self._running.proc
        interval = 0.002
        reported = began
        while not self._healthy():
            if proc.poll() is not None:
                self._running.logs.join(1.0)
                self._stop_quietly()
                raise self._start_error(proc.returncode)
            now = time.perf_counter()
            if now - began > self._start_timeout:
                tail = self.log_tail()
                self._stop_quietly()
                raise ServerStartTimeout(
                    f"llama-server did not become ready within {self._start_timeout:.0f} s "
                    f"loading {self.config.model.name}. Last log lines:\n{tail}\n"
                    "Next step: a large model may need more time (start_timeout=), "
                    "or fewer GPU layers if the GPU is swapping.",
                    log_tail=tail,
                )
            if progress is not None and now - reported >= 0.25:
                reported = now
                lines = self._running.logs.lines
                progress(now - began, lines[-1] if lines else "")
            time.sleep(interval)
            interval = min(interval * 1.5, 0.05)

    def _start_error(self, returncode: int | None) -> ServerStartError:
        tail = self.log_tail(40)
        lowered = tail.lower()
        if any(s in lowered for s in _OOM_SIGNS):
            hint = (
                "the model did not fit in memory: lower gpu_layers (offload fewer layers "
                "to the GPU) or ctx_size, or use a smaller quantisation"
            )
        elif any(s in lowered for s in _BIND_FAILURES):
            hint = "the port was taken every time; check what is listening on 127.0.0.1"
        elif "unknown model architecture" in lowered or "unsupported" in lowered:
            hint = "this llama-server does not support the model: update it with `rocm-nb server install --force`"
        else:
            hint = describe_exit(returncode)[1] or "read the log lines above; `rocm-nb doctor` checks the setup"
        return ServerStartError(
            f"llama-server {describe_exit(returncode)[0]} while loading {self.config.model.name}.\n"
            f"Command: {' '.join(self.config.argv(self.port or 0, '***'))}\n"
            f"Last log lines:\n{tail}\nHint: {hint}",
            returncode=returncode,
            log_tail=tail,
            hint=hint,
        )

    def _stop_quietly(self) -> None:
        if self._running is not None:
            self._running.stop()

    def __enter__(self) -> LlamaServer:
        return self.start()


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
        running = _launch(argv, self._environ, self._environ, 500, rpc=self.address)
        self._adopt(running)
        deadline = time.monotonic() + self._start_timeout
        while True:
            if running.proc.poll() is not None:
                running.logs.join(1.0)
                running.stop()
                tail = self.log_tail(20)
                raise ServerStartError(
                    f"the RPC worker exited (status {running.proc.returncode}) before listening on "
                    f"{self.address}. Last lines:\n{tail}",
                    returncode=running.proc.returncode, log_tail=tail,
                    hint="is the port taken? pick another with port=",
                )
            if self._listening(running.proc.pid):
                return self
            if time.monotonic() > deadline:
                running.stop()
                raise ServerStartTimeout(f"the RPC worker did not listen on {self.address} "
                                         f"within {self._start_timeout:.0f} s")
            time.sleep(0.01)

    def _listening(self, pid: int) -> bool:
        """True once *this* process listens on the port (a connect could reach another one)."""
        try:
            sockets = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in sockets)

    def __enter__(self) -> RpcWorker:
        return self.start()
