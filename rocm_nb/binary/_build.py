"""Build ``llama-server`` from the pinned llama.cpp sources, prove it, and install it into the cache.

Every build is proven before it is installed: the staged binary loads a tiny
model and must decode the answer known in advance (:mod:`rocm_nb.binary._smoke`).
Only then is it renamed into the cache, so a crashing or wrong build is
never picked up, and a failure leaves the cache as it was.

**Which build.** The first try is *native* (``-DGGML_NATIVE=ON``: every
instruction set of this CPU). If it fails its smoke test, a *portable*
build follows (``GGML_NATIVE=OFF`` with AVX2/FMA/F16C where the CPU has
them, else SSE4.2 alone), and the progress output and the manifest say which
build was kept and why. ``portable=True`` builds only the portable one.

**No AMX, whatever the CPU.** At the pinned llama.cpp, ggml's AMX path (compiled
when ``-march=native`` defines ``__AMX_INT8__`` on Sapphire/Emerald/Granite
Rapids) segfaults in ``ggml_backend_amx_mul_mat`` on the first compute:
ggml-org/llama.cpp#20824 (open), ollama/ollama#17205. Native x86 builds add
``-mno-amx-tile -mno-amx-int8 -mno-amx-bf16`` (GCC lets explicit ``-mno-*``
win over ``-march=native`` whatever their order) and portable builds leave the
``GGML_AMX_*`` options off. After a llama.cpp bump, drop :data:`NO_AMX` only
once a build on an AMX CPU passes the smoke test and the test suite.

**One cache, many CPUs.** Each install records the CPU features its build
assumed (:mod:`rocm_nb.hardware._cpu`) and is named after them, so a cache shared by
machines with different CPUs holds one install per kind and a binary is
never run on a CPU that lacks what it was built for
(:func:`rocm_nb.binary.find_server` skips such installs). Why not one portable
build with ``GGML_BACKEND_DL`` + ``GGML_CPU_ALL_VARIANTS``: it compiles the
CPU backend 14 times on x86 (benchmarks/README.md has the measurement),
which would multiply the first setup on a 2-core machine, while a native
build per CPU kind costs one build on each kind of machine that shares the
cache.

Example:
    >>> [variant.name for variant in variants("cpu", frozenset({"avx2", "fma", "f16c", "avx", "bmi2"}))]
    ['native', 'portable']
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

from rocm_nb._paths import cache_root
from rocm_nb.binary import (
    LLAMA_CPP_PYTHON_SHA256,
    LLAMA_CPP_PYTHON_VERSION,
    MANIFEST,
    RPC_SERVER,
    SERVER,
    ServerBinary,
    Unusable,
    from_install,
    scan,
    version_of,
)
from rocm_nb.binary._rocwmma import ROCWMMA_FLAG, require_option, rocwmma_flag
from rocm_nb.binary._smoke import SmokeResult, smoke_test
from rocm_nb.binary._trust import untrusted
from rocm_nb.binary._vulkan_sdk import find_vulkan_sdk
from rocm_nb.errors import BuildError, describe_exit
from rocm_nb.hardware import Backend, Hardware, detect
from rocm_nb.hardware._cpu import AMX_FEATURES, this_cpu
from rocm_nb.hardware._hsa import build_targets, server_env

__all__ = ["NO_AMX", "BuildVariant", "install_server", "variants"]

NO_AMX = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
"""Compiler flags that keep ggml's AMX path out of native x86 builds (llama.cpp#20824)."""

_TAIL_LINES = 40
_INSTALL_HINT = "apt-get install cmake g++ ninja-build"
_BACKEND_FLAGS: dict[Backend, tuple[str, ...]] = {
    "rocm": ("-DGGML_HIP=ON",),
    "cuda": ("-DGGML_CUDA=ON",),
    "vulkan": ("-DGGML_VULKAN=ON",),
    "cpu": (),
}
_BACKEND_HINTS: dict[Backend, str] = {
    "rocm": "check that ROCm with the HIP SDK is installed (hipconfig, hipcc, rocminfo)",
    "cuda": "check that the CUDA toolkit (nvcc) matching your driver is installed",
    "vulkan": "check that glslc, SPIRV-Headers and a Vulkan driver are installed (`vulkaninfo --summary` lists "
              "the device; mesa-vulkan-drivers gives the software device lavapipe)",
    "cpu": f"check that cmake and a C++17 compiler are installed ({_INSTALL_HINT})",
}
_PROGRESS = re.compile(r"^\[\s*(\d+)(?:/(\d+)|%)\]")  # ninja "[12/218]" or make "[ 45%]"
_X86 = ("x86_64", "AMD64")
_X86_V3 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})  # ggml's "haswell" level
Smoke = Callable[..., SmokeResult]


