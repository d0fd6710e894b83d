"""Child-process mechanism: launch, output ring, bounded terminate, run records.

Everything here is about *a* child process, not about llama-server (that
policy lives in :mod:`rocm_nb.server`):

* :func:`launch` starts a child in its own session (so a kernel's SIGINT
  never reaches it), with the parent-death signal armed: if the owning
  Python process is killed outright (``kill -9``, a kernel restart that
  times out), Linux delivers SIGKILL to the child. The child is forked from
  a launcher thread that lives as long as the process, because the signal
  fires when the forking *thread* exits. Its output is drained from the
  start into a :class:`LogRing` (a full pipe would block it), and it is
  recorded in the user's private runtime folder (see :func:`read_records`
  and :func:`rocm_nb._paths.runtime_root`), never in the cache, which may be
  read-only or shared.
* :func:`terminate` ends a process: SIGTERM, a bounded wait, SIGKILL, a
  bounded wait, and says which step ended it (:class:`Escalation`). Every
  wait is bounded, so a process stuck in an uninterruptible driver call
  (a hung GPU) cannot hang the caller, or the interpreter's exit: it gives
  up with a log message instead. Only "no such process" (ESRCH) is
  tolerated while signalling; EPERM on our own child is a bug worth seeing.

Decisions: ``preexec_fn`` is documented as unsafe with threads; it is used
for exactly one ``prctl`` call, which is async-signal-safe on glibc, and the
orphan tests cover it. The run folder is 0700 and each record 0600, so other
local users can neither read nor plant records. A record is trusted only for
a process that matches it entirely: pid *and* start time (a recycled pid),
executable, command line, owner uid, and leading its own process group; a
record that is not a regular file of this user holding valid JSON is ignored
(logged at debug level), never acted on. No child is left without an owner:
the run folder is checked before the spawn, and a failure after it (a full
disk, Ctrl-C) kills the child before the error propagates.

A child may read a :class:`LinkFolder` (a router's private folder of links to
its models): it is made just before the spawn, named in the run record, and
removed with the child, by the same :meth:`Child.stop` that the server's
finaliser calls, or by the reaper from the record of an owner that is gone.
The reaper also kills what is left of a stale record's process group when
its leader is gone: a router's children that are still loading a model do
not watch their pipe from the router yet, so they outlive a router killed
with its kernel (each is checked as the leader is: this user's, the same
executable, the same session and group, started after the leader).

Example:
    >>> import subprocess, sys
    >>> proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    >>> terminate(proc, grace=5.0)
    <Escalation.SIGTERM: 'sigterm'>
    >>> terminate(proc)
    <Escalation.EXITED: 'exited'>
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import json
import logging
import os
import queue
import shutil
import signal
import stat
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rocm_nb._paths import private_folder, runtime_root, write_private_json
from rocm_nb.errors import RuntimeDirError

if TYPE_CHECKING:
    import psutil

__all__ = [
    "Child",
    "Escalation",
    "LinkFolder",
    "LogRing",
    "Record",
    "launch",
    "read_records",
    "reap_stale_servers",
    "running_records",
    "terminate",
]

_log = logging.getLogger("rocm_nb")
_PR_SET_PDEATHSIG = 1
_Popen = subprocess.Popen[bytes]


class Escalation(enum.Enum):
    """Which step of :func:`terminate` ended the process.

    Example:
        >>> Escalation.SIGKILL.value
        'sigkill'
    """

    EXITED = "exited"
    """It had already exited (and is now reaped)."""
    SIGTERM = "sigterm"
    """It exited after SIGTERM, within the grace period."""
    SIGKILL = "sigkill"
    """It ignored SIGTERM and was killed."""
    GAVE_UP = "gave_up"
    """It did not die even after SIGKILL within the bound (uninterruptible sleep): left behind, logged."""


def terminate(proc: subprocess.Popen[Any], *, grace: float = 0.5, kill_wait: float = 5.0,
              group: bool = False) -> Escalation:
    """End ``proc``: SIGTERM, wait up to ``grace`` s, SIGKILL, wait up to ``kill_wait`` s.

    ``group=True`` signals the whole process group (``killpg``): for a child
    started in its own session, such as a build whose compilers must go
    with it. Returns the step that ended it; :attr:`Escalation.GAVE_UP`
    (logged as a warning) when even SIGKILL did not reap it in time. Safe to
    call again, and on a process that has already exited.

    Example:
        >>> import subprocess, sys
        >>> ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
        >>> stubborn = subprocess.Popen([sys.executable, "-c", ignore_term + "; print(flush=True); time.sleep(30)"],
        ...                             stdout=subprocess.PIPE)
        >>> _ = stubborn.stdout.readline()  # its handler is in place
        >>> terminate(stubborn, grace=0.2)
        <Escalation.SIGKILL: 'sigkill'>
        >>> stubborn.stdout.close()
    """
    if proc.poll() is not None:
        return Escalation.EXITED
    send = os.killpg if group else os.kill
    for sig, wait, step in ((signal.SIGTERM, grace, Escalation.SIGTERM),
                            (signal.SIGKILL, kill_wait, Escalation.SIGKILL)):
        with contextlib.suppress(ProcessLookupError):  # ESRCH: it ended on its own meanwhile
            send(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        return step
    _log.warning("process %d did not end within %.1f s of SIGKILL (stuck in the kernel, such as a hung GPU "
                 "driver?); leaving it", proc.pid, kill_wait)
    return Escalation.GAVE_UP


# -- launching from a thread that never exits ------------------------------------------------


def _arm_parent_death_signal(parent_pid: int) -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Launcher:
    """A daemon thread that forks every child, so the parent-death signal
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

    def popen(self, argv: Sequence[str], env: Mapping[str, str]) -> _Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rocm_nb-launcher", daemon=True)
                self._thread.start()
        future: Future[_Popen] = Future()
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
        try:
            return future.result()
        except BaseException:  # interrupted while the launcher forks: the child it makes has no owner
            future.add_done_callback(_stop_unowned)
            raise


