"""Find a working ``llama-server``: the argument, ``$ROCM_NB_LLAMA_SERVER``, the cache, then ``$PATH``.

Building one is :mod:`rocm_nb.binary._build`'s job (``rocm-nb server install``). The
cache holds one install per backend and kind of CPU::

    <cache_root()>/servers/
        sdist/llama_cpp_python-0.3.36.tar.gz     the pinned sources, fetched with pip once
        cpu-rpc-native-1a2b3c4d/                 one install: <backend>[-rpc][-rocwmma]-<variant>
            llama-server
            ggml-rpc-server                      only in -rpc installs
            manifest.json                        written last: a directory without it is ignored
        cpu-rpc-portable-x86-64-v3/              the portable build, where a native one failed
        build-cpu-rpc.log                        the log of the last build of that install
        .build-*/ .install-*/                    work in progress, never looked at

A cache install is used only on a CPU that has every feature its manifest
says the build assumed (``cpu_features``); installs made for another CPU, and
installs from before rocm_nb recorded features, are skipped and said so.
Native installs come before portable ones, newer before older. A cache holds
one install per backend (the backend is part of the name): ``find_server``
takes the install of the backend asked for (this machine's, for
``LocalModel``), and a CPU install where no GPU build is there; never a GPU
build the caller did not ask for.

An install another user could have planted or changed (its folder, manifest
or programs, or a folder above it up to the cache root, owned by someone
else or writable by others: :mod:`rocm_nb.binary._trust`) is never run: it
is skipped with a ``UserWarning`` that names the path and the fix.

Example:
    >>> binary = find_server()  # doctest: +SKIP
    >>> binary.source, binary.backend  # doctest: +SKIP
    ('cache', 'cpu')
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast, get_args

from rocm_nb._paths import cache_root
from rocm_nb.binary._trust import Untrusted, vet_install
from rocm_nb.errors import BinaryNotFound
from rocm_nb.hardware import Backend, detect
from rocm_nb.hardware._cpu import missing, this_cpu

__all__ = ["LLAMA_CPP_PYTHON_SHA256", "LLAMA_CPP_PYTHON_VERSION", "ServerBinary", "find_server"]

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The pinned ``llama-cpp-python`` sdist whose ``vendor/llama.cpp`` is built.

Example:
    >>> LLAMA_CPP_PYTHON_VERSION
    '0.3.36'
"""

LLAMA_CPP_PYTHON_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
"""The SHA-256 of that sdist as PyPI publishes it: pip checks it when it downloads, rocm_nb before every build.

Bump it with :data:`LLAMA_CPP_PYTHON_VERSION` (PyPI's file page lists it,
or ``pip download --no-deps --no-binary :all: llama-cpp-python==V`` then
``sha256sum``).

Example:
    >>> len(LLAMA_CPP_PYTHON_SHA256)
    64
"""

_ENV_VAR = "ROCM_NB_LLAMA_SERVER"
SERVER = "llama-server"
RPC_SERVER = "ggml-rpc-server"
MANIFEST = "manifest.json"
_PROBE_TIMEOUT = 15.0
_DEVICE_PREFIXES: tuple[tuple[str, Backend], ...] = (("ROCm", "rocm"), ("CUDA", "cuda"), ("Vulkan", "vulkan"))

# (path, mtime_ns, flag and device visibility) -> what the binary printed; asked once per process.
_probed: dict[tuple[str, int, str], str] = {}


@dataclass(frozen=True)
class ServerBinary:
    """A working ``llama-server`` and where it came from.

    ``source`` is ``"argument"``, ``"ROCM_NB_LLAMA_SERVER"``, ``"cache"`` or
    ``"PATH"``; ``rpc`` says whether the RPC worker sits beside it.

    Example:
        >>> b = ServerBinary(Path("/opt/llama/llama-server"), "0.5.0", "cpu", "PATH", rpc=True)
        >>> b.rpc_path
        PosixPath('/opt/llama/ggml-rpc-server')
    """

    path: Path
    version: str
    backend: Backend
    source: str
    rpc: bool

    @property
    def rpc_path(self) -> Path | None:
        """The RPC worker (``ggml-rpc-server``) built alongside, if any.

        Example:
            >>> ServerBinary(Path("/x/llama-server"), "1", "cpu", "PATH", rpc=False).rpc_path is None
            True
        """
        return self.path.with_name(RPC_SERVER) if self.rpc else None


class Unusable(Exception):
    """A candidate binary that cannot be used; the message says why."""


