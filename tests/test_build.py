"""A llama-server that works on every machine: AMX-safe, smoke-tested builds, a CPU-aware cache, crashes named.

Builds use a tiny CMake stand-in for llama.cpp (``source_dir=``) whose
"server" crashes or not depending on the variant's flags; the smoke test is
the real one where the binary can face it, and a stand-in that only runs
the binary where a passing smoke test is needed from a program that cannot
serve HTTP. The real build in the cache is smoke-tested for real.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rocm_nb import BinaryNotFound, BuildError, LocalModel, ServerCrashed, ServerStartError
from rocm_nb.binary import ServerBinary, find_server
from rocm_nb.binary._build import NO_AMX, install_server, variants
from rocm_nb.binary._smoke import SmokeResult, smoke_test
from rocm_nb.cli import main
from rocm_nb.errors import describe_exit
from rocm_nb.hardware._cpu import AMX_FEATURES, cpu_features, this_cpu

X86 = platform.machine() in ("x86_64", "AMD64")
SIGNALS = {  # signal -> words its next step must contain
    "SIGSEGV": "rocm-nb doctor",
    "SIGILL": "rocm-nb server install --rebuild",
    "SIGKILL": "out-of-memory killer",
    "SIGBUS": "model file changed",
}


# -- crashes are named --------------------------------------------------------------------------


def fake_server(path: Path, *, crash: str, after_first_token: bool) -> Path:
    """A stand-in llama-server (Python): answers --version, then dies by ``crash`` at load or mid-stream."""
    path.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import http.server, json, os, signal, sys
        if "--version" in sys.argv:
            print("version: 0.0.0 (fake)"); sys.exit(0)
        if "--list-devices" in sys.argv:
            sys.exit(0)
        if not {after_first_token!r}:
            os.kill(os.getpid(), signal.{crash})
        port = int(sys.argv[sys.argv.index("--port") + 1])

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *args): pass
            def do_GET(self):
                body = b'{{"status": "ok"}}'
                self.send_response(200); self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(body)
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200); self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
                event = b'data: ' + json.dumps({{"choices": [{{"index": 0, "text": "Once",
                                                 "finish_reason": None}}]}}).encode() + b'\\n\\n'
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(event), event)); self.wfile.flush()
                os.kill(os.getpid(), signal.{crash})

        http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
        """))
    path.chmod(0o755)
    return path


@pytest.mark.server
@pytest.mark.parametrize("crash", sorted(SIGNALS))
def test_a_server_that_dies_by_a_signal_while_loading_is_named(tmp_path: Path, model_path: str, crash: str) -> None:
    fake = fake_server(tmp_path / "llama-server", crash=crash, after_first_token=False)
    model = LocalModel(model_path, server=fake, ctx_size=256)
    with pytest.raises(ServerStartError) as caught:
        model.start()
    model.close()
    number = getattr(signal, crash)
    message = str(caught.value) + "\n".join(getattr(caught.value, "__notes__", []))
    assert caught.value.returncode == -number
    assert f"crashed with {crash} (" in message and "status -" not in message
    assert SIGNALS[crash] in message


@pytest.mark.server
@pytest.mark.parametrize("crash", sorted(SIGNALS))
def test_a_server_that_dies_by_a_signal_mid_stream_is_named(tmp_path: Path, model_path: str, crash: str) -> None:
    fake = fake_server(tmp_path / "llama-server", crash=crash, after_first_token=True)
    with LocalModel(model_path, server=fake, ctx_size=256) as model, pytest.raises(ServerCrashed) as caught:
        for _ in model.stream("Once upon a time", max_tokens=8):
            pass
    message = str(caught.value) + "\n".join(getattr(caught.value, "__notes__", []))
    assert caught.value.partial == "Once"
    assert caught.value.returncode == -getattr(signal, crash)
    assert f"crashed with {crash} (" in message
    assert SIGNALS[crash] in message


