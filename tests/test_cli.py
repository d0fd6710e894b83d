"""The rocm-nb command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rocm_nb.cli import main
from rocm_nb.modelfiles.catalog import CATALOGUE
from tests.support.gguf_files import write_gguf


@pytest.mark.server
def test_doctor_reports_backend_binary_and_model(capsys: pytest.CaptureFixture[str], model_path: str) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "backend: cpu" in out
    assert "llama-server" in out and "cache" in out
    assert "Q4_1" in out and model_path in out
    assert "All good." in out


@pytest.mark.unit
def test_doctor_says_what_is_missing(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: object) -> None:
    monkeypatch.setenv("ROCM_NB_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "rocm-nb server install" in out
    assert "rocm-nb pull smollm2-135m" in out


@pytest.mark.server
def test_server_install_is_cached_and_models_lists_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "install"]) == 0
    assert "llama-server ready" in capsys.readouterr().out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["name", "architecture", "parameters"]
    assert next(r for r in rows if r.startswith("smollm2-135m ")).split()[1:4] == ["llama", "135M", "Q4_1"]
    # make setup pulls the wheel models; the hub's vision model is fetched on first use (nothing reaches it here)
    assert set(re.findall(r"not downloaded yet: (\S+)", out)) <= {n for n, e in CATALOGUE.items() if e.hub}


@pytest.mark.unit
def test_models_scans_folders_and_names_what_to_pull(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write_gguf(tmp_path / "mine" / "tiny.gguf", "Tiny", ctx=512)
    (tmp_path / "mine" / "broken.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("ROCM_NB_CACHE", str(tmp_path / "empty-cache"))
    assert main(["models", str(tmp_path / "mine")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}/mine/tiny.gguf" in out and "512" in out
    assert f"{tmp_path}/mine/broken.gguf  ✗ " in out and "truncated" in out
    assert "not downloaded yet: smollm2-135m" in out and "rocm-nb pull smollm2-135m" in out


@pytest.mark.unit
def test_errors_are_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", "no-such-model"]) == 1
    assert "not in the catalogue" in capsys.readouterr().err


@pytest.mark.unit
def test_console_script_is_installed() -> None:
    done = subprocess.run([sys.executable, "-m", "rocm_nb.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("rocm_nb ")


@pytest.mark.unit
def test_prompt_cache_lists_and_clears_the_saved_caches(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       warm_folder: Path) -> None:
    from rocm_nb.server import ServerConfig
    from rocm_nb.server._warm_store import Fingerprint, WarmStore
    from tests.support.warm import save

    assert main(["prompt-cache"]) == 0
    assert capsys.readouterr().out == f"no saved prompt cache in {warm_folder} (budget 2.0 GiB)\n"
    (tmp_path / "chat.gguf").write_bytes(b"GGUF")
    store = WarmStore(warm_folder).open()
    for ctx in (2048, 4096):
        save(store, Fingerprint.of(ServerConfig(tmp_path / "llama-server", tmp_path / "chat.gguf", ctx)),
             tokens=2803, body=3 * 2**20)
    assert main(["prompt-cache", "list"]) == 0
    header, *rows, total = capsys.readouterr().out.splitlines()
    assert header.split() == ["model", "ctx", "slot", "tokens", "size", "last", "used"]
    assert sorted(row.split()[:5] for row in rows) == [["chat.gguf", "2048", "0", "2,803", "3"],
                                                      ["chat.gguf", "4096", "0", "2,803", "3"]]
    assert total == f"6 MiB of 2.0 GiB in {warm_folder}"
    assert main(["prompt-cache", "clear", "other.gguf"]) == 0 and "removed 0 file(s)" in capsys.readouterr().out
    assert main(["prompt-cache", "clear", "chat"]) == 0  # by its stem
    assert capsys.readouterr().out == "removed 4 file(s), 6.0 MiB of chat\n"
    assert store.entries() == []
