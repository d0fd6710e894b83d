"""Shared fixtures: the real llama-server and the real default model; and the test tiers.

``make test`` installs both before pytest runs (``rocm-nb server install``,
``rocm-nb pull smollm2-135m``); nothing here is skipped for want of them.
Helpers that test modules share live in :mod:`tests.support`, not here.

Every test belongs to exactly one tier (markers registered in pyproject.toml):
``unit`` needs no llama-server, no model, no kernel and no browser (``make
check`` runs it); ``server`` needs the real llama-server or the real model;
``kernel`` starts a Jupyter kernel or runs notebooks with nbclient;
``browser`` drives JupyterLab in Chromium. A test with no tier or with more
than one stops the run before anything executes, so the tiers cannot rot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rocm_nb import LocalModel
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, resolve_model

TIERS = ("unit", "server", "kernel", "browser")


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


@pytest.fixture(autouse=True)
def warm_folder(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test keeps its saved prompt caches (``rocm_nb.server.warm``) in a folder of its own.

    A model closed by one test would otherwise warm the next test's server
    with the same configuration, and a cache that test did not ask for
    changes its batch shapes (and so, on the CPU, its greedy text). Kernels a
    test starts inherit the folder.
    """
    folder = tmp_path_factory.mktemp("warm")
    monkeypatch.setenv("ROCM_NB_WARM_DIR", str(folder))
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
