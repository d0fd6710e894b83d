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