def _stop_unowned(future: Future[_Popen]) -> None:
    if future.exception() is None:
        proc = future.result()
        terminate(proc, group=True)
        if proc.stdout is not None:
            proc.stdout.close()


_launcher = _Launcher()


class LogRing:
    """A child's output, drained by a thread into a bounded ring of lines.

    Example:
        >>> import io
        >>> ring = LogRing(io.BytesIO(b"one\\ntwo\\nthree\\n"), max_lines=2)
        >>> ring.join(1.0); list(ring.lines)
        ['two', 'three']
    """

    def __init__(self, pipe: IO[bytes], max_lines: int) -> None:
        self.lines: deque[str] = deque(maxlen=max_lines)
        self._thread = threading.Thread(target=self._drain, args=(pipe,), name="rocm_nb-log", daemon=True)
        self._thread.start()

    def _drain(self, pipe: IO[bytes]) -> None:
        for raw in iter(pipe.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the output to end (the child closed it)."""
        self._thread.join(timeout)


# -- a private folder of links a child reads ----------------------------------------------------


@dataclass(frozen=True)
class LinkFolder:
    """A private folder of symbolic links, ``name -> target``, that a child reads (a router's models).

    :meth:`make` creates it afresh (0700; links only: the targets are never
    copied, moved or changed) and :meth:`remove` deletes it, links and all,
    never what they point to. It lives in the run folder
    (:func:`rocm_nb._paths.runtime_root`), next to the run records.

    Example:
        >>> import tempfile
        >>> model = Path(tempfile.mkdtemp()) / "model.gguf"; model.touch()
        >>> folder = LinkFolder(model.parent / "router-x", (("a.gguf", model),))
        >>> folder.make(); [(p.name, p.resolve() == model) for p in folder.path.iterdir()]
        [('a.gguf', True)]
        >>> folder.remove(); folder.path.exists(), model.exists()
        (False, True)
    """

    path: Path
    links: tuple[tuple[str, Path], ...]

    def make(self) -> None:
        """Create the folder and its links (a leftover of an earlier start is replaced)."""
        self.remove()
        self.path.mkdir(mode=0o700)
        for name, target in self.links:
            (self.path / name).symlink_to(target)

    def remove(self) -> None:
        """Delete the folder and its links (nothing they point to). Idempotent."""
        shutil.rmtree(self.path, ignore_errors=True)


def _stale_links(data: Mapping[str, Any], run_dir: Path) -> LinkFolder | None:
    """The link folder a run record names, if it is one :func:`launch` would make: directly in the run folder."""
    named = data.get("links")
    if not isinstance(named, str):
        return None
    path = Path(named)
    return LinkFolder(path, ()) if path.parent == run_dir else None


# -- run records ------------------------------------------------------------------------------


def _create_time(pid: int) -> float | None:
    import psutil  # imported here: `import rocm_nb` stays cheap

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _executable(argv0: str, env: Mapping[str, str]) -> str:
    """The real path of the file ``argv0`` runs, looked up as ``subprocess`` does (the child's PATH)."""
    found = shutil.which(argv0, path=os.pathsep.join(os.get_exec_path(dict(env))))
    return os.path.realpath(found or argv0)


def _is_recorded(data: Mapping[str, Any]) -> bool:
    """True if the process the record names is the one it describes.

    Pid and start time, owner uid, executable, command line and leading its own
    process group (as :func:`launch` starts it) must all match: pid and start
    time are public, so they alone would let a record name any process.
    """
    import psutil

    pid = int(data["server_pid"])
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return (process.create_time() == data["server_created"]
                    and process.uids().real == os.getuid()
                    and process.exe() == data["exe"]
                    and process.cmdline() == list(data["argv"])
                    and os.getpgid(pid) == pid)
    except (psutil.Error, OSError):
        return False


@dataclass(frozen=True)
class Record:
    """One run record, checked against the live processes.

    ``data`` is what was written at launch (``server_pid``, ``owner_pid``,
    their start times, and whatever the launcher added such as ``model`` and
    ``port``); ``server_alive``/``owner_alive`` say whether the process with
    that pid *and* that start time still runs.

    Example:
        >>> Record(Path("1.json"), {}, server_alive=False, owner_alive=True).server_alive
        False
    """

    path: Path
    data: dict[str, Any]
    server_alive: bool
    owner_alive: bool


def read_records(environ: Mapping[str, str] | None = None) -> Iterator[Record]:
    """Every valid run record of this user, oldest name first.

    Records owned by another uid, and malformed ones (not a regular file,
    empty, not JSON, missing fields) are skipped and left alone, with a debug
    log line. ``server_alive`` holds only for the very process the record
    describes (see the module's decisions).

    Example:
        >>> list(read_records({"ROCM_NB_RUNTIME_DIR": "/nonexistent"}))
        []
    """
    run_dir = runtime_root(environ)
    try:
        paths = sorted(run_dir.glob("*.json")) if run_dir.is_dir() else []
    except OSError as exc:  # the folder is not ours to list
        _log.debug("run records in %s not read: %s", run_dir, exc)
        paths = []
    for path in paths:
        try:
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                _log.debug("run record %s ignored: not a regular file of uid %d", path, os.getuid())
                continue
            data = json.loads(path.read_text())
            server = _is_recorded(data)
            owner = _create_time(int(data["owner_pid"])) == data["owner_created"]
        except FileNotFoundError:
            continue  # its process ended and removed it meanwhile
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.debug("run record %s ignored: %r", path, exc)
            continue
        yield Record(path, data, server_alive=server, owner_alive=owner)


def running_records(environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Records of the llama-servers and RPC workers rocm_nb runs on this machine (any process).

    Example:
        >>> running_records({"ROCM_NB_RUNTIME_DIR": "/nonexistent"})
        []
    """
    return [record.data for record in read_records(environ) if record.server_alive]


def _left_of_group(data: Mapping[str, Any]) -> list[psutil.Process]:
    """The processes left in the group of a recorded server that is gone (a router's children still loading).

    Only when the recorded pid is free (a pid in use as a group id is never
    given to a new process, so a member of that group is one the server
    started), and only members that are this user's, run the recorded
    executable, are in the session and group the server led, and started
    after it.
    """
    import psutil

    leader = int(data["server_pid"])
    try:
        if psutil.Process(leader).status() != psutil.STATUS_ZOMBIE:
            return []  # the pid is in use again: that group is not this record's
    except psutil.NoSuchProcess:
        pass
    left = []
    for process in psutil.process_iter():
        try:
            with process.oneshot():
                if (os.getpgid(process.pid) == leader and os.getsid(process.pid) == leader
                        and process.pid != leader and process.uids().real == os.getuid()
                        and process.exe() == data["exe"] and process.create_time() >= data["server_created"]):
                    left.append(process)
        except (psutil.Error, OSError):
            continue
    return left


def reap_stale_servers(environ: Mapping[str, str] | None = None) -> list[int]:
    """Kill servers whose owning process is gone, and what is left of their groups; return their pids.

    Belt and braces for platforms or sandboxes where the parent-death signal
    does not apply, and for a router's children that are still loading when
    their router dies with its kernel (they watch their pipe from the router
    only once loaded). A process is only killed when it is exactly the one
    its record describes (:func:`read_records`), or a member of its group
    once it is gone (see :func:`_left_of_group`); a record whose process is
    gone or different is removed, with the link folder it names; one that
    is not this user's or is malformed is left alone. Never raises: cleanup
    must not stop a start.

    Example:
        >>> reap_stale_servers({"ROCM_NB_RUNTIME_DIR": "/nonexistent"})
        []
    """
    import psutil

    reaped: list[int] = []
    try:
        for record in read_records(environ):
            if record.owner_alive:
                continue
            pid = int(record.data["server_pid"])
            if record.server_alive:
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.killpg(pid, signal.SIGKILL)
                reaped.append(pid)
            for left in _left_of_group(record.data):
                with contextlib.suppress(psutil.Error):
                    left.kill()  # psutil checks it is still the process found (not a reused pid)
                    reaped.append(left.pid)
            links = _stale_links(record.data, record.path.parent)
            if links is not None:
                links.remove()
            record.path.unlink(missing_ok=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        _log.debug("stale-server cleanup stopped: %r", exc)
    return reaped


# -- one launched child -----------------------------------------------------------------------


@dataclass
class Child:
    """A launched child: its process, run record and output. What a finaliser needs, no owner.

    Example:
        >>> child = launch(["true"], {}, {"ROCM_NB_RUNTIME_DIR": "/tmp/rocm_nb-doctest"}, 10)  # doctest: +SKIP
        >>> child.stop()  # doctest: +SKIP
        <Escalation.EXITED: 'exited'>
    """

    proc: _Popen
    record: Path
    logs: LogRing
    links: LinkFolder | None = None
    stopped: Escalation | None = field(default=None)

    def stop(self, grace: float = 0.5, kill_wait: float = 5.0) -> Escalation:
        """Terminate the process group, close the output, remove the record and the link folder. Idempotent."""
        if self.stopped is not None:
            return self.stopped
        self.stopped = terminate(self.proc, grace=grace, kill_wait=kill_wait, group=True)
        self.logs.join(1.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.stopped is not Escalation.GAVE_UP:  # else: the next start's reaper tries again
            if self.links is not None:
                self.links.remove()
            self.record.unlink(missing_ok=True)
        return self.stopped


def launch(argv: Sequence[str], env: Mapping[str, str], environ: Mapping[str, str], log_lines: int,
           links: LinkFolder | None = None, **record: object) -> Child:
    """Start a child the rocm_nb way: own session, parent-death signal, drained output, a run record.

    ``env`` is the child's whole environment, ``environ`` says where the run
    records live (:func:`rocm_nb._paths.runtime_root`); ``record`` adds
    fields to the record, which also holds ``argv`` and the real path of the
    executable (``exe``): so never pass a secret in ``argv`` (it is in
    ``/proc/PID/cmdline`` for every local user anyway), pass it in ``env``.
    The run folder is 0700, the record 0600. A run folder that cannot be
    used is a :class:`~rocm_nb.errors.RuntimeDirError` before anything is
    spawned; a record that cannot be written (a full disk) is one after the
    child has been killed. ``links`` is made just before the spawn and goes
    with the child (:meth:`Child.stop`, or the reaper from the record).

    Example:
        >>> import os, sys, tempfile
        >>> child = launch([sys.executable, "-c", "print('hi')"], os.environ,
        ...                {"ROCM_NB_RUNTIME_DIR": tempfile.mkdtemp()}, 10)
        >>> child.proc.wait(10), child.stop(), child.logs.lines[-1], child.record.exists()
        (0, <Escalation.EXITED: 'exited'>, 'hi', False)
    """
    run_dir = private_folder(runtime_root(environ))  # before the spawn: a folder we cannot use leaks nothing
    try:
        if links is not None:
            links.make()
        proc = _launcher.popen(argv, env)
    except BaseException:
        if links is not None:
            links.remove()
        raise
    assert proc.stdout is not None
    try:  # the child is ours from here: any failure, Ctrl-C included, kills it before propagating
        path = _write_record(run_dir, proc.pid, {
            "owner_pid": os.getpid(),
            "owner_created": _create_time(os.getpid()),
            "server_pid": proc.pid,
            "server_created": _create_time(proc.pid),
            "exe": _executable(argv[0], env),
            "argv": list(argv),
            **({"links": str(links.path)} if links is not None else {}),
            **record,
        })
    except BaseException as exc:
        terminate(proc, group=True)
        proc.stdout.close()
        if links is not None:
            links.remove()
        if isinstance(exc, OSError):
            raise RuntimeDirError(f"cannot write a run record in {run_dir}: {exc.strerror or exc} (the process "
                                  "was stopped); free some space there, or set ROCM_NB_RUNTIME_DIR to a folder "
                                  "of your own") from exc
        raise
    return Child(proc, path, LogRing(proc.stdout, log_lines), links)


def _write_record(run_dir: Path, pid: int, data: Mapping[str, Any]) -> Path:
    """Write ``<pid>.json`` atomically (whole or absent: a reader never sees half a record), 0600."""
    return write_private_json(run_dir / f"{pid}.json", data)