@pytest.mark.unit
def test_exit_descriptions() -> None:
    assert describe_exit(-11) == ("crashed with SIGSEGV (segmentation fault)", describe_exit(-11)[1])
    assert describe_exit(-4, loading=False)[1] == describe_exit(-4)[1]
    assert describe_exit(3) == ("exited with status 3", "")


# -- AMX-safe, CPU-keyed variants ---------------------------------------------------------------


SAPPHIRE_RAPIDS = cpu_features(
    "flags\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi1 bmi2 avx512f avx512dq avx512cd avx512bw "
    "avx512vl avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16 hypervisor\n", machine="x86_64")


@pytest.mark.unit
def test_no_variant_enables_amx_even_on_an_amx_cpu() -> None:
    native, portable = variants("cpu", SAPPHIRE_RAPIDS, machine="x86_64")
    assert {"amx_int8", "amx_tile"} <= SAPPHIRE_RAPIDS and "hypervisor" not in SAPPHIRE_RAPIDS
    assert native.flags == ("-DGGML_NATIVE=ON", f"-DCMAKE_C_FLAGS={' '.join(NO_AMX)}",
                            f"-DCMAKE_CXX_FLAGS={' '.join(NO_AMX)}")
    assert not native.features & AMX_FEATURES  # the build does not assume AMX, so needs none
    assert portable.label == "portable-x86-64-v3" and "-DGGML_NATIVE=OFF" in portable.flags
    assert "-DGGML_AMX_INT8=OFF" in portable.flags and not any("AMX" in f and f.endswith("=ON") for f in portable.flags)
    assert [v.name for v in variants("cpu", SAPPHIRE_RAPIDS, machine="x86_64", portable=True)] == ["portable"]


@pytest.mark.unit
def test_an_older_cpu_gets_the_sse42_baseline_and_another_arch_no_x86_flags() -> None:
    old = variants("cpu", frozenset({"sse4_2", "avx"}), machine="x86_64")[1]
    assert old.label == "portable-x86-64-v2" and "-DGGML_AVX2=OFF" in old.flags
    arm = variants("cpu", frozenset({"asimd", "sve"}), machine="aarch64")
    assert [v.label for v in arm][1] == "portable-aarch64"
    assert not any("-mno-amx" in flag for v in arm for flag in v.flags)


# -- the build is proven before it is installed -------------------------------------------------


def tiny_llama_cpp(directory: Path) -> Path:
    """A stand-in for llama.cpp whose llama-server crashes (SIGSEGV) when built native, and runs otherwise."""
    directory.mkdir()
    (directory / "CMakeLists.txt").write_text(textwrap.dedent("""\
        cmake_minimum_required(VERSION 3.14)
        project(fake CXX)
        set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
        add_executable(llama-server server.cpp)
        if(GGML_NATIVE)
          target_compile_definitions(llama-server PRIVATE CRASH=1)
        endif()
        """))
    (directory / "server.cpp").write_text(textwrap.dedent("""\
        #include <csignal>
        #include <cstdio>
        #include <cstring>
        int main(int argc, char **argv) {
            if (argc > 1 && std::strcmp(argv[1], "--version") == 0) { std::puts("version: 0.0.9 (tiny)"); return 0; }
        #ifdef CRASH
            std::raise(SIGSEGV);
        #endif
            return 0;
        }
        """))
    return directory


def runs_without_crashing(binary: Path, **_: Any) -> SmokeResult:
    """A smoke test for stand-ins that cannot serve HTTP: run the binary, pass unless it dies by a signal."""
    import subprocess

    began = time.monotonic()
    code = subprocess.run([str(binary)], check=False).returncode
    if code < 0:
        return SmokeResult(False, time.monotonic() - began, f"llama-server {describe_exit(code)[0]}", returncode=code)
    return SmokeResult(True, time.monotonic() - began, "ran")


