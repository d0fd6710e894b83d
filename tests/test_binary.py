"""Finding and building llama-server.

The suite runs after ``rocm-nb server install``, so the default cache holds a
real build; everything else works in a temporary cache through ``environ=``,
and builds use a tiny CMake stand-in for llama.cpp (``source_dir=``) that
succeeds, fails to compile, or hangs until interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from rocm_nb import BinaryNotFound, BuildError
from rocm_nb._paths import cache_root
from rocm_nb.binary import LLAMA_CPP_PYTHON_VERSION, ServerBinary, find_server
from rocm_nb.binary._build import _cmake_flags, install_server, variants
from rocm_nb.binary._rocwmma import build_options
from rocm_nb.binary._smoke import SmokeResult
from rocm_nb.hardware import Hardware, detect
from rocm_nb.hardware._cpu import this_cpu
from rocm_nb.hardware._hsa import build_targets
from tests.support.processes import wait_until
from tests.support.sysfs import sysfs_root

ENV_VAR = "ROCM_NB_LLAMA_SERVER"


@pytest.fixture
def empty_env(tmp_path: Path) -> dict[str, str]:
    """An empty cache and a PATH without llama-server (nor cmake)."""
    (tmp_path / "bin").mkdir()
    return {"ROCM_NB_CACHE": str(tmp_path / "cache"), "PATH": str(tmp_path / "bin")}


def script(path: Path, body: str) -> Path:
    """An executable shell script: a program that is not llama-server, or a fake one."""
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def fake_install(servers: Path, name: str, real: ServerBinary, *, manifest: bool = True) -> Path:
    """An install directory whose llama-server is a symlink to the real one."""
    directory = servers / name
    directory.mkdir(parents=True)
    (directory / "llama-server").symlink_to(real.path)
    if manifest:
        data = {"version": real.version, "backend": "cpu", "flags": [], "rpc": False, "variant": "native",
                "cpu_features": sorted(this_cpu()), "built_at": "2025-01-01T00:00:00+00:00",
                "llama_cpp_python": "0.3.36"}
        (directory / "manifest.json").write_text(json.dumps(data))
    return directory


@pytest.mark.server
def test_the_cache_install_is_found_by_default(real: ServerBinary) -> None:
    assert real.source == "cache"
    assert real.backend == "cpu"
    assert real.version
    assert real.path.is_file() and os.access(real.path, os.X_OK)
    if real.rpc:
        assert real.rpc_path is not None and real.rpc_path.is_file()


@pytest.mark.server
def test_an_explicit_path_is_used_and_its_backend_read_from_list_devices(real: ServerBinary) -> None:
    binary = find_server(real.path)
    assert binary.source == "argument"
    assert binary.path == real.path
    assert binary.version == real.version
    assert binary.backend == "cpu"
    assert binary.rpc == real.rpc


def broken(tmp: Path, kind: str) -> Path:
    """A candidate that is not a working llama-server."""
    if kind == "missing":
        return tmp / "missing" / "llama-server"
    if kind == "directory":
        return tmp
    if kind == "not-executable":
        (tmp / "llama-server").write_text("#!/bin/sh\n")
        return tmp / "llama-server"
    return script(tmp / "llama-server", {"prints-hello": "echo hello", "prints-nothing": "exit 0"}[kind])


BROKEN = {
    "missing": "does not exist",
    "directory": "is a directory",
    "not-executable": "is not executable",
    "prints-hello": "does not look like llama-server: `--version` printed 'hello'",
    "prints-nothing": "does not look like llama-server: `--version` printed nothing",
}


@pytest.mark.unit
@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_env_var_is_reported_not_skipped(tmp_path: Path, kind: str) -> None:
    path = broken(tmp_path, kind)
    environ = {**os.environ, ENV_VAR: str(path)}  # the default cache has a working install to fall back to
    with pytest.raises(BinaryNotFound) as caught:
        find_server(environ=environ)
    message = str(caught.value)
    assert str(path) in message
    assert ENV_VAR in message
    assert BROKEN[kind] in message
    assert "Next step" in message


@pytest.mark.unit
def test_a_wrong_program_as_argument_is_reported(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFound, match=r"server= argument .*'hello'"):
        find_server(script(tmp_path / "llama-server", "echo hello"))


@pytest.mark.unit
def test_nothing_found_says_what_was_tried_and_how_to_install(empty_env: dict[str, str]) -> None:
    with pytest.raises(BinaryNotFound) as caught:
        find_server(environ=empty_env)
    message = str(caught.value)
    assert "rocm-nb server install" in message
    assert f"{ENV_VAR}=/path" in message
    assert empty_env["ROCM_NB_CACHE"] in message
    assert "$PATH" in message


@pytest.mark.server
def test_half_built_installs_are_ignored(real: ServerBinary, empty_env: dict[str, str]) -> None:
    servers = Path(empty_env["ROCM_NB_CACHE"]) / "servers"
    fake_install(servers, "cpu", real, manifest=False)  # binaries copied, manifest not yet written
    fake_install(servers, ".install-cpu-x1y2", real)  # staging directory, never looked at
    with pytest.raises(BinaryNotFound):
        find_server(environ=empty_env)


@pytest.mark.server
def test_a_binary_on_path_is_found_last(real: ServerBinary, empty_env: dict[str, str]) -> None:
    (Path(empty_env["PATH"]) / "llama-server").symlink_to(real.path)
    binary = find_server(environ=empty_env)
    assert (binary.source, binary.backend) == ("PATH", "cpu")


@pytest.mark.unit
def test_version_is_asked_once_per_binary_and_mtime(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake = script(tmp_path / "llama-server", f'echo "$1" >> {calls}; echo "version: 1.2.3 (fake)"')
    assert find_server(fake).version == "1.2.3 (fake)"
    assert find_server(fake).version == "1.2.3 (fake)"
    assert calls.read_text().split() == ["--version", "--list-devices"]
    os.utime(fake, ns=(0, 0))
    find_server(fake)
    assert calls.read_text().split().count("--version") == 2


@pytest.mark.server
def test_install_returns_an_existing_install_without_building(real: ServerBinary, empty_env: dict[str, str]) -> None:
    servers = Path(empty_env["ROCM_NB_CACHE"]) / "servers"
    directory = fake_install(servers, "cpu", real)
    # No cmake on this PATH: any attempt to build would raise BuildError.
    binary = install_server("cpu", environ=empty_env, progress=False)
    assert binary == ServerBinary(directory / "llama-server", real.version, "cpu", "cache", rpc=False)
    assert find_server(environ=empty_env) == binary
    assert install_server(rpc=False, environ={**empty_env, "ROCM_NB_BACKEND": "cpu"}, progress=False) == binary
    assert not list(servers.glob("build-*.log"))


@pytest.mark.unit
def test_missing_build_tools_are_named(empty_env: dict[str, str]) -> None:
    with pytest.raises(BuildError) as caught:
        install_server("cpu", force=True, environ=empty_env, progress=False)
    assert "cmake and a C++ compiler (tried c++, g++, clang++) not found" in str(caught.value)
    assert "apt-get install cmake g++ ninja-build" in str(caught.value)


def tiny_llama_cpp(directory: Path, server_main: str) -> Path:
    """A stand-in for the llama.cpp sources: two small targets with the real names, built into bin/."""
    directory.mkdir()
    (directory / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(fake CXX)\n"
        "set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)\n"
        "add_executable(llama-server server.cpp)\nadd_executable(ggml-rpc-server rpc.cpp)\n"
    )
    (directory / "server.cpp").write_text(f"#include <cstdio>\nint main() {{ {server_main} }}\n")
    (directory / "rpc.cpp").write_text("int main() { return 0; }\n")
    return directory


def passes(binary: Path, **_: object) -> SmokeResult:
    """A smoke test for stand-ins that cannot serve HTTP (tests/test_build.py runs the real one)."""
    return SmokeResult(True, 0.0, "stand-in")


NATIVE = variants("cpu", this_cpu())[0].label  # the install's name: native-<hash of this CPU's features>


@pytest.mark.unit
def test_a_build_is_installed_atomically_and_replaced_by_force(tmp_path: Path) -> None:
    source = tiny_llama_cpp(tmp_path / "llama.cpp", 'std::puts("version: 0.0.1 (tiny)"); return 0;')
    servers = tmp_path / "cache" / "servers"
    environ = {**os.environ, "ROCM_NB_CACHE": str(servers.parent)}
    name = f"cpu-rpc-{NATIVE}"

    first = install_server("cpu", rpc=True, environ=environ, source_dir=source, progress=False, smoke=passes)
    assert first == ServerBinary(servers / name / "llama-server", "0.0.1 (tiny)", "cpu", "cache", rpc=True)
    assert first.rpc_path is not None and first.rpc_path.is_file()
    manifest = json.loads((servers / name / "manifest.json").read_text())
    assert manifest["backend"] == "cpu" and manifest["rpc"] is True and "-DGGML_RPC=ON" in manifest["flags"]

    again = install_server("cpu", rpc=True, force=True, environ=environ, source_dir=source, progress=False,
                           smoke=passes)
    assert again == first
    assert json.loads((servers / name / "manifest.json").read_text())["built_at"] >= manifest["built_at"]
    assert sorted(path.name for path in servers.iterdir()) == ["build-cpu-rpc.log", name]
    assert find_server(environ={**environ, "PATH": ""}) == first


@pytest.mark.unit
def test_a_failing_build_raises_build_error_and_installs_nothing(tmp_path: Path) -> None:
    source = tiny_llama_cpp(tmp_path / "llama.cpp", "return this_symbol_is_not_declared;")
    cache = tmp_path / "cache"
    environ = {**os.environ, "ROCM_NB_CACHE": str(cache)}

    with pytest.raises(BuildError) as caught:
        install_server("cpu", rpc=True, environ=environ, source_dir=source, jobs=1)
    error = caught.value
    assert "-DBUILD_SHARED_LIBS=OFF" in error.flags and "-DGGML_RPC=ON" in error.flags
    assert "this_symbol_is_not_declared" in error.log_tail
    log = cache / "servers" / "build-cpu-rpc.log"
    assert "while compiling" in str(error) and str(log) in str(error)
    assert "-DGGML_RPC=ON" in str(error)
    assert [path.name for path in (cache / "servers").iterdir()] == [log.name]
    with pytest.raises(BinaryNotFound):
        find_server(environ={"ROCM_NB_CACHE": str(cache), "PATH": ""})


@pytest.mark.unit
def test_an_interrupt_stops_the_whole_build(tmp_path: Path) -> None:
    source = tmp_path / "llama.cpp"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(fake NONE)\nadd_custom_target(llama-server COMMAND sleep 300)\n"
    )
    cache = tmp_path / "cache"
    program = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from rocm_nb.binary._build import install_server
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a kernel, even if started ignoring it
        install_server("cpu", environ={{**os.environ, "ROCM_NB_CACHE": {str(cache)!r}}},
                       source_dir=Path({str(source)!r}), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", program], stderr=subprocess.PIPE, text=True)
    try:
        # ninja logs a step when it ends, so look for the compiler stand-in among the processes.
        def compiling() -> bool:
            try:
                return "sleep" in [child.name() for child in psutil.Process(proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:  # a short-lived cmake step ended between listing and naming
                return False

        wait_until(compiling, timeout=60)
        build = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        _, errors = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in errors
    _, alive = psutil.wait_procs(build, timeout=10)
    assert alive == []
    assert [path.name for path in (cache / "servers").iterdir()] == ["build-cpu.log"]


def hardware_of(tmp_path: Path, tree: str, rocm: str | None = None) -> Hardware:
    """What detect() sees on a recorded sysfs tree (and ROCm install tree ``rocm``) with no ROCm tool answering."""
    return detect(runner=lambda argv: None, environ={}, root=sysfs_root(tmp_path, tree, rocm))


ROCWMMA = "-DGGML_HIP_ROCWMMA_FATTN=ON"


@pytest.mark.unit
@pytest.mark.parametrize(("tree", "targets"), [
    ("sysfs-r9700-780m", "gfx1201"),  # RDNA4 (the 780M iGPU is masked)
    ("sysfs-ryzen7600-rx7900gre", "gfx1100"),  # RDNA3
    ("sysfs-8845hs-780m", "gfx1100;gfx1103"),  # RDNA3 iGPU, plus its HSA_OVERRIDE_GFX_VERSION stand-in
])
def test_rocwmma_flash_attention_is_added_on_rdna3_and_later(tmp_path: Path, tree: str, targets: str) -> None:
    hw = hardware_of(tmp_path, tree, "rocm-tree-7.0")  # ships gfx1100 and gfx1201 kernels, none for gfx1103
    flags = _cmake_flags("rocm", False, build_targets(hw), {}, rocwmma_fattn=True)
    assert flags[-3:] == ["-DGGML_HIP=ON", f"-DGPU_TARGETS={targets}", ROCWMMA]
    assert ROCWMMA not in _cmake_flags("rocm", False, build_targets(hw), {})
    assert build_options(hw) == [
        f"{', '.join(hw.gfx_targets)} can use rocWMMA flash attention: rocm-nb server install --rocwmma-fattn "
        "(needs rocWMMA, e.g. the rocwmma-dev package, and llama.cpp sources with GGML_HIP_ROCWMMA_FATTN; "
        "the build checks them first)"
    ]


@pytest.mark.unit
@pytest.mark.parametrize("targets", [("gfx942",), ("gfx90a",), ("gfx908",), ("gfx950",), ("gfx90a", "gfx942")])
def test_rocwmma_flash_attention_on_cdna(targets: tuple[str, ...]) -> None:
    assert _cmake_flags("rocm", True, targets, {}, rocwmma_fattn=True)[-4:] == [
        "-DGGML_HIP=ON", f"-DGPU_TARGETS={';'.join(targets)}", ROCWMMA, "-DGGML_RPC=ON"]


@pytest.mark.unit
def test_rocwmma_flash_attention_is_refused_elsewhere(tmp_path: Path) -> None:
    rdna2 = hardware_of(tmp_path, "sysfs-rx6600-raphael", "rocm-tree-6.2")
    assert build_options(rdna2) == []
    with pytest.raises(BuildError, match=r"RDNA3 or later .* this build is for GPU targets gfx1030, gfx1032\.\n"
                                         r"Next step: leave out --rocwmma-fattn"):
        _cmake_flags("rocm", False, build_targets(rdna2), {}, rocwmma_fattn=True)
    with pytest.raises(BuildError, match="this build is for GPU targets gfx1100, gfx906"):
        _cmake_flags("rocm", False, ("gfx1100", "gfx906"), {}, rocwmma_fattn=True)  # every GPU must qualify
    with pytest.raises(BuildError, match=r"this build is for GPU targets \(none found\)"):
        _cmake_flags("rocm", False, (), {}, rocwmma_fattn=True)
    with pytest.raises(BuildError, match="this build is for cuda"):
        _cmake_flags("cuda", False, (), {}, rocwmma_fattn=True)
    assert build_options(detect()) == []  # this machine: the CPU


@pytest.mark.server
def test_the_pinned_llama_cpp_has_no_rocwmma_option_and_says_so(tmp_path: Path) -> None:
    """The real pinned sources (the sdist that `rocm-nb server install` fetched) are checked before configuring."""
    sdist = next((cache_root(os.environ) / "servers" / "sdist").glob("llama_cpp_python-*.tar.gz"))
    assert LLAMA_CPP_PYTHON_VERSION in sdist.name
    cache = tmp_path / "cache"
    (cache / "servers" / "sdist").mkdir(parents=True)
    (cache / "servers" / "sdist" / sdist.name).symlink_to(sdist)
    with pytest.raises(BuildError) as caught:
        install_server(rocwmma_fattn=True, hardware=hardware_of(tmp_path, "sysfs-r9700-780m"),
                       environ={**os.environ, "ROCM_NB_CACHE": str(cache)}, progress=False)
    message = str(caught.value)
    assert "vendor/llama.cpp have no GGML_HIP_ROCWMMA_FATTN option" in message
    assert "Next step: leave out --rocwmma-fattn" in message and ROCWMMA in caught.value.flags
    assert sorted(p.name for p in (cache / "servers").iterdir()) == ["build-rocm-rocwmma.log", "sdist"]


@pytest.mark.unit
def test_a_rocwmma_build_is_installed_apart_and_reused(tmp_path: Path) -> None:
    source = tiny_llama_cpp(tmp_path / "llama.cpp", 'std::puts("version: 0.0.2 (tiny rocwmma)"); return 0;')
    (source / "ggml").mkdir()
    (source / "ggml" / "CMakeLists.txt").write_text(
        'option(GGML_HIP_ROCWMMA_FATTN               "ggml: enable rocWMMA for FlashAttention" OFF)\n')
    servers = tmp_path / "cache" / "servers"
    environ = {**os.environ, "ROCM_NB_CACHE": str(servers.parent)}
    hw = hardware_of(tmp_path, "sysfs-r9700-780m")

    built = install_server(rocwmma_fattn=True, hardware=hw, environ=environ, source_dir=source, progress=False,
                           smoke=passes)
    name = f"rocm-rocwmma-{NATIVE}"
    assert built == ServerBinary(servers / name / "llama-server", "0.0.2 (tiny rocwmma)", "rocm", "cache",
                                 rpc=False)
    manifest = json.loads((servers / name / "manifest.json").read_text())
    assert manifest["backend"] == "rocm"
    assert {"-DGGML_HIP=ON", "-DGPU_TARGETS=gfx1201", ROCWMMA} <= set(manifest["flags"])
    log = servers / "build-rocm-rocwmma.log"
    log.write_text("kept")  # a rebuild would truncate it
    assert install_server(rocwmma_fattn=True, hardware=hw, environ=environ, progress=False) == built
    assert log.read_text() == "kept"


@pytest.mark.unit
def test_build_progress_follows_ninja_but_draws_at_most_every_mininterval(tmp_path: Path) -> None:
    """200 ninja steps into a log file (not a terminal): the bar ends at 200/200 after a couple of lines."""
    import io

    from tqdm import tqdm

    from rocm_nb.binary._build import _run_step

    script = "for i in range(1, 201): print(f'[{i}/200] Building CXX object x{i}.o')"
    drawn = io.StringIO()
    with tqdm(file=drawn, mininterval=30.0) as bar:
        _run_step("compiling", [sys.executable, "-c", script], tmp_path / "build.log", dict(os.environ), bar)
        assert (bar.n, bar.total) == (200, 200)
    assert drawn.getvalue().count("\r") <= 3  # opening, maybe one 30 s tick, closing: not 200 redraws
    logged = (tmp_path / "build.log").read_text().splitlines()
    assert sum(line.startswith("[") for line in logged) == 200  # the log keeps every line
