"""`import rocm_nb` stays cheap: heavy libraries load when first needed, not at import.

Timing lives in benchmarks/ (``make bench``); this test checks the cause,
which modules an import pulls in, so it cannot pass by luck on a fast machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("IPython", "anyio", "anywidget", "asyncio", "email", "gguf", "hashlib", "http.client", "httpx", "httpx_sse",
         "huggingface_hub", "ipywidgets", "jsonschema", "markdown_it", "numpy", "psutil", "ssl", "tqdm", "zipfile")
"""Libraries a first request, a download, a widget or a status may need, but not an import."""
HTTP = ("IPython", "anyio", "asyncio", "email", "http.client", "httpx", "httpx_sse", "ipywidgets", "ssl")
"""What only talking to a server (or a notebook) needs."""


def loaded_after(code: str, names: tuple[str, ...] = HEAVY) -> list[str]:
    probe = f"import sys; {code}; import json; print(json.dumps(sorted(set({names!r}) & set(sys.modules))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    found: list[str] = json.loads(out)
    return found


@pytest.mark.unit
def test_import_loads_no_heavy_library() -> None:
    assert loaded_after("import rocm_nb") == []


@pytest.mark.unit
def test_import_loads_only_the_error_tree_and_the_rest_on_first_use() -> None:
    """Every public name but the exceptions is lazy (PEP 562): naming one imports its home module only."""
    probe = ("import sys, rocm_nb; before = sorted(m for m in sys.modules if m.startswith('rocm_nb')); "
             "rocm_nb.Completion; after = sorted(m for m in sys.modules if m.startswith('rocm_nb')); "
             "print(before, 'rocm_nb.model' in after, 'rocm_nb.client.completion' in after)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["['rocm_nb',", "'rocm_nb.errors']", "False", "True"]


@pytest.mark.unit
def test_importing_local_model_loads_no_heavy_library() -> None:
    """The usual first line, ``from rocm_nb import LocalModel``: no HTTP, TLS, psutil or GGUF library yet."""
    assert loaded_after("from rocm_nb import LocalModel") == []


@pytest.mark.server
def test_a_local_model_is_checked_and_planned_without_the_http_stack() -> None:
    """Constructing a LocalModel resolves, reads and plans; only start() needs httpx."""
    assert loaded_after("import rocm_nb; rocm_nb.LocalModel('smollm2-135m')", HTTP) == []
    assert "httpx" in loaded_after("import rocm_nb; rocm_nb.connect('http://127.0.0.1:9')", HTTP)