@pytest.mark.unit
def test_a_native_build_that_fails_its_smoke_test_falls_back_to_portable(tmp_path: Path) -> None:
    source = tiny_llama_cpp(tmp_path / "llama.cpp")
    servers = tmp_path / "cache" / "servers"
    environ = {**os.environ, "ROCM_NB_CACHE": str(servers.parent)}
    cpu = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})

    built = install_server("cpu", environ=environ, source_dir=source, cpu=cpu, smoke=runs_without_crashing,
                           progress=False, machine="x86_64")
    assert built.path == servers / "cpu-portable-x86-64-v3" / "llama-server"
    manifest = json.loads((servers / "cpu-portable-x86-64-v3" / "manifest.json").read_text())
    assert manifest["variant"] == "portable" and manifest["cpu_features"] == sorted(cpu)
    assert "native build failed its smoke test (llama-server crashed with SIGSEGV" in manifest["kept_because"]
    assert manifest["smoke_test"]["passed"] is True
    log = (servers / "build-cpu.log").read_text()
    assert "smoke test of the native build: FAILED" in log and "smoke test of the portable build: passed" in log
    assert sorted(p.name for p in servers.iterdir()) == ["build-cpu.log", "cpu-portable-x86-64-v3"]


@pytest.mark.unit
def test_a_build_that_fails_every_smoke_test_raises_and_leaves_the_cache_as_it_was(tmp_path: Path) -> None:
    """The real smoke test against a binary that crashes: BuildError names the signal, flags and log."""
    source = tiny_llama_cpp(tmp_path / "llama.cpp")
    (source / "CMakeLists.txt").write_text((source / "CMakeLists.txt").read_text().replace("if(GGML_NATIVE)",
                                                                                           "if(TRUE)"))
    servers = tmp_path / "cache" / "servers"
    earlier = servers / "cpu-native-earlier"
    earlier.mkdir(parents=True)
    (earlier / "kept.txt").write_text("an install of another CPU kind")
    environ = {**os.environ, "ROCM_NB_CACHE": str(servers.parent)}

    with pytest.raises(BuildError) as caught:
        install_server("cpu", environ=environ, source_dir=source, progress=False)
    message = str(caught.value)
    assert "no working binary" in message and "crashed with SIGSEGV (segmentation fault)" in message
    assert "the native build failed its smoke test" in message and "the portable build failed" in message
    assert "Nothing was installed" in message and "-DGGML_NATIVE=OFF" in caught.value.flags
    assert sorted(p.name for p in servers.iterdir()) == ["build-cpu.log", "cpu-native-earlier"]
    assert (earlier / "kept.txt").read_text() == "an install of another CPU kind"


@pytest.mark.server
def test_the_smoke_test_catches_a_wrong_answer(tmp_path: Path, real: ServerBinary, model_path: str) -> None:
    """A binary that loads another model than the one it was given decodes the wrong tokens."""
    wrapper = tmp_path / "llama-server"
    wrapper.write_text(f'#!/bin/sh\nexec {real.path} "$@" -m {model_path}\n')
    wrapper.chmod(0o755)
    result = smoke_test(wrapper)
    assert not result.passed and result.detail.startswith("wrong answer: decoded tokens")


@pytest.mark.unit
def test_the_smoke_test_reports_a_binary_that_does_not_run(tmp_path: Path) -> None:
    assert smoke_test(tmp_path / "absent").detail.startswith("could not run")


# -- the cache is keyed by CPU features ---------------------------------------------------------


def cache_install(servers: Path, name: str, real: ServerBinary, features: list[str] | None) -> Path:
    directory = servers / name
    directory.mkdir(parents=True)
    (directory / "llama-server").symlink_to(real.path)
    data: dict[str, Any] = {"version": real.version, "backend": "cpu", "flags": [], "rpc": False,
                            "built_at": "2026-01-01T00:00:00+00:00", "variant": "native"}
    if features is not None:
        data["cpu_features"] = features
    (directory / "manifest.json").write_text(json.dumps(data))
    return directory