class Install(NamedTuple):
    """A finished cache install, as its manifest describes it."""

    directory: Path
    backend: Backend
    rpc: bool
    built_at: str
    flags: tuple[str, ...]
    portable: bool


def find_server(
    server: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None,
    cpu: frozenset[str] | None = None, backend: Backend | None = None, strict: bool = False,
) -> ServerBinary:
    """Return a working ``llama-server``: the argument, ``$ROCM_NB_LLAMA_SERVER``, the cache, then ``$PATH``.

    A binary named by the argument or the environment variable must work: if it
    does not, :class:`BinaryNotFound` says why rather than falling back. Cache
    installs built for CPU features this machine lacks are skipped (``cpu``,
    default this CPU's features, is a seam for tests). From the cache comes
    the install for ``backend`` (default: this machine's,
    :func:`~rocm_nb.hardware.detect`), else (unless ``strict``: the backend
    was asked for by name) a CPU install; from ``$PATH``, any build unless
    ``strict``.

    Example:
        >>> find_server("/opt/llama.cpp/build/bin/llama-server").source  # doctest: +SKIP
        'argument'
    """
    env = os.environ if environ is None else environ
    if server is not None:
        return _explicit(Path(server), "argument", "the server= argument", env)
    if env.get(_ENV_VAR):
        return _explicit(Path(env[_ENV_VAR]).expanduser(), _ENV_VAR, f"${_ENV_VAR}", env)

    tried = ["the server= argument: not given", f"${_ENV_VAR}: not set"]
    servers = cache_root(env) / "servers"
    usable, skipped = scan(servers, this_cpu() if cpu is None else cpu)
    tried += [f"the rocm_nb cache: {reason}" for reason in skipped]
    backend = backend or detect(environ=env).backend
    wanted = (backend,) if strict or backend == "cpu" else (backend, "cpu")
    others = sorted({install.backend for install in usable} - set(wanted))
    if others:
        tried.append(f"the rocm_nb cache: {', '.join(others)} install(s) not used: the {backend} backend was asked for")
    usable = sorted((i for i in usable if i.backend in wanted), key=lambda install: wanted.index(install.backend))
    for install in usable:
        try:
            return from_install(install, env)
        except Unusable as exc:
            tried.append(f"the rocm_nb cache: {install.directory / SERVER} {exc}")
    if not usable and not skipped:
        tried.append(f"the rocm_nb cache: nothing installed in {servers}")

    on_path = shutil.which(SERVER, path=env.get("PATH", ""))
    if on_path is None:
        tried.append("$PATH: no llama-server on it")
    else:
        try:
            found = _probe(Path(on_path), "PATH", env)
            if found.backend in wanted or not strict:
                return found
            tried.append(f"$PATH: {on_path} is a {found.backend} build, not {' or '.join(wanted)}")
        except Unusable as exc:
            tried.append(f"$PATH: {on_path} {exc}")
    command = "rocm-nb server install" + ("" if backend == "cpu" and not strict else f" --backend {backend}")
    raise BinaryNotFound(
        f"No usable llama-server{'' if backend == 'cpu' else f' for the {backend} backend'} was found. Tried:\n"
        + "".join(f"  - {line}\n" for line in tried)
        + f"Next step: run `{command}` (or rocm_nb.install_server() in Python) to build one for "
        f"this machine, or set {_ENV_VAR}=/path/to/llama-server to use one you already have."
    )


def _explicit(path: Path, source: str, label: str, env: Mapping[str, str]) -> ServerBinary:
    """The binary the user named: it works, or :class:`BinaryNotFound` says why."""
    try:
        return _probe(path, source, env)
    except Unusable as exc:
        raise BinaryNotFound(
            f"{label} names {path.absolute()}, which {exc}.\nNext step: point {label} at a working llama-server, "
            f"or {'unset' if source == _ENV_VAR else 'leave out'} {label} to use the one built by "
            "`rocm-nb server install`."
        ) from None


def _probe(path: Path, source: str, env: Mapping[str, str]) -> ServerBinary:
    """A binary from outside the cache: its backend is what ``--list-devices`` shows."""
    path = path.absolute()
    rpc_worker = path.with_name(RPC_SERVER)
    rpc = rpc_worker.is_file() and os.access(rpc_worker, os.X_OK)
    return ServerBinary(path, version_of(path, env), _device_backend(path, env), source, rpc)


def from_install(install: Install, env: Mapping[str, str]) -> ServerBinary:
    """A cache install: checked with ``--version``, its backend read from the manifest."""
    path = install.directory / SERVER
    return ServerBinary(path, version_of(path, env), install.backend, "cache", install.rpc)


