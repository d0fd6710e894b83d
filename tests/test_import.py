"""`import rocm_nb` stays cheap: heavy libraries load when first needed, not at import.

Timing lives in benchmarks/ (``make bench``); this test checks the cause,
which modules an import pulls in, so it cannot pass by luck on a fast machine.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("IPython", "anywidget", "asyncio", "httpx", "httpx_sse", "huggingface_hub", "ipywidgets", "jsonschema",
         "markdown_it", "tqdm")


def loaded_after(code: str) -> list[str]:
    probe = f"import sys; {code}; import json; print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    found: list[str] = json.loads(out)
    return found


@pytest.mark.unit
def test_import_loads_no_heavy_library() -> None:
    assert loaded_after("import rocm_nb") == []


@pytest.mark.server
def test_a_local_model_is_checked_and_planned_without_the_http_stack() -> None:
    """Constructing a LocalModel resolves, reads and plans; only start() needs httpx."""
    assert loaded_after("import rocm_nb; rocm_nb.LocalModel('smollm2-135m')") == []
    assert "httpx" in loaded_after("import rocm_nb; rocm_nb.connect('http://127.0.0.1:9')")
