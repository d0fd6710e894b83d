"""llama-server policy: command line, readiness, bind retry, error hints.

The process mechanism (own session, parent-death signal, output ring, run
records, bounded terminate) is :mod:`rocm_nb._process`; this module decides
what to run and when it is ready. The server listens on 127.0.0.1 on a free
port and requires a random per-server API key, which it gets in its
environment (``LLAMA_API_KEY``: ``/proc/PID/environ`` is readable by its
owner only), never on its command line (``/proc/PID/cmdline`` is readable by
every local user). ``extra_args`` and ``env`` cannot override the host, the
port or the key (:mod:`rocm_nb._exposure`, the policy of what a server may
listen on and be passed); a server on another interface needs ``host=``
(``LocalModel`` warns).

Nothing is left behind:

* ``close()`` terminates the process group (SIGTERM, :data:`STOP_GRACE`
  seconds, SIGKILL, at most :data:`KILL_WAIT` seconds more) and is
  idempotent; a ``weakref.finalize`` (which also runs at interpreter exit)
  does the same for servers nobody closed. Every wait is bounded, so exit
  never hangs on a server stuck in a GPU driver.
* If the owning Python process is killed outright, the parent-death signal
  kills the server (see :mod:`rocm_nb._process`).
* Every server is recorded in the user's private runtime folder (never the
  cache, which may be read-only); the next start reaps the servers of owners
  that are gone.

A server whose config has a ``slot_save_path`` keeps its prompt cache
across restarts (:mod:`rocm_nb.server.warm`): it restores the saved slots
once ready, and saves them before it stops, in ``close()``, in its
finaliser and at interpreter exit (an ``atexit`` hook registered with the
first such server, so it runs before a kernel's own exit steps).

Example:
    >>> config = ServerConfig(binary=Path("llama-server"), model=Path("m.gguf"), ctx_size=2048)
    >>> config.argv(port=8080)[:3]
    ['llama-server', '-m', 'm.gguf']
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import subprocess
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rocm_nb._exposure import GUARDED_ENV, check_env, check_extra_args, connect_host, free_port
from rocm_nb._process import Child, Escalation, LinkFolder, launch, reap_stale_servers
from rocm_nb.binary._report import MemoryReport, parse_report
from rocm_nb.errors import (
    ProjectorMismatch,
    RocmNbError,
    ServerStartError,
    ServerStartTimeout,
    describe_exit,
    with_notes,
)

if TYPE_CHECKING:
    from rocm_nb.server._warm_store import WarmStore
    from rocm_nb.server.warm import SlotAPI, WarmStart

__all__ = [
    "KILL_WAIT",
    "STOP_GRACE",
    "LlamaServer",
    "LoadProgress",
    "ServerConfig",
    "file_identity",
]

_log = logging.getLogger("rocm_nb")

LoadProgress = Callable[[float, str], None]
"""``progress(elapsed_seconds, last_log_line)`` while a server loads (prefill progress is another thing:
:class:`~rocm_nb.client.logprobs.Progress`)."""

STOP_GRACE = 0.5
"""Seconds a server gets after SIGTERM before SIGKILL.

