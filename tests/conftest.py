"""Shared fixtures: the real llama-server and the real default model.

``make test`` installs both before pytest runs (``rocm-nb server install``,
``rocm-nb pull smollm2-135m``); nothing here is skipped for want of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from rocm_nb import LocalModel
from rocm_nb.catalog import DEFAULT_MODEL, resolve_model


@pytest.fixture(scope="session")
def model_path() -> str:
    """Path of the default model (pulled by the Makefile; pulled here if missing)."""
    return str(resolve_model(DEFAULT_MODEL))


@pytest.fixture(scope="session")
def model() -> Iterator[LocalModel]:
    """One running server for the session: the default model on 2 slots."""
    with LocalModel(DEFAULT_MODEL, ctx_size=4096, parallel=2) as m:
        yield m


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> float:
    """Poll ``predicate`` until true; return the seconds it took, fail after ``timeout``."""
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - began


def gone(pid: int | None) -> Callable[[], bool]:
    """A predicate: the process ``pid`` no longer runs (zombies count as gone)."""
    def check() -> bool:
        if pid is None:
            return True
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    return check


def llama_servers() -> list[psutil.Process]:
    """Every llama-server process on the machine."""
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "llama-server" and proc.status() != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found