@dataclass(frozen=True)
class BuildVariant:
    """One way to compile for this CPU: its name, its CMake flags and the CPU features it assumes.

    Example:
        >>> v = variants("cpu", frozenset({"sse4_2"}), machine="x86_64")[-1]
        >>> v.name, v.label, sorted(v.features)
        ('portable', 'portable-x86-64-v2', ['sse4_2'])
    """

    name: str
    label: str
    flags: tuple[str, ...]
    features: frozenset[str]


def variants(backend: Backend, cpu: frozenset[str], *, machine: str | None = None,
             portable: bool = False) -> list[BuildVariant]:
    """The builds to try in order for this CPU: native then portable (only portable if ``portable``).

    Example:
        >>> native = variants("cpu", frozenset({"avx512f", "amx_int8"}), machine="x86_64")[0]
        >>> sorted(native.features), native.flags[-2]
        (['avx512f'], '-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16')
    """
    machine = machine or platform.machine()
    x86 = machine in _X86
    features = cpu - AMX_FEATURES
    digest = hashlib.sha256(" ".join(sorted(features)).encode()).hexdigest()[:8]
    native_flags = ["-DGGML_NATIVE=ON"]
    if x86:
        native_flags += [f"-DCMAKE_C_FLAGS={' '.join(NO_AMX)}", f"-DCMAKE_CXX_FLAGS={' '.join(NO_AMX)}"]
    native = BuildVariant("native", f"native-{digest}", tuple(native_flags), features)
    if not x86:
        base = BuildVariant("portable", f"portable-{machine}", ("-DGGML_NATIVE=OFF",), frozenset())
    elif cpu >= _X86_V3:
        base = BuildVariant("portable", "portable-x86-64-v3", (
            "-DGGML_NATIVE=OFF", "-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
            "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF",
            "-DGGML_AMX_BF16=OFF"), _X86_V3)
    else:
        base = BuildVariant("portable", "portable-x86-64-v2", (
            "-DGGML_NATIVE=OFF", "-DGGML_SSE42=ON", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF",
            "-DGGML_F16C=OFF", "-DGGML_BMI2=OFF", "-DGGML_AVX512=OFF"), frozenset({"sse4_2"}))
    return [base] if portable else [native, base]


