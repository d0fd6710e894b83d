"""Polling and process checks: wait for a condition, tell whether a process is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psutil


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.02) -> float:
    """Poll ``predicate`` until true; return the seconds it took, fail after ``timeout``.

    ``timeout`` guards against a hang; it is not a measurement (timings live in benchmarks/), so it
    is generous: a machine busy with other work may take seconds for what takes milliseconds alone.
    """
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
    return time.monotonic() - began


async def spin_until(predicate: Callable[[], bool], turns: int = 1000) -> None:
    """Let the running event loop take turns until ``predicate`` holds; fail after ``turns`` turns.

    For work handed to this loop (``call_soon_threadsafe``, a task): it needs turns of the loop, not
    time, so a busy machine cannot make this fail as a sleep of a few milliseconds could.
    """
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"condition not met within {turns} turns of the event loop")


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