def scan(servers: Path, cpu: frozenset[str]) -> tuple[list[Install], list[str]]:
    """The finished installs usable on a CPU with features ``cpu`` (native first, then newest first), and why
    each other install was skipped.

    Example:
        >>> scan(Path("/nonexistent"), frozenset())
        ([], [])
    """
    found, skipped = [], []
    for manifest in servers.glob(f"[!.]*/{MANIFEST}"):
        distrust = vet_install(manifest.parent, (MANIFEST, SERVER, RPC_SERVER), root=servers.parent)
        if distrust is not None:
            skipped.append(_distrusted(manifest.parent, distrust))
            warnings.warn(skipped[-1], UserWarning, stacklevel=3)
            continue
        try:
            data = json.loads(manifest.read_text())
            if data["backend"] not in get_args(Backend):
                continue
            if "cpu_features" not in data:
                skipped.append(f"{manifest.parent} was built before rocm_nb recorded the CPU features a build "
                               "assumes (and before builds were AMX-safe and smoke-tested): not used")
                continue
            lacking = missing(map(str, data["cpu_features"]), cpu)
            if lacking:
                skipped.append(f"{manifest.parent} was built for CPU features this machine lacks "
                               f"({', '.join(sorted(lacking))}): not used")
                continue
            found.append(Install(manifest.parent, cast(Backend, data["backend"]), bool(data["rpc"]),
                                 str(data["built_at"]), tuple(map(str, data.get("flags", ()))),
                                 data.get("variant") == "portable"))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    found.sort(key=lambda install: install.built_at, reverse=True)
    found.sort(key=lambda install: install.portable)  # stable: native first, each newest first
    return found, skipped


def _distrusted(directory: Path, reason: Untrusted) -> str:
    """Why an install was skipped for its owner or mode, and how to use it (or another) after all."""
    return (f"{directory} was not used: {reason}, so another user could have put or changed the programs in it. "
            f"If you trust what is there: {reason.fix}; or build your own in a cache of yours: "
            "ROCM_NB_CACHE=~/.cache/rocm_nb-own rocm-nb server install")


def version_of(path: Path, env: Mapping[str, str]) -> str:
    """What ``llama-server --version`` reports, e.g. ``0.5.0-dev (build 1, commit 0c1e570)``."""
    output = _ask(path, "--version", env)
    for line in output.splitlines():
        if line.startswith("version:"):
            return line.removeprefix("version:").strip()
    first = repr(output.strip().splitlines()[0][:80]) if output.strip() else "nothing"
    raise Unusable(f"does not look like llama-server: `--version` printed {first}")


def _device_backend(path: Path, env: Mapping[str, str]) -> Backend:
    """The backend of a build from its ``--list-devices`` (``ROCm0: ...`` → rocm); ``cpu`` if none.

    A Vulkan build lists no device on a machine whose only Vulkan device is a
    software one (llama.cpp ignores those unless ``GGML_VK_VISIBLE_DEVICES``
    names them), so a build that lists none is asked again with device 0
    made visible: a Vulkan build then shows it, or says the index is invalid.
    """
    for extra in ({}, {"GGML_VK_VISIBLE_DEVICES": "0"}):
        try:
            output = _ask(path, "--list-devices", {**env, **extra})
        except Unusable:
            return "cpu"
        for line in output.splitlines():
            for prefix, backend in _DEVICE_PREFIXES:
                if line.strip().startswith(prefix):
                    return backend
        if "Vulkan device index" in output:
            return "vulkan"
    return "cpu"


def _ask(path: Path, flag: str, env: Mapping[str, str]) -> str:
    """Run ``path flag`` once per process (per binary, mtime and device visibility); return stdout and stderr."""
    if not path.exists():
        raise Unusable("does not exist")
    if path.is_dir():
        raise Unusable("is a directory; name the llama-server program inside it")
    if not os.access(path, os.X_OK):
        raise Unusable(f"is not executable (chmod +x {path})")
    key = (str(path), path.stat().st_mtime_ns, f"{flag} {env.get('GGML_VK_VISIBLE_DEVICES', '')}")
    if key not in _probed:
        try:
            done = subprocess.run([str(path), flag], capture_output=True, text=True, errors="replace",
                                  timeout=_PROBE_TIMEOUT, env=dict(env), stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise Unusable(f"did not answer `{flag}` within {_PROBE_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise Unusable(f"could not be run ({exc.strerror or exc})") from None
        _probed[key] = done.stdout + done.stderr
    return _probed[key]