def install_server(
    backend: Backend | None = None,
    *,
    rpc: bool = False,
    force: bool = False,
    portable: bool = False,
    jobs: int | None = None,
    progress: bool = True,
    environ: Mapping[str, str] | None = None,
    source_dir: Path | None = None,
    rocwmma_fattn: bool = False,
    hardware: Hardware | None = None,
    cpu: frozenset[str] | None = None,
    machine: str | None = None,
    smoke: Smoke = smoke_test,
    vulkan_headers: Path | None = None,
    fetch_vulkan_headers: bool = False,
) -> ServerBinary:
    """Build ``llama-server`` for ``backend`` (default: this machine's), prove it, install it and return it.

    Nothing is built when the cache already has an install for that backend
    that runs on this CPU (with the RPC worker if ``rpc``, with rocWMMA if
    ``rocwmma_fattn``), unless ``force``. Each build is smoke-tested before it
    is installed; a native build that fails is followed by a portable one
    (``portable=True`` builds only that). ROCm builds compile for the GPUs of
    ``hardware`` (default: :func:`~rocm_nb.hardware.detect`) and for the target
    an ``HSA_OVERRIDE_GFX_VERSION`` would run them as; ``rocwmma_fattn`` adds
    ``-DGGML_HIP_ROCWMMA_FATTN=ON`` (ROCm on RDNA3+ and CDNA, see :mod:`rocm_nb.binary._rocwmma`, and
    only with sources that still have the option). The sources are the
    ``llama-cpp-python`` sdist pinned by
    :data:`~rocm_nb.binary.LLAMA_CPP_PYTHON_VERSION`, fetched with pip;
    ``source_dir`` builds another llama.cpp checkout. A Vulkan build first
    finds Vulkan headers 1.3.272 or later, glslc and SPIRV-Headers
    (:mod:`rocm_nb.binary._vulkan_sdk`: ``vulkan_headers``, ``$VULKAN_SDK``,
    the system's, or with ``fetch_vulkan_headers`` Debian 13's fetched into the
    cache) and a Vulkan device to prove it on (``hardware``, default
    ``detect(backend="vulkan")``; a software device such as lavapipe is named
    in ``GGML_VK_VISIBLE_DEVICES`` for the smoke test). ``cpu`` (default: this
    CPU's features), ``machine`` (default: this architecture) and ``smoke``
    are seams for tests. Failures raise
    :class:`BuildError` and leave the cache as it was.

    Example:
        >>> install_server("cpu", rpc=True).rpc_path  # doctest: +SKIP
        PosixPath('/home/me/.cache/rocm_nb/servers/cpu-rpc-native-1a2b3c4d/ggml-rpc-server')
    """
    env = os.environ if environ is None else environ
    cpu = this_cpu() if cpu is None else cpu
    gfx_targets: tuple[str, ...] = ()
    if backend is None or backend == "rocm":
        hardware = hardware or detect(environ=env)
        backend = backend or hardware.backend
        gfx_targets = build_targets(hardware)
    base_flags = _cmake_flags(backend, rpc, gfx_targets, env, rocwmma_fattn=rocwmma_fattn)
    servers = cache_root(env) / "servers"
    _require_trusted(servers, base_flags)  # what another user could change is neither reused nor built into
    if not force:
        for install in scan(servers, cpu)[0]:
            if install.backend == backend and (install.rpc or not rpc) and (install.portable or not portable) and (
                not rocwmma_fattn or ROCWMMA_FLAG in install.flags
            ):
                try:
                    return from_install(install, env)
                except Unusable:
                    continue

    name = backend + ("-rpc" if rpc else "") + ("-rocwmma" if rocwmma_fattn else "")
    build_env = {**env, **_hip_env(env)} if backend == "rocm" else dict(env)
    cmake = _require_tools(base_flags, build_env)
    smoke_env, recorded = build_env, {}
    if backend == "vulkan":
        sdk = find_vulkan_sdk(base_flags, env, headers=vulkan_headers, fetch=fetch_vulkan_headers)
        base_flags += sdk.flags()
        device = _vulkan_device(hardware or detect(environ=env, backend="vulkan"), base_flags)
        smoke_env = {**build_env, **server_env(device, build_env)}
        recorded = {"vulkan_headers": sdk.label, "smoke_device": device.visible_gpus[0].name}
    servers.mkdir(parents=True, exist_ok=True)
    log = servers / f"build-{name}.log"
    log.write_text("")
    say = _Reporter(name, progress)
    if recorded:
        visible = "".join(f", named in {k}={v}" for k, v in smoke_env.items() if k == "GGML_VK_VISIBLE_DEVICES")
        say.line(f"with {recorded['vulkan_headers']}; to be proven on {recorded['smoke_device']}{visible}")
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f".build-{name}-", dir=servers) as work:
        try:
            src = source_dir or _sources(servers, Path(work), log, env, say, base_flags)
        except _StepFailed as exc:  # pip could not fetch the sources, or they were not the pinned file
            raise _build_error(backend, base_flags, log, exc.step, f"exit status {exc.returncode}") from None
        if rocwmma_fattn:
            require_option(src, base_flags)
        for variant in variants(backend, cpu, machine=machine, portable=portable):
            flags = [*base_flags, *variant.flags]
            build_dir = Path(work) / f"build-{variant.name}"
            try:
                built = _compile(cmake, src, build_dir, flags, rpc, jobs, log, build_env, say, variant)
                version = version_of(built[0], env)
            except _StepFailed as exc:
                raise _build_error(backend, flags, log, exc.step, f"exit status {exc.returncode}") from None
            except Unusable as exc:
                raise _build_error(backend, flags, log, "checking the result", f"the new llama-server {exc}") from None
            result = smoke(built[0], gpu=backend != "cpu", environ=smoke_env)
            _log_smoke(log, variant, result)
            if result.passed:
                why = (f"kept the {variant.name} build; " + "; ".join(failures)) if failures else \
                    f"kept the {variant.name} build"
                say.line(f"smoke test passed in {result.seconds:.1f} s: {why}")
                return _install(built, servers / f"{name}-{variant.label}", backend, flags, rpc, version, variant,
                                result, why, env, recorded)
            failures.append(f"the {variant.name} build failed its smoke test ({result.detail})")
            say.line(f"the {variant.name} build failed its smoke test: {result.detail}")
    raise _smoke_error(backend, flags, log, failures, result)