Short on purpose: llama-server keeps nothing on disk that a kill could
corrupt, and it may ignore a first SIGTERM for tens of seconds while a
stream is open, so ``close()`` promises the process gone within about a
second. :class:`~rocm_nb.LocalModel` closes its HTTP streams first, which
lets the server cancel and usually exit on the SIGTERM.
"""

KILL_WAIT = 5.0
"""Seconds to wait for the process to be reaped after SIGKILL before giving up (logged)."""

_BIND_FAILURES = ("couldn't bind", "address already in use", "failed to bind")
_PROJECTOR_REFUSED = "failed to load multimodal model"
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
    attention ``auto``, ``f16`` caches); so are ``batch_size`` and
    ``ubatch_size`` (``-b``, ``-ub``). ``embedding``, ``pooling`` and
    ``reranking`` make an embeddings-only or reranking server. ``speculative``
    holds the speculative decoding flags. :mod:`rocm_nb._options` decides all
    of them, before the memory plan.

    The API key is not part of the command line (see :meth:`LlamaServer.start`).
    ``extra_args`` and ``env`` may not set the host, port or key (a
    :class:`ValueError` says so before anything starts); ``host`` other than
    a loopback address exposes the server to the network (``LocalModel(host=)``
    warns about it).

    Example:
        >>> argv = ServerConfig(Path("s"), Path("m.gguf"), ctx_size=512).argv(1)
        >>> argv[:7]
        ['s', '-m', 'm.gguf', '--host', '127.0.0.1', '--port', '1']
        >>> argv[7:]
        ['-c', '512', '-ngl', '0', '--parallel', '1', '--jinja', '--metrics']
        >>> ServerConfig(Path("s"), Path("m.gguf"), 512, flash_attn="on", cache_type_v="q8_0").argv(1)[-4:]
        ['--flash-attn', 'on', '--cache-type-v', 'q8_0']
        >>> ServerConfig(Path("s"), Path("m.gguf"), 512, extra_args=("--port=9",))
        Traceback (most recent call last):
        ...
        ValueError: extra_args may not contain --port: rocm_nb picks a free port itself (read it from model.base_url)
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
    models_dir: Path | None = None
    """Router mode (:mod:`rocm_nb.router`): serve the GGUFs in this folder, one child per model, instead of ``-m``."""
    models_max: int = 0
    """Router mode: the most models loaded at once (``--models-max``; 0: no limit)."""
    models_links: tuple[tuple[str, Path], ...] = ()
    """Router mode: ``models_dir`` is a private folder of these links (``name.gguf`` or a sub-folder's name ->
    what it points to), made when the server starts and removed with it (:class:`~rocm_nb._process.LinkFolder`);
    the server must list exactly the models they name, or its start fails."""
    batch_size: int | None = None
    """``-b``, the logical batch (``None``: the server's default, 2048)."""
    ubatch_size: int | None = None
    """``-ub``, the micro-batch (``None``: the server's default, 512)."""
    embedding: bool = False
    pooling: str | None = None
    reranking: bool = False
    speculative: tuple[str, ...] = ()
    """llama-server's speculative decoding flags (``--spec-type …``), from :mod:`rocm_nb._options`."""
    log_verbosity: int | None = None
    """``-lv N``; 4 makes the server report its layers and buffers per device (:mod:`rocm_nb.binary._report`)."""
    mmproj: Path | None = None
    """The image projector (``--mmproj``): the model then takes images (:mod:`rocm_nb.modelfiles.projector`)."""
    mmproj_offload: bool = True
    """Whether a GPU build puts the projector on the GPU (``False`` adds ``--no-mmproj-offload``)."""
    slot_save_path: Path | None = None
    """The private folder of saved prompt caches (``--slot-save-path``; :mod:`rocm_nb.server.warm`), or ``None``
    for a server that keeps none."""
    model_identity: tuple[int, ...] | None = field(default=None, init=False)
    """The model file's :func:`file_identity`, read when the config is made (``None`` if no file is there):
    a file replaced at the same path makes another configuration, so it gets a server of its own instead
    of the one still serving the old weights. The projector's identity is part of it too."""

    def __post_init__(self) -> None:
        if self.model.is_file():
            identity: tuple[int, ...] = file_identity(self.model)
            if self.mmproj is not None and self.mmproj.is_file():
                identity = (*identity, *file_identity(self.mmproj))
            object.__setattr__(self, "model_identity", identity)  # frozen: set once, here
        check_extra_args(self.extra_args)
        check_env(name for name, _ in self.env)

    def argv(self, port: int) -> list[str]:
        """The command line for a server on ``port`` (its API key goes in its environment)."""
        return [
            str(self.binary),
            *(["--models-dir", str(self.models_dir), "--models-max", str(self.models_max)] if self.models_dir
              else ["-m", str(self.model)]),
            "--host", self.host,
            "--port", str(port),
            "-c", str(self.ctx_size),
            "-ngl", str(self.gpu_layers),
            "--parallel", str(self.parallel),
            *(["--slot-save-path", str(self.slot_save_path)] if self.slot_save_path else []),
            "--jinja",
            "--metrics",
            *(["--rpc", ",".join(self.rpc)] if self.rpc else []),
            *(["--flash-attn", self.flash_attn] if self.flash_attn else []),
            *(["--cache-type-k", self.cache_type_k] if self.cache_type_k else []),
            *(["--cache-type-v", self.cache_type_v] if self.cache_type_v else []),
            *(["-b", str(self.batch_size)] if self.batch_size else []),
            *(["-ub", str(self.ubatch_size)] if self.ubatch_size else []),
            *(["--embedding"] if self.embedding else []),
            *(["--pooling", self.pooling] if self.pooling else []),
            *(["--rerank"] if self.reranking else []),
            *self.speculative,
            *(["--mmproj", str(self.mmproj)] if self.mmproj else []),
            *(["--no-mmproj-offload"] if self.mmproj and not self.mmproj_offload else []),
            *(["-lv", str(self.log_verbosity)] if self.log_verbosity is not None else []),
            *self.extra_args,
        ]


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """What tells one file at ``path`` from another put there later: device, inode, size, modification time (ns).

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     before = file_identity(Path(f.name))
        ...     _ = f.write(b"new weights"); f.flush()
        ...     before == file_identity(Path(f.name))
        False
    """
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _await_ready(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    *,
    began: float,
    timeout: float,
    tick: Callable[[float], None] | None = None,
) -> Literal["ready", "exited", "timeout"]:
    """Poll ``ready()`` with a growing interval (2 ms to 50 ms) until it holds, ``proc`` exits or time runs out.

    ``tick(elapsed)`` is called about four times a second while waiting.

    Example:
        >>> import subprocess, sys, time
        >>> proc = subprocess.Popen([sys.executable, "-c", "pass"])
        >>> _await_ready(lambda: False, proc, began=time.perf_counter(), timeout=30)
        'exited'
    """
    interval, ticked = 0.002, began
    while not ready():
        if proc.poll() is not None:
            return "exited"
        now = time.perf_counter()
        if now - began > timeout:
            return "timeout"
        if tick is not None and now - ticked >= 0.25:
            ticked = now
            tick(now - began)
        time.sleep(interval)
        interval = min(interval * 1.5, 0.05)
    return "ready"


BeforeStop = Callable[[float | None], object]
"""What runs while a child still lives, before it is stopped (a save): until a ``time.perf_counter()`` time,
or, given ``None``, within its own budget from now."""


def _stop_child(running: Child, before_stop: BeforeStop | None, grace: float = STOP_GRACE,
                kill_wait: float = KILL_WAIT, until: float | None = None) -> Escalation:
    """``before_stop(until)`` if the process still runs (never raising), then stop it, even on Ctrl-C."""
    try:
        if before_stop is not None and running.stopped is None and running.proc.poll() is None:
            before_stop(until)
    except Exception as exc:  # a save that failed must not keep the process alive
        _log.debug("before stopping pid %d: %r", running.proc.pid, exc)
    finally:
        stopped = running.stop(grace, kill_wait)
    return stopped


_KEPT: weakref.WeakSet[LlamaServer] = weakref.WeakSet()
"""The servers of this process that save their prompt cache when they stop (closed at exit, saving first)."""


@functools.cache
def _close_kept_at_exit_registered() -> None:
    """Register :func:`_close_kept_at_exit` with ``atexit``, once."""
    atexit.register(_close_kept_at_exit)


def _close_kept_at_exit() -> None:
    """At interpreter exit: save and stop every server that keeps its prompt cache, within one shared budget.

    Registered with ``atexit`` when the first such server starts: after a
    kernel's own exit hooks, so it runs before them (``atexit`` runs the last
    registered first), while the process still has its threads and sockets.
    """
    from rocm_nb.server._warm_store import save_budget

    until = time.perf_counter() + save_budget()
    for server in list(_KEPT):
        server._stop(until=until)


class _ChildProcess:
    """What LlamaServer and RpcWorker share: the running child, its logs, its teardown."""

    _running: Child | None = None
    _finalizer: weakref.finalize[..., _ChildProcess] | None = None
    _before_stop: BeforeStop | None = None

    def _adopt(self, running: Child, before_stop: BeforeStop | None = None) -> None:
        """Own a freshly launched child; the finaliser stops it if nobody closes it (``before_stop`` first)."""
        if self._finalizer is not None:
            self._finalizer.detach()
        self._running, self._before_stop = running, before_stop
        self._finalizer = weakref.finalize(self, _stop_child, running, before_stop)

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
        return self._running is not None and self._running.stopped is None and self.returncode is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the process to end; its exit status, or ``None`` if it still runs.

        Example:
            >>> server.wait(1.0)  # doctest: +SKIP
            -9
        """
        if self._running is None:
            return None
        try:
            return self._running.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

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

    def close(self, grace: float = STOP_GRACE, kill_wait: float = KILL_WAIT) -> Escalation | None:
        """SIGTERM, wait up to ``grace`` s, SIGKILL, wait up to ``kill_wait`` s. Idempotent.

        Returns which step ended the process (``None`` if it never started);
        see :func:`rocm_nb._process.terminate`.

        Example:
            >>> server.close(); server.close()  # doctest: +SKIP
            <Escalation.SIGTERM: 'sigterm'>
        """
        return self._stop(grace, kill_wait)

    def _stop(self, grace: float = STOP_GRACE, kill_wait: float = KILL_WAIT, until: float | None = None,
              ) -> Escalation | None:
        """:meth:`close`, with what runs before the stop (a save) done by ``time.perf_counter()`` time ``until``."""
        stopped = None if self._running is None else _stop_child(self._running, self._before_stop, grace, kill_wait,
                                                                  until)
        if self._finalizer is not None:
            self._finalizer.detach()  # after the stop: one interrupted by Ctrl-C leaves the finaliser armed
        return stopped

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
        slot_api: Callable[[str, str], SlotAPI] | None = None,
    ) -> None:
        import secrets  # imported here, as http.client below: `import rocm_nb` stays cheap

        self.config = config
        # hex, not URL-safe base64: a key that began with "-" (1 in 64) would read as an option where a user
        # pastes it, `%rocm_load --url ... --api-key KEY` included
        self.api_key = secrets.token_hex(24)
        self.port: int | None = None
        self.started_at: float | None = None
        self.load_seconds: float | None = None
        self._start_timeout = start_timeout
        self._log_lines = log_lines
        self._environ = os.environ if environ is None else environ
        self._bind_attempts = bind_attempts
        self._port_picker = port_picker
        self._report: MemoryReport | None = None
        self._slot_api = slot_api
        self._store: WarmStore | None = None
        self.warm_start: WarmStart | None = None
        """What the start restored from the saved prompt cache (``None`` for a server that keeps none)."""

    # -- state ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` once started (loopback for a server on a wildcard address)."""
        host = connect_host(self.config.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    # -- start ------------------------------------------------------------------------------

    def start(self, progress: LoadProgress | None = None) -> LlamaServer:
        """Launch the process and wait until it is ready. No-op when running.

        ``progress(elapsed_seconds, last_log_line)`` is called from this thread
        while the model loads, a few times a second.
        """
        if self.alive:
            return self
        reap_stale_servers(self._environ)
        began = time.perf_counter()
        self._store = self._open_store()
        child = self._launch(progress, began)
        if self._store is not None:
            self._restore(self._store, child, progress, began)
        return self

    def _open_store(self) -> WarmStore | None:
        """The folder of saved prompt caches, ready; ``None`` (and a note) if this server keeps none or cannot."""
        if self.config.slot_save_path is None:
            return None
        from rocm_nb.server._warm_store import WarmStore, budget_from
        from rocm_nb.server.warm import WarmStart

        try:
            return WarmStore(self.config.slot_save_path, budget=budget_from(self._environ)).open()
        except (RocmNbError, OSError, ValueError) as exc:
            self.warm_start = WarmStart(notes=(f"prompt cache not kept: {exc}",))
            return None

    def _restore(self, store: WarmStore, child: Child, progress: LoadProgress | None, began: float) -> None:
        """Restore the saved prompt cache (:mod:`rocm_nb.server.warm`); start again without it if the server crashed."""
        from rocm_nb.server.warm import SlotAPI, restore_slots

        if progress is not None:
            progress(time.perf_counter() - began, "restoring the saved prompt cache")
        try:
            api = (self._slot_api or SlotAPI)(self.base_url, self.api_key)
            self.warm_start = restore_slots(api, self.config, store, died=lambda: self.wait(2.0) is not None)
            if self.warm_start.restart:
                child.stop()
                self._launch(progress, began)
        except BaseException:  # Ctrl-C while restoring: no half-started server is left behind
            assert self._running is not None
            self._running.stop()
            raise
        if self.warm_start.note:  # the load line: on the logger, and the last progress report
            _log.info("%s: %s", self.config.model.name, self.warm_start.note)
            if progress is not None:
                progress(time.perf_counter() - began, self.warm_start.note)

    def _launch(self, progress: LoadProgress | None, began: float) -> Child:
        """Spawn the process until it binds (a few tries), and wait until it is ready."""
        for attempt in range(1, self._bind_attempts + 1):
            child = self._spawn(self._port_picker(self.config.host))
            try:
                outcome = _await_ready(
                    self._healthy, child.proc, began=began, timeout=self._start_timeout,
                    tick=None if progress is None else lambda elapsed: progress(elapsed, self._last_line()),
                )
            except BaseException:  # Ctrl-C while loading: no half-started server is left behind
                child.stop()
                raise
            if outcome == "ready":
                try:
                    self._check_listed()
                except BaseException:  # a router that lists other models, or Ctrl-C while asking it
                    child.stop()
                    raise
                self.load_seconds = time.perf_counter() - began
                self._report = None
                self.memory_report()  # read while the load's lines are surely in the log ring
                return child
            if outcome == "timeout":
                tail = self.log_tail()
                child.stop()
                raise with_notes(ServerStartTimeout(
                    f"llama-server did not become ready within {self._start_timeout:.0f} s "
                    f"loading {self.config.model.name}",
                    log_tail=tail,
                ), f"Last log lines:\n{tail}", "Next step: a large model may need more time (start_timeout=), "
                   "or fewer GPU layers if the GPU is swapping.")
            child.logs.join(1.0)  # exited: let its last words reach the log first
            child.stop()
            error = self._start_error(child.proc.returncode)
            if attempt < self._bind_attempts and any(s in error.log_tail.lower() for s in _BIND_FAILURES):
                continue  # another process took the port between probe and bind
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def memory_report(self) -> MemoryReport:
        """What the server reported about its memory while loading: layers offloaded, buffers per device.

        Read from its log (:mod:`rocm_nb.binary._report`) and kept once complete,
        so later log lines cannot push it out. Empty (``complete`` false) when
        the server logs below verbosity 4, which rocm_nb asks for on GPU
        backends only.

        Example:
            >>> server.memory_report().offloaded_layers  # doctest: +SKIP
            31
        """
        if self._report is not None:
            return self._report
        report = parse_report(self.logs())
        if report.complete:
            self._report = report
        return report

    def _spawn(self, port: int) -> Child:
        inherited = {k: v for k, v in self._environ.items() if k not in GUARDED_ENV}
        env = {**inherited, **dict(self.config.env), "LLAMA_API_KEY": self.api_key}
        argv = (self.config if self._store is not None else replace(self.config, slot_save_path=None)).argv(port)
        self.port, self.started_at = port, time.time()  # before the spawn: nothing runs between it and _adopt
        links = LinkFolder(self.config.models_dir, self.config.models_links) \
            if self.config.models_dir is not None and self.config.models_links else None
        child = launch(argv, env, self._environ, self._log_lines, links, model=str(self.config.model), port=port,
                       rpc=list(self.config.rpc))
        self._adopt(child, self._saver())
        return child

    def _saver(self) -> BeforeStop | None:
        """What saves this server's prompt cache before it stops (``None`` for one that keeps none).

        It holds what the save needs, not the server: the finaliser that calls it must not keep the server alive.
        """
        store = self._store
        if store is None:
            return None
        from rocm_nb.server._warm_store import save_budget
        from rocm_nb.server.warm import SlotAPI, save_slots

        _close_kept_at_exit_registered()
        _KEPT.add(self)
        api, config = (self._slot_api or SlotAPI)(self.base_url, self.api_key), self.config
        seconds = save_budget(self._environ)

        def save(until: float | None) -> int:
            return save_slots(api, config, store, until=time.perf_counter() + seconds if until is None else until)

        return save

    def _last_line(self) -> str:
        lines = self.logs(1)
        return lines[0] if lines else ""

    def _healthy(self) -> bool:
        """One ``/health`` probe over plain HTTP (stdlib: no TLS set-up on the start path)."""
        import http.client

        connection = http.client.HTTPConnection(connect_host(self.config.host), self.port, timeout=2.0)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _listed(self) -> set[str]:
        """The model ids ``/v1/models`` lists (a router's), over plain HTTP with the key; read up to 1 MiB."""
        import http.client
        import json

        connection = http.client.HTTPConnection(connect_host(self.config.host), self.port, timeout=10.0)
        try:
            connection.request("GET", "/v1/models", headers={"Authorization": f"Bearer {self.api_key}"})
            data = json.loads(connection.getresponse().read(2**20)).get("data")
        except (OSError, ValueError, AttributeError):
            return set()
        finally:
            connection.close()
        return {str(entry.get("id")) for entry in data if isinstance(entry, dict)} if isinstance(data, list) else set()

    def _check_listed(self) -> None:
        """A router must list exactly the models it was given (its folder scan skips or renames some names)."""
        if not self.config.models_links:
            return
        asked = {name.removesuffix(".gguf") for name, _ in self.config.models_links}
        listed = self._listed()
        if listed == asked:
            return
        tail = self.log_tail(40)
        missing, extra = ", ".join(sorted(asked - listed)) or "none", ", ".join(sorted(listed - asked)) or "none"
        hint = ("this llama-server scans a models folder by other rules than rocm_nb expects (a newer build?); "
                "rename the models it left out, or install the pinned build with `rocm-nb server install --force`")
        raise with_notes(ServerStartError(
            f"the router lists other models than it was given (left out: {missing}; not asked for: {extra})",
            returncode=None, log_tail=tail, hint=hint), f"Hint: {hint}")

    def _start_error(self, returncode: int | None) -> ServerStartError:
        tail = self.log_tail(40)
        lowered = tail.lower()
        if self.config.mmproj is not None and _PROJECTOR_REFUSED in lowered:
            return self._projector_error(returncode, tail)
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
        return with_notes(ServerStartError(
            f"llama-server {describe_exit(returncode)[0]} while loading {self.config.model.name}",
            returncode=returncode,
            log_tail=tail,
            hint=hint,
        ), f"Command: {' '.join(self.config.argv(self.port or 0))}", f"Last log lines:\n{tail}",
            f"Hint: {hint}")

    def _projector_error(self, returncode: int | None, tail: str) -> ProjectorMismatch:
        """The server's refusal of the projector, with its reason quoted (the line that says why)."""
        errors = [line.partition(" E ")[2] for line in tail.splitlines() if " E " in line
                  and _PROJECTOR_REFUSED not in line.lower() and "exiting due to" not in line]
        reason = errors[0].rpartition("error: ")[2].strip() if errors else "it logged no reason"
        assert self.config.mmproj is not None
        hint = ("use the projector published with this model (the mmproj file from the same repository and release): "
                "a projector only fits the text model it was trained with")
        return with_notes(ProjectorMismatch(
            f"llama-server refused the image projector {self.config.mmproj.name} for {self.config.model.name}: "
            f"{reason!r}",
            returncode=returncode, log_tail=tail, hint=hint,
        ), f"Last log lines:\n{tail}", f"Hint: {hint}")

    def __enter__(self) -> LlamaServer:
        return self.start()