@pytest.mark.server
def test_an_install_for_cpu_features_this_machine_lacks_is_never_used(tmp_path: Path, real: ServerBinary) -> None:
    servers = tmp_path / "cache" / "servers"
    cache_install(servers, "cpu-native-avx512", real, ["avx2", "avx512f", "sse4_2"])
    cache_install(servers, "cpu-native-legacy", real, None)
    environ = {"ROCM_NB_CACHE": str(servers.parent), "PATH": ""}
    with pytest.raises(BinaryNotFound) as caught:
        find_server(environ=environ, cpu=frozenset({"sse4_2", "avx2"}))
    assert "built for CPU features this machine lacks (avx512f): not used" in str(caught.value)
    assert "cpu-native-legacy was built before rocm_nb recorded the CPU features" in str(caught.value)
    mine = cache_install(servers, "cpu-native-mine", real, ["avx2", "sse4_2"])
    assert find_server(environ=environ, cpu=frozenset({"sse4_2", "avx2"})).path == mine / "llama-server"
    assert find_server(environ=environ, cpu=frozenset({"sse4_2", "avx2", "avx512f"})).path.parent.name in {
        "cpu-native-avx512", "cpu-native-mine"}


@pytest.mark.server
def test_install_builds_for_this_cpu_beside_an_install_for_another(tmp_path: Path, real: ServerBinary) -> None:
    source = tiny_llama_cpp(tmp_path / "llama.cpp")
    servers = tmp_path / "cache" / "servers"
    cache_install(servers, "cpu-native-other", real, ["avx512f"])
    environ = {**os.environ, "ROCM_NB_CACHE": str(servers.parent)}
    built = install_server("cpu", environ=environ, source_dir=source, cpu=frozenset({"sse4_2"}), portable=True,
                           smoke=runs_without_crashing, progress=False, machine="x86_64")
    assert built.path.parent.name == "cpu-portable-x86-64-v2"
    assert (servers / "cpu-native-other" / "manifest.json").is_file()


# -- the real build -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_manifest(real: ServerBinary) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(real.path.with_name("manifest.json").read_text())
    return data


@pytest.mark.server
def test_the_real_build_passes_its_smoke_test(real: ServerBinary, real_manifest: dict[str, Any]) -> None:
    result = smoke_test(real.path)
    assert result.passed, result
    assert real_manifest["smoke_test"]["passed"] is True
    assert not set(real_manifest["cpu_features"]) - this_cpu()
    if X86:
        assert f"-DCMAKE_CXX_FLAGS={' '.join(NO_AMX)}" in real_manifest["flags"] or \
            "-DGGML_NATIVE=OFF" in real_manifest["flags"]


@pytest.fixture(scope="module")
def startup_log(model_path: str) -> Iterator[str]:
    with LocalModel(model_path, ctx_size=384, extra_args=("-lv", "4")) as model:  # 4: the load's info lines
        model.generate("Hello", max_tokens=4)
        yield "\n".join(model.logs())


@pytest.mark.server
def test_the_installed_binary_uses_no_amx_buffers(startup_log: str) -> None:
    """An AMX build lists ``AMX_INT8 = 1`` among its CPU features and loads weights into an ``AMX`` buffer."""
    system_info = next(line for line in startup_log.splitlines() if "system_info:" in line)
    assert "CPU : " in system_info and "AMX" not in system_info
    assert "CPU_Mapped model buffer size" in startup_log or "CPU model buffer size" in startup_log
    assert "AMX" not in startup_log


@pytest.mark.server
def test_doctor_smoke_tests_the_binary_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "smoke test: passed in" in out and "decoded 6 tokens as expected" in out
    assert "build: native" in out or "build: portable" in out


@pytest.mark.unit
def test_doctor_exits_non_zero_on_a_crashing_binary(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    crashing = tmp_path / "llama-server"
    crashing.write_text("#!/bin/sh\ncase \"$1\" in --version) echo 'version: 0.0.0 (crash)';; "
                        "--list-devices) ;; *) kill -s ILL $$;; esac\n")
    crashing.chmod(0o755)
    monkeypatch.setenv("ROCM_NB_LLAMA_SERVER", str(crashing))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "smoke test: FAILED" in out and "crashed with SIGILL (illegal instruction)" in out
    assert "rocm-nb server install --rebuild" in out