def _vulkan_device(hardware: Hardware, flags: Sequence[str]) -> Hardware:
    """The Vulkan device a new build is proven on, or a :class:`BuildError` when there is none."""
    if hardware.backend == "vulkan" and hardware.gpus:
        return hardware
    raise BuildError(
        "Cannot build llama-server for Vulkan here: no Vulkan device was found to prove the build on before it is "
        "installed (`vulkaninfo` lists none, or is not installed).\nNext step: `sudo apt-get install vulkan-tools "
        "mesa-vulkan-drivers` (Mesa's software device, lavapipe, is enough to prove it), or install your GPU's "
        "Vulkan driver; then run `rocm-nb server install --backend vulkan` again.", flags=flags)


class _Reporter:
    """The setup's own output: a line per step on stderr, and a bar while compiling."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled = name, enabled

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"llama-server ({self.name}): {text}", file=sys.stderr, flush=True)

    def bar(self, variant: BuildVariant) -> tqdm[Any]:
        from tqdm.auto import tqdm  # imported here: `import rocm_nb` stays cheap

        return tqdm(desc=f"compiling llama-server ({self.name}, {variant.name})", disable=not self.enabled,
                    leave=False, unit="step", delay=2.0,  # drawn once ninja has said how many steps
                    mininterval=0.5 if sys.stderr.isatty() else 30.0)  # a log file gets a line every 30 s, not 200


def _compile(cmake: str, src: Path, build_dir: Path, flags: Sequence[str], rpc: bool, jobs: int | None, log: Path,
             env: Mapping[str, str], say: _Reporter, variant: BuildVariant) -> list[Path]:
    """Configure and compile one variant; return the built binaries (llama-server first)."""
    targets = [SERVER, RPC_SERVER] if rpc else [SERVER]
    say.line(f"configuring the {variant.name} build ({variant.label})")
    _run_step("configuring with cmake", [cmake, "-S", str(src), "-B", str(build_dir), *flags], log, env)
    with say.bar(variant) as bar:
        build = [cmake, "--build", str(build_dir), "--target", *targets, "-j", str(jobs or os.cpu_count() or 1)]
        _run_step("compiling", build, log, env, bar)
    return [build_dir / "bin" / target for target in targets]


def _log_smoke(log: Path, variant: BuildVariant, result: SmokeResult) -> None:
    with log.open("a") as out:
        out.write(f"$ smoke test of the {variant.name} build: {'passed' if result.passed else 'FAILED'} "
                  f"in {result.seconds:.1f} s: {result.detail}\n{result.log_tail}\n")


def _smoke_error(backend: Backend, flags: Sequence[str], log: Path, failures: Sequence[str],
                 result: SmokeResult) -> BuildError:
    """Every variant compiled but none passed its smoke test: name the signal, the flags, the log."""
    step = describe_exit(result.returncode, loading=True)[1] if result.returncode is not None else ""
    tail = result.log_tail.splitlines()[-_TAIL_LINES:]
    return BuildError(
        f"Building llama-server ({backend}) produced no working binary: " + "; ".join(failures) + ".\n"
        f"  cmake flags of the last try: {' '.join(flags)}\n  full log: {log}\n"
        "  last lines of its smoke test:\n" + "".join(f"    {line}\n" for line in tail[-15:])
        + "Nothing was installed. Next step: " + (f"{step}; " if step else "")
        + f"read the log; {_BACKEND_HINTS[backend]}.",
        flags=flags,
        log_tail="\n".join(tail),
    )


def _cmake_flags(
    backend: Backend, rpc: bool, gfx_targets: Sequence[str], env: Mapping[str, str], *, rocwmma_fattn: bool = False
) -> list[str]:
    """The configure flags shared by every variant: a static server-only build without HTTPS, plus the backend's."""
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF",
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", *_BACKEND_FLAGS[backend]]
    if backend == "rocm" and gfx_targets:
        flags.append(f"-DGPU_TARGETS={';'.join(gfx_targets)}")
    if rocwmma_fattn:
        flags.append(rocwmma_flag(backend, gfx_targets, flags))
    if rpc:
        flags.append("-DGGML_RPC=ON")
    if shutil.which("ninja", path=env.get("PATH", "")):
        flags += ["-G", "Ninja"]
    return flags


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


