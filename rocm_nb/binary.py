"""Find ``llama-server``, or build it for this machine from pinned llama.cpp sources.

:func:`find_server` looks, in order, at the ``server=`` argument,
``$ROCM_NB_LLAMA_SERVER``, the rocm_nb cache and ``$PATH``.
:func:`install_server` builds llama.cpp's server from the sources carried by the
``llama-cpp-python`` sdist into the cache::

    <cache_root()>/servers/
        sdist/llama_cpp_python-0.3.36.tar.gz   the pinned sources, fetched with pip once
        cpu-rpc/                               one install: <backend>[-rpc][-rocwmma]
            llama-server
            ggml-rpc-server                    only in -rpc installs
            manifest.json                      written last: a directory without it is ignored
        build-cpu-rpc.log                      the log of the last build of that install
        .build-*/ .install-*/                  work in progress, never looked at

An install is assembled in a hidden directory and renamed into place, so a
half-built binary is never picked up.

Example:
    >>> binary = find_server()  # doctest: +SKIP
    >>> binary.source, binary.backend  # doctest: +SKIP
    ('cache', 'cpu')
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast, get_args

if TYPE_CHECKING:
    from tqdm import tqdm

from rocm_nb._paths import cache_root
from rocm_nb.errors import BinaryNotFound, BuildError
from rocm_nb.hardware import Backend, Hardware, detect

__all__ = [
    "LLAMA_CPP_PYTHON_VERSION",
    "ROCWMMA_FATTN_TARGETS",
    "ServerBinary",
    "build_options",
    "find_server",
    "install_server",
    "rocwmma_fattn_supported",
]

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The pinned ``llama-cpp-python`` sdist whose ``vendor/llama.cpp`` is built.

Example:
    >>> LLAMA_CPP_PYTHON_VERSION
    '0.3.36'
"""

_ENV_VAR = "ROCM_NB_LLAMA_SERVER"
_SERVER = "llama-server"
_RPC_SERVER = "ggml-rpc-server"
_MANIFEST = "manifest.json"
_PROBE_TIMEOUT = 15.0
_TAIL_LINES = 40
_INSTALL_HINT = "apt-get install cmake g++ ninja-build"
_DEVICE_PREFIXES: tuple[tuple[str, Backend], ...] = (("ROCm", "rocm"), ("CUDA", "cuda"), ("Vulkan", "vulkan"))
_BACKEND_FLAGS: dict[Backend, tuple[str, ...]] = {
    "rocm": ("-DGGML_HIP=ON",),
    "cuda": ("-DGGML_CUDA=ON",),
    "vulkan": ("-DGGML_VULKAN=ON",),
    "cpu": (),
}
_BACKEND_HINTS: dict[Backend, str] = {
    "rocm": "check that ROCm with the HIP SDK is installed (hipconfig, hipcc, rocminfo)",
    "cuda": "check that the CUDA toolkit (nvcc) matching your driver is installed",
    "vulkan": "check that the Vulkan SDK is installed (libvulkan-dev, glslc)",
    "cpu": f"check that cmake and a C++17 compiler are installed ({_INSTALL_HINT})",
}
_ROCWMMA_OPTION = "GGML_HIP_ROCWMMA_FATTN"
_ROCWMMA_FLAG = f"-D{_ROCWMMA_OPTION}=ON"
ROCWMMA_FATTN_TARGETS = ("gfx11*", "gfx12*", "gfx908", "gfx90a", "gfx942", "gfx950")
"""GPUs with the matrix cores rocWMMA drives: RDNA3 and later (gfx11xx, gfx12xx) and CDNA 1 to 4.

Example:
    >>> rocwmma_fattn_supported(["gfx1100"]), rocwmma_fattn_supported(["gfx1030"])
    (True, False)
"""
_PROGRESS = re.compile(r"^\[\s*(\d+)(?:/(\d+)|%)\]")  # ninja "[12/218]" or make "[ 45%]"

# (path, mtime_ns, flag) -> what the binary printed; a binary is asked once per process.
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
        return self.path.with_name(_RPC_SERVER) if self.rpc else None


class _Unusable(Exception):
    """A candidate binary that cannot be used; the message says why."""


class _Install(NamedTuple):
    directory: Path
    backend: Backend
    rpc: bool
    built_at: str
    flags: tuple[str, ...]


