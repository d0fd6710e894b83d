"""Shared fixtures: the real llama-server and the real default model; and the test tiers.

``make test`` installs both before pytest runs (``rocm-nb server install``,
``rocm-nb pull smollm2-135m``); nothing here is skipped for want of them.
Helpers that test modules share live in :mod:`tests.support`, not here.

Every test belongs to exactly one tier (markers registered in pyproject.toml):
``unit`` needs no llama-server, no model, no kernel and no browser (``make
check`` runs it); ``server`` needs the real llama-server or the real model;
``kernel`` starts a Jupyter kernel or runs notebooks with nbclient;
``browser`` drives JupyterLab in Chromium; ``vulkan`` runs the Vulkan build of
llama-server on a Vulkan device (``make test`` builds it and, without a GPU,
uses Mesa's software device lavapipe: about a second a token, so these tests
use small contexts and few tokens). A test with no tier or with more than one
stops the run before anything executes, so the tiers cannot rot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rocm_nb import LocalModel
from rocm_nb.binary import ServerBinary, find_server
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model
from tests.support.thinking import THINK_TEMPLATE

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

TIERS = ("unit", "server", "kernel", "browser", "vulkan")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: an untiered test is an error whatever is selected
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        tiers = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
        if len(tiers) != 1:
            wrong.append(f"  {item.nodeid}: {', '.join(tiers) or 'no tier'}")
    if wrong:
        raise pytest.UsageError(
            f"every test needs exactly one tier marker of {', '.join(TIERS)} (tests/conftest.py says which "
            "is which); mark the module with `pytestmark = pytest.mark.<tier>` or the test itself:\n"
            + "\n".join(wrong)
        )


def pytest_configure(config: pytest.Config) -> None:
    """Servers made before any test's own folder (session and module fixtures, the kernels of the notebook
    and browser tests) keep no prompt cache: never in your ``~/.cache/rocm_nb/warm``, never restored by
    another run or another module (a cache changes a server's batch shapes, and so its greedy text)."""
    import tempfile

    os.environ["ROCM_NB_WARM_DIR"] = tempfile.mkdtemp(prefix="rocm_nb-test-warm-")
    os.environ["ROCM_NB_WARM_BUDGET"] = "0"


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    shutil.rmtree(os.environ.pop("ROCM_NB_WARM_DIR", ""), ignore_errors=True)
    os.environ.pop("ROCM_NB_WARM_BUDGET", None)


@pytest.fixture
def warm_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A test that keeps prompt caches (``rocm_nb.server.warm``) keeps them in a folder of its own.

    Asked for by the tests of the warm cache; every other server keeps none
    (:func:`pytest_configure`), so that a model closed by one test cannot warm
    the next test's server (a cache changes its batch shapes, and so, on the
    CPU, its greedy text), and equal configurations still share one server.
    Kernels a test starts after this fixture inherit the folder.

    The time a teardown may spend saving (``ROCM_NB_WARM_SAVE_S``, 1 s by
    default) is a hang guard here: on a machine busy with other suites a save
    may run over 1 s and be skipped, as designed, and a test that restores it
    would then fail for the machine's sake. What a save costs is measured in
    ``benchmarks/warm.py`` with the default.
    """
    folder = tmp_path_factory.mktemp("warm")
    monkeypatch.setenv("ROCM_NB_WARM_DIR", str(folder))
    monkeypatch.delenv("ROCM_NB_WARM_BUDGET")  # not the session's 0 (pytest_configure): the default, 2 GiB
    monkeypatch.setenv("ROCM_NB_WARM_SAVE_S", "30")
    return folder


@pytest.fixture
def needs_root() -> None:
    """Tests that act as another uid (``nobody``) need root, as CI has: they fail, never skip, without it."""
    if os.getuid() != 0:
        pytest.fail("this test switches to another uid (nobody) and needs root; run the suite as root, as CI does")


@pytest.fixture(scope="session")
def model_path() -> str:
    """Path of the default model (pulled by the Makefile; pulled here if missing)."""
    return str(resolve_model(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def model() -> Iterator[LocalModel]:
    """One running server for the session: the default model on 2 slots."""
    with LocalModel(DEFAULT_MODEL, ctx_size=4096, parallel=2) as m:
        yield m


@pytest.fixture(scope="session")
def real() -> ServerBinary:
    """The llama-server that ``rocm-nb server install`` put in the default cache (not ``$ROCM_NB_LLAMA_SERVER``)."""
    return find_server(environ={k: v for k, v in os.environ.items() if k != "ROCM_NB_LLAMA_SERVER"})


@pytest.fixture(scope="module")
def thinker() -> Iterator[LocalModel]:
    """The default model served with a thinking chat template (:mod:`tests.support.thinking`)."""
    with LocalModel(DEFAULT_MODEL, ctx_size=2048, extra_args=("--chat-template-file", str(THINK_TEMPLATE))) as model:
        yield model


@pytest.fixture
def bare_shell() -> Iterator[InteractiveShell]:
    """IPython's shell with the rocm_nb magics and no model loaded: for tests of what the magics refuse.

    The shell is IPython's one instance: models that a module's fixture loaded into it are set
    aside for the test and put back after it.
    """
    from IPython.core.interactiveshell import InteractiveShell

    from rocm_nb.notebook.magics import RocmMagics

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "rocm_nb")
    magics = ip.magics_manager.registry["RocmMagics"]
    assert isinstance(magics, RocmMagics)
    loaded, current = dict(magics.models), magics.current
    magics.models.clear()
    magics.current = None
    try:
        yield ip
    finally:
        magics.models.clear()
        magics.models.update(loaded)
        magics.current = current
