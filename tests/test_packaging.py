"""Packaging: the core installs and imports without the notebook or hub extras; one version.

The blocked-import checks run in a fresh interpreter where the extras' modules
are set to ``None`` in ``sys.modules``, which makes importing them fail as if
they were not installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import rocm_nb

pytestmark = pytest.mark.unit

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
NOTEBOOK = ("IPython", "ipywidgets", "anywidget", "traitlets")
HUB = ("huggingface_hub",)


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def run_without(blocked: tuple[str, ...], code: str) -> str:
    """Run ``code`` in a fresh interpreter where the ``blocked`` modules cannot be imported."""
    script = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_runtime_dependencies_hold_no_notebook_or_hub_package() -> None:
    runtime = names(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert not {n for n in runtime if n.startswith(("jupyter", "ipy", "notebook"))}
    assert not runtime & {"anywidget", "huggingface-hub", "jupyterlab", "traitlets"}
    assert names(extras["notebook"]) == {"ipython", "ipywidgets", "anywidget"}
    assert names(extras["hub"]) == {"huggingface-hub"}
    assert "jupyterlab" not in names(extras["notebook"])  # installing into an existing JupyterLab adds no server


def test_httpx_sse_floor_is_past_the_line_separator_bug() -> None:
    assert "httpx-sse>=0.4.2" in PYPROJECT["project"]["dependencies"]  # httpx-sse#34: U+2028 split data lines


def test_the_version_has_one_source() -> None:
    assert "version" not in PYPROJECT["project"] and PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rocm_nb.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", rocm_nb.__version__)


def test_the_core_works_without_the_extras(tmp_path: Path) -> None:
    out = run_without(NOTEBOOK + HUB, f"""
        import rocm_nb
        print(rocm_nb.LocalModel.__name__, type(rocm_nb.connect("http://127.0.0.1:9")).__name__)
        env = {{"HF_HUB_CACHE": {str(tmp_path)!r}, "ROCM_NB_CACHE": {str(tmp_path)!r}}}
        print(*rocm_nb.models(environ=env).notes, sep="\\n")
        """)
    first, *notes = out.splitlines()
    assert first == "LocalModel Client"
    # an existing Hugging Face cache is left unscanned, and a note says why
    assert f'the Hugging Face cache {tmp_path} was not scanned: huggingface_hub is not installed; hf: models ' \
           'need it: pip install "rocm_nb[hub]"' in notes


def test_the_notebook_parts_name_their_extra_when_it_is_missing() -> None:
    out = run_without(NOTEBOOK, """
        import importlib
        import rocm_nb
        for name in ["rocm_nb.notebook.chat", "rocm_nb.notebook.monitor", "rocm_nb.notebook.magics"]:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                print(exc)
        try:
            rocm_nb.GpuMonitor
        except ModuleNotFoundError as exc:
            print(exc)
        """)
    lines = out.splitlines()
    assert len(lines) == 4
    for line in lines:
        assert re.fullmatch(r"\w+ is not installed; the magics, the chat panel and the GPU monitor need it: "
                            r'pip install "rocm_nb\[notebook\]"', line), line


def test_hf_models_name_the_hub_extra_when_it_is_missing() -> None:
    out = run_without(HUB, """
        from rocm_nb.modelfiles.catalog import resolve_model
        try:
            resolve_model("hf:acme/tiny-GGUF/tiny.Q8_0.gguf")
        except ModuleNotFoundError as exc:
            print(exc)
        """)
    assert out.strip() == 'huggingface_hub is not installed; hf: models need it: pip install "rocm_nb[hub]"'