def find_server(
    server: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> ServerBinary:
    """Return a working ``llama-server``: the argument, ``$ROCM_NB_LLAMA_SERVER``, the cache, then ``$PATH``.

    A binary named by the argument or the environment variable must work: if it
    does not, :class:`BinaryNotFound` says why rather than falling back.

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
    installs = _installs(servers)
    for install in installs:
        try:
            return _from_install(install, env)
        except _Unusable as exc:
            tried.append(f"the rocm_nb cache: {install.directory / _SERVER} {exc}")
    if not installs:
        tried.append(f"the rocm_nb cache: nothing installed in {servers}")

    on_path = shutil.which(_SERVER, path=env.get("PATH", ""))
    if on_path is None:
        tried.append("$PATH: no llama-server on it")
    else:
        try:
            return _probe(Path(on_path), "PATH", env)
        except _Unusable as exc:
            tried.append(f"$PATH: {on_path} {exc}")
    raise BinaryNotFound(
        "No usable llama-server was found. Tried:\n"
        + "".join(f"  - {line}\n" for line in tried)
        + "Next step: run `rocm-nb server install` (or rocm_nb.install_server() in Python) to build one for "
        f"this machine, or set {_ENV_VAR}=/path/to/llama-server to use one you already have."
    )


def install_server(
    backend: Backend | None = None,
    *,
    rpc: bool = False,
    force: bool = False,
    jobs: int | None = None,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
    source_dir: Path | None = None,
    rocwmma_fattn: bool = False,
    hardware: Hardware | None = None,
) -> ServerBinary:
    """Build ``llama-server`` for ``backend`` (default: this machine's) into the cache and return it.

    Nothing is built when the cache already has a working install for that
    backend (with the RPC worker if ``rpc``, with rocWMMA if ``rocwmma_fattn``),
    unless ``force``. ROCm builds compile for the GPUs of ``hardware`` (default:
    :func:`~rocm_nb.hardware.detect`), and for the target an
    ``HSA_OVERRIDE_GFX_VERSION`` would run them as. ``rocwmma_fattn`` adds
    ``-DGGML_HIP_ROCWMMA_FATTN=ON`` (rocWMMA flash attention; ROCm on
    :data:`ROCWMMA_FATTN_TARGETS` only, and only with llama.cpp sources that
    still have that option). The sources are
    the ``llama-cpp-python`` sdist pinned by :data:`LLAMA_CPP_PYTHON_VERSION`,
    fetched with pip; ``source_dir`` builds another llama.cpp checkout instead.
    The build log stays in the cache; failures raise :class:`BuildError`.

    Example:
        >>> install_server("cpu", rpc=True).rpc_path  # doctest: +SKIP
        PosixPath('/home/me/.cache/rocm_nb/servers/cpu-rpc/ggml-rpc-server')
    """
    env = os.environ if environ is None else environ
    gfx_targets: tuple[str, ...] = ()
    if backend is None or backend == "rocm":
        hardware = hardware or detect(environ=env)
        backend = backend or hardware.backend
        gfx_targets = hardware.build_targets
    flags = _cmake_flags(backend, rpc, gfx_targets, env, rocwmma_fattn=rocwmma_fattn)
    servers = cache_root(env) / "servers"
    if not force:
        for install in _installs(servers):
            if install.backend == backend and (install.rpc or not rpc) and (
                not rocwmma_fattn or _ROCWMMA_FLAG in install.flags
            ):
                try:
                    return _from_install(install, env)
                except _Unusable:
                    continue

    name = backend + ("-rpc" if rpc else "") + ("-rocwmma" if rocwmma_fattn else "")
    build_env = {**env, **_hip_env(env)} if backend == "rocm" else dict(env)
    cmake = _require_tools(flags, build_env)
    servers.mkdir(parents=True, exist_ok=True)
    log = servers / f"build-{name}.log"
    log.write_text("")
    targets = [_SERVER, _RPC_SERVER] if rpc else [_SERVER]
    from tqdm.auto import tqdm  # imported here: `import rocm_nb` stays cheap

    try:
        with tempfile.TemporaryDirectory(prefix=f".build-{name}-", dir=servers) as work, tqdm(
            desc="llama.cpp sources", disable=not progress, leave=False,
            mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not 200
        ) as bar:
            src = source_dir or _sources(servers, Path(work), log, env)
            if rocwmma_fattn:
                _require_option(src, _ROCWMMA_OPTION, flags)
            bar.set_description(f"configuring llama-server ({name})")
            _stream("configuring with cmake", [cmake, "-S", str(src), "-B", f"{work}/build", *flags], log, build_env)
            bar.set_description(f"building llama-server ({name})")
            build = [cmake, "--build", f"{work}/build", "--target", *targets, "-j", str(jobs or os.cpu_count() or 1)]
            _stream("compiling", build, log, build_env, bar)
            built = [Path(work, "build", "bin", target) for target in targets]
            return _install(built, servers / name, backend, flags, rpc, env)
    except _StepFailed as exc:
        raise _build_error(backend, flags, log, exc.step, f"exit status {exc.returncode}") from None
    except _Unusable as exc:
        raise _build_error(backend, flags, log, "checking the result", f"the new llama-server {exc}") from None


def _explicit(path: Path, source: str, label: str, env: Mapping[str, str]) -> ServerBinary:
    """The binary the user named: it works, or :class:`BinaryNotFound` says why."""
    try:
        return _probe(path, source, env)
    except _Unusable as exc:
        raise BinaryNotFound(
            f"{label} names {path.absolute()}, which {exc}.\nNext step: point {label} at a working llama-server, "
            f"or {'unset' if source == _ENV_VAR else 'leave out'} {label} to use the one built by "
            "`rocm-nb server install`."
        ) from None


def _probe(path: Path, source: str, env: Mapping[str, str]) -> ServerBinary:
    """A binary from outside the cache: its backend is what ``--list-devices`` shows."""
    path = path.absolute()
    rpc_worker = path.with_name(_RPC_SERVER)
    rpc = rpc_worker.is_file() and os.access(rpc_worker, os.X_OK)
    return ServerBinary(path, _version(path, env), _device_backend(path, env), source, rpc)


def _from_install(install: _Install, env: Mapping[str, str]) -> ServerBinary:
    """A cache install: checked with ``--version``, its backend read from the manifest."""
    path = install.directory / _SERVER
    return ServerBinary(path, _version(path, env), install.backend, "cache", install.rpc)


def _installs(servers: Path) -> list[_Install]:
    """Finished installs in the cache (those with a valid manifest), newest first."""
    found = []
    for manifest in servers.glob(f"[!.]*/{_MANIFEST}"):
        try:
            data = json.loads(manifest.read_text())
            if data["backend"] in get_args(Backend):
                found.append(_Install(manifest.parent, cast(Backend, data["backend"]), bool(data["rpc"]),
                                      str(data["built_at"]), tuple(map(str, data.get("flags", ())))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda install: install.built_at, reverse=True)


def _version(path: Path, env: Mapping[str, str]) -> str:
    """What ``llama-server --version`` reports, e.g. ``0.5.0-dev (build 1, commit 0c1e570)``."""
    output = _ask(path, "--version", env)
    for line in output.splitlines():
        if line.startswith("version:"):
            return line.removeprefix("version:").strip()
    first = repr(output.strip().splitlines()[0][:80]) if output.strip() else "nothing"
    raise _Unusable(f"does not look like llama-server: `--version` printed {first}")


def _device_backend(path: Path, env: Mapping[str, str]) -> Backend:
    """The backend of a build from its ``--list-devices`` (``ROCm0: ...`` → rocm); ``cpu`` if none."""
    try:
        output = _ask(path, "--list-devices", env)
    except _Unusable:
        return "cpu"
    for line in output.splitlines():
        for prefix, backend in _DEVICE_PREFIXES:
            if line.strip().startswith(prefix):
                return backend
    return "cpu"


def _ask(path: Path, flag: str, env: Mapping[str, str]) -> str:
    """Run ``path flag`` once per process (per binary and mtime); return stdout and stderr."""
    if not path.exists():
        raise _Unusable("does not exist")
    if path.is_dir():
        raise _Unusable("is a directory; name the llama-server program inside it")
    if not os.access(path, os.X_OK):
        raise _Unusable(f"is not executable (chmod +x {path})")
    key = (str(path), path.stat().st_mtime_ns, flag)
    if key not in _probed:
        try:
            done = subprocess.run([str(path), flag], capture_output=True, text=True, errors="replace",
                                  timeout=_PROBE_TIMEOUT, env=dict(env), stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise _Unusable(f"did not answer `{flag}` within {_PROBE_TIMEOUT:.0f} s") from None
        except OSError as exc:
            raise _Unusable(f"could not be run ({exc.strerror or exc})") from None
        _probed[key] = done.stdout + done.stderr
    return _probed[key]


def rocwmma_fattn_supported(gfx_targets: Sequence[str]) -> bool:
    """Whether every one of these (at least one) gfx targets can use rocWMMA flash attention.

    Example:
        >>> rocwmma_fattn_supported(["gfx942"]), rocwmma_fattn_supported(["gfx1201", "gfx1032"])
        (True, False)
    """
    return bool(gfx_targets) and all(
        any(fnmatch.fnmatchcase(t.split(":")[0], pattern) for pattern in ROCWMMA_FATTN_TARGETS) for t in gfx_targets
    )


def build_options(hardware: Hardware) -> list[str]:
    """Optional build flags that suit this machine's GPUs, as advice lines for ``rocm-nb doctor``.

    Example:
        >>> build_options(Hardware("cpu", (), None, ()))
        []
    """
    if hardware.backend != "rocm" or not rocwmma_fattn_supported(hardware.gfx_targets):
        return []
    return [
        f"{', '.join(hardware.gfx_targets)} can use rocWMMA flash attention: rocm-nb server install --rocwmma-fattn "
        f"(needs rocWMMA, e.g. the rocwmma-dev package, and llama.cpp sources with {_ROCWMMA_OPTION}; "
        "the build checks them first)"
    ]


def _cmake_flags(
    backend: Backend, rpc: bool, gfx_targets: Sequence[str], env: Mapping[str, str], *, rocwmma_fattn: bool = False
) -> list[str]:
    """The configure flags: a static, native, server-only build without HTTPS, plus the backend's."""
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_OPENSSL=OFF",
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", *_BACKEND_FLAGS[backend]]
    if backend == "rocm" and gfx_targets:
        flags.append(f"-DGPU_TARGETS={';'.join(gfx_targets)}")
    if rocwmma_fattn:
        if backend != "rocm" or not rocwmma_fattn_supported(gfx_targets):
            what = f"GPU targets {', '.join(gfx_targets) or '(none found)'}" if backend == "rocm" else f"{backend}"
            raise BuildError(
                f"rocWMMA flash attention (-D{_ROCWMMA_OPTION}=ON) is for the ROCm backend on RDNA3 or later "
                f"(gfx11xx, gfx12xx) and CDNA (gfx908, gfx90a, gfx942, gfx950) GPUs; this build is for {what}.\n"
                "Next step: leave out --rocwmma-fattn (flash attention works without it).",
                flags=flags,
            )
        flags.append(_ROCWMMA_FLAG)
    if rpc:
        flags.append("-DGGML_RPC=ON")
    if shutil.which("ninja", path=env.get("PATH", "")):
        flags += ["-G", "Ninja"]
    return flags


def _require_option(src: Path, option: str, flags: Sequence[str]) -> None:
    """Raise :class:`BuildError` unless the llama.cpp sources in ``src`` declare the CMake ``option``."""
    declared = src / "ggml" / "CMakeLists.txt"
    text = declared.read_text(errors="replace") if declared.is_file() else ""
    if not re.search(rf"option\(\s*{option}\b", text):
        raise BuildError(
            f"The llama.cpp sources in {src} have no {option} option (none in {declared}): "
            f"-D{option}=ON would be ignored (llama.cpp has since removed its rocWMMA flash-attention kernel; "
            "its flash attention runs on these GPUs without it).\n"
            "Next step: leave out --rocwmma-fattn, or build a llama.cpp checkout that has the "
            "option with install_server(..., rocwmma_fattn=True, source_dir=Path('/path/to/llama.cpp')).",
            flags=flags,
        )


def _hip_env(env: Mapping[str, str]) -> dict[str, str]:
    """``HIPCXX`` and ``HIP_PATH`` from ``hipconfig``, as llama.cpp's docs/build.md does it."""
    hipconfig = shutil.which("hipconfig", path=env.get("PATH", ""))
    if hipconfig is None or "HIPCXX" in env:
        return {}
    ask = [subprocess.run([hipconfig, flag], capture_output=True, text=True, check=False).stdout.strip()
           for flag in ("-l", "-R")]
    return {"HIPCXX": f"{ask[0]}/clang", "HIP_PATH": ask[1]} if all(ask) else {}


def _require_tools(flags: Sequence[str], env: Mapping[str, str]) -> str:
    """Return the path of cmake, or raise :class:`BuildError` naming what is missing and how to get it."""
    path = env.get("PATH", "")
    compilers = [env["CXX"]] if env.get("CXX") else ["c++", "g++", "clang++"]
    cmake = shutil.which("cmake", path=path)
    has_compiler = any(shutil.which(compiler, path=path) for compiler in compilers)
    if cmake and has_compiler:
        return cmake
    missing = [] if cmake else ["cmake"]
    if not has_compiler:
        missing.append(f"a C++ compiler (tried {', '.join(compilers)})")
    raise BuildError(
        f"Cannot build llama-server: {' and '.join(missing)} not found on $PATH.\n"
        f"Next step: install the build tools, e.g. `sudo {_INSTALL_HINT}`, then run `rocm-nb server install` again.",
        flags=flags,
    )


def _sources(servers: Path, work: Path, log: Path, env: Mapping[str, str]) -> Path:
    """Extract ``vendor/llama.cpp`` of the pinned sdist (downloaded with pip if missing) into ``work``."""
    sdist_dir = servers / "sdist"
    pattern = f"llama[_-]cpp[_-]python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not any(sdist_dir.glob(pattern)):
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(sdist_dir)]
        _stream("downloading the llama-cpp-python sdist with pip", pip, log, env)
    sdist = next(sdist_dir.glob(pattern))
    with tarfile.open(sdist) as tar:
        vendored = [member for member in tar.getmembers() if "/vendor/llama.cpp/" in member.name]
        tar.extractall(work / "src", members=vendored, filter="data")
    return next((work / "src").glob("*/vendor/llama.cpp/CMakeLists.txt")).parent


class _StepFailed(Exception):
    """A build step that exited with an error; :func:`install_server` turns it into a :class:`BuildError`."""

    def __init__(self, step: str, returncode: int) -> None:
        super().__init__(step, returncode)
        self.step, self.returncode = step, returncode


def _build_error(backend: Backend, flags: Sequence[str], log: Path, step: str, problem: str) -> BuildError:
    """The error for a failed build: the step, the flags, the log and its last lines, what to do next."""
    tail = log.read_text(errors="replace").splitlines()[-_TAIL_LINES:]
    other = "" if backend == "cpu" else ", or build for the CPU: rocm-nb server install --backend cpu"
    return BuildError(
        f"Building llama-server ({backend}) failed while {step}: {problem}.\n"
        f"  cmake flags: {' '.join(flags)}\n"
        f"  full log: {log}\n"
        "  last lines of the log:\n" + "".join(f"    {line}\n" for line in tail[-15:])
        + f"Next step: read the errors above; {_BACKEND_HINTS[backend]}{other}.",
        flags=flags,
        log_tail="\n".join(tail),
    )


def _stream(step: str, cmd: Sequence[str], log: Path, env: Mapping[str, str], bar: tqdm[Any] | None = None) -> None:
    """Run ``cmd``, appending its output to ``log`` and moving ``bar`` along ninja's ``[n/N]`` lines."""
    with log.open("a", buffering=1) as out:  # line-buffered, so the log can be followed live
        out.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", env=dict(env), start_new_session=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.write(line)
                match = _PROGRESS.match(line)
                if bar is not None and match:
                    bar.total = int(match[2] or 100)
                    bar.update(int(match[1]) - bar.n)  # drawn at most every mininterval, unlike refresh()
        except BaseException:  # an interrupt: stop the build rather than leave it running
            _stop(proc)
            raise
        finally:
            proc.stdout.close()
            proc.wait()
    if proc.returncode != 0:
        raise _StepFailed(step, proc.returncode)


def _stop(proc: subprocess.Popen[str]) -> None:
    """Stop a build tree: SIGTERM to its session, which ninja passes on to the compilers it runs."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _install(built: Sequence[Path], final: Path, backend: Backend, flags: Sequence[str], rpc: bool,
             env: Mapping[str, str]) -> ServerBinary:
    """Copy the binaries and then the manifest into a hidden directory, and rename it to ``final``."""
    staging = Path(tempfile.mkdtemp(prefix=f".install-{final.name}-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; an install is as readable as the rest of the cache
    try:
        for binary in built:
            shutil.copy2(binary, staging / binary.name)
        version = _version(staging / _SERVER, env)
        manifest = {"version": version, "backend": backend, "flags": list(flags), "rpc": rpc,
                    "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION}
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            final.rename(old / final.name)
            staging.rename(final)
            shutil.rmtree(old)
        else:
            staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ServerBinary(final / _SERVER, version, backend, "cache", rpc)