def _require_trusted(servers: Path, flags: Sequence[str]) -> None:
    """Refuse to build into a cache folder another user could change: :func:`~rocm_nb.binary.find_server` would
    (rightly) never run what was built there."""
    reason = untrusted(servers, up_to=servers.parent)
    if reason is not None:
        raise BuildError(
            f"Not building llama-server into {servers}: {reason}, so another user could replace what is built, "
            f"and rocm_nb would not run it.\nNext step: {reason.fix}, or build into a cache of your own: "
            "ROCM_NB_CACHE=~/.cache/rocm_nb-own rocm-nb server install", flags=flags)


def _verified_copy(sdist: Path, work: Path, flags: Sequence[str]) -> Path:
    """A private copy of ``sdist`` in ``work``, whose SHA-256 is the pinned one, else a :class:`BuildError`.

    The copy is what is extracted: the file in the (perhaps shared) cache
    cannot change between the check and the build.
    """
    digest = hashlib.sha256()
    copy = work / sdist.name
    with sdist.open("rb") as source, copy.open("wb") as target:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            target.write(block)
    if digest.hexdigest() != LLAMA_CPP_PYTHON_SHA256:
        raise BuildError(
            f"{sdist} has SHA-256 {digest.hexdigest()}, not the {LLAMA_CPP_PYTHON_SHA256} that PyPI publishes for "
            f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}: the download was damaged, or someone changed the file. "
            f"Nothing was built.\nNext step: delete it (rm {sdist}) and run `rocm-nb server install` again; it is "
            "downloaded afresh and checked.", flags=flags)
    return copy


def _sources(servers: Path, work: Path, log: Path, env: Mapping[str, str], say: _Reporter,
             flags: Sequence[str]) -> Path:
    """Extract ``vendor/llama.cpp`` of the pinned sdist (downloaded with pip if missing, verified) into ``work``."""
    sdist_dir = servers / "sdist"
    pattern = f"llama[_-]cpp[_-]python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not any(sdist_dir.glob(pattern)):
        say.line(f"fetching the llama.cpp sources (the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist) with pip")
        pinned = work / "llama-cpp-python.txt"  # --require-hashes: pip refuses a file whose hash differs
        pinned.write_text(f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} --hash=sha256:{LLAMA_CPP_PYTHON_SHA256}\n")
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
               "--require-hashes", "-r", str(pinned), "-d", str(sdist_dir)]
        _run_step("downloading the llama-cpp-python sdist with pip", pip, log, env)
    sdist = _verified_copy(next(sdist_dir.glob(pattern)), work, flags)
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


def _run_step(step: str, cmd: Sequence[str], log: Path, env: Mapping[str, str], bar: tqdm[Any] | None = None) -> None:
    """Run one build step, appending its output to ``log`` and moving ``bar`` along ninja's ``[n/N]`` lines."""
    from rocm_nb._process import terminate

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
        except BaseException:  # an interrupt: stop the whole build tree (ninja and its compilers) first
            terminate(proc, grace=10.0, kill_wait=5.0, group=True)
            raise
        finally:
            proc.stdout.close()
            proc.wait()
    if proc.returncode != 0:
        raise _StepFailed(step, proc.returncode)


def _install(built: Sequence[Path], final: Path, backend: Backend, flags: Sequence[str], rpc: bool, version: str,
             variant: BuildVariant, result: SmokeResult, why: str, env: Mapping[str, str],
             recorded: Mapping[str, str]) -> ServerBinary:
    """Copy the proven binaries and then the manifest (with ``recorded`` in it) into a hidden directory, and rename
    it to ``final``."""
    staging = Path(tempfile.mkdtemp(prefix=f".install-{final.name}-", dir=final.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; an install is as readable as the rest of the cache
    try:
        for binary in built:
            shutil.copy2(binary, staging / binary.name)
        manifest = {"version": version, "backend": backend, "flags": list(flags), "rpc": rpc,
                    "variant": variant.name, "cpu_features": sorted(variant.features), "kept_because": why,
                    "smoke_test": {"passed": True, "seconds": round(result.seconds, 2), "detail": result.detail},
                    "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION, **recorded}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{final.name}-", dir=final.parent))
            final.rename(old / final.name)
            staging.rename(final)
            shutil.rmtree(old)
        else:
            staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ServerBinary(final / SERVER, version, backend, "cache", rpc)
