"""The process mechanism and the server registry, with fake children and fake servers (no llama-server)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rocm_nb._process import Escalation, launch, read_records, running_records, terminate
from rocm_nb.server._registry import ServerRegistry
from tests.support.processes import gone, wait_until

pytestmark = pytest.mark.unit

# A misbehaving child, the way jupyter_client's `signalkernel` is one: it says when its handler is in place.
CHILD = textwrap.dedent("""
    import signal, sys, time
    if sys.argv[1] == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(60)
""")


def child(behaviour: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, behaviour], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.stdout.close()
    return proc


def test_a_child_that_ignores_sigterm_ends_by_sigkill_within_the_bound() -> None:
    proc = child("ignore")
    began = time.monotonic()
    assert terminate(proc, grace=0.3, kill_wait=5.0) is Escalation.SIGKILL
    assert time.monotonic() - began < 5.3
    assert proc.returncode == -9


def test_a_child_that_honours_sigterm_ends_by_sigterm() -> None:
    proc = child("obey")
    assert terminate(proc, grace=5.0) is Escalation.SIGTERM
    assert proc.returncode == -15


def test_an_exited_child_is_reported_as_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert terminate(proc) is Escalation.EXITED


def test_a_whole_process_group_is_signalled() -> None:
    script = "import subprocess, time; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    proc.stdout.close()
    assert terminate(proc, grace=5.0, group=True) is Escalation.SIGTERM
    wait_until(gone(grandchild))  # the signal reached it; it may take a moment to exit


def test_a_launched_child_is_recorded_until_stopped(tmp_path: Path) -> None:
    environ = {"ROCM_NB_RUNTIME_DIR": str(tmp_path)}
    launched = launch([sys.executable, "-c", CHILD, "ignore"], {}, environ, 10, model="m.gguf")
    try:
        deadline = time.monotonic() + 10
        while not launched.logs.lines and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(launched.logs.lines) == ["ready"]
        [record] = read_records(environ)
        assert record.server_alive and record.owner_alive and record.data["model"] == "m.gguf"
        assert running_records(environ) == [record.data]
    finally:
        assert launched.stop(grace=0.2) is Escalation.SIGKILL
    assert launched.stop() is Escalation.SIGKILL  # idempotent: the first answer stands
    assert running_records(environ) == [] and not launched.record.exists()


def test_a_torn_record_is_skipped_and_left_alone(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "1.json").write_text("{not json")
    assert list(read_records({"ROCM_NB_RUNTIME_DIR": str(run)})) == []
    assert (run / "1.json").exists()  # not verified as ours: tests/test_security.py has the rest


# -- the registry ------------------------------------------------------------------------------


class FakeServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.alive = True
        self.closed = 0

    def close(self) -> None:
        self.closed += 1
        self.alive = False


@pytest.fixture
def registry() -> Iterator[ServerRegistry[str, FakeServer]]:
    yield ServerRegistry()


def test_a_second_configuration_starts_while_the_first_is_still_starting(
    registry: ServerRegistry[str, FakeServer],
) -> None:
    slow_started, slow_may_finish = threading.Event(), threading.Event()

    def slow() -> FakeServer:
        slow_started.set()
        assert slow_may_finish.wait(10)
        return FakeServer("slow")

    results: dict[str, FakeServer] = {}
    loader = threading.Thread(target=lambda: results.update(slow=registry.acquire("a", slow)))
    loader.start()
    assert slow_started.wait(10)
    fast = registry.acquire("b", lambda: FakeServer("fast"))  # no global lock: does not wait for "a"
    assert fast.name == "fast" and registry.running() == [fast]
    registry.release("b", fast)  # nor does a release
    assert fast.closed == 1
    slow_may_finish.set()
    loader.join(10)
    assert registry.running() == [results["slow"]]


def test_callers_for_one_configuration_join_one_start(registry: ServerRegistry[str, FakeServer]) -> None:
    starts: list[int] = []
    may_finish = threading.Event()

    def start() -> FakeServer:
        starts.append(1)
        assert may_finish.wait(60)
        return FakeServer("one")

    got: list[FakeServer] = []
    threads = [threading.Thread(target=lambda: got.append(registry.acquire("a", start))) for _ in range(4)]
    for t in threads:
        t.start()
    # the start ends only once all four callers are in: one starting, three waiting on it (not a sleep that a
    # busy machine could outlast)
    wait_until(lambda: "a" in registry._entries and registry._entries["a"].users == 4)
    may_finish.set()
    for t in threads:
        t.join(60)
    assert len(starts) == 1 and len(got) == 4 and all(s is got[0] for s in got)
    for server in got[:3]:
        registry.release("a", server)
    assert got[0].closed == 0  # one user left
    registry.release("a", got[0])
    assert got[0].closed == 1


def test_a_failed_start_is_forgotten_and_its_waiters_see_the_error(
    registry: ServerRegistry[str, FakeServer],
) -> None:
    started, fail = threading.Event(), threading.Event()

    def broken() -> FakeServer:
        started.set()
        assert fail.wait(10)
        raise RuntimeError("no such model")

    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            registry.acquire("a", broken)
        except RuntimeError as exc:
            errors.append(exc)

    first = threading.Thread(target=attempt)
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=attempt)
    second.start()
    wait_until(lambda: registry._entries["a"].users == 2)  # the second caller waits on the first one's start
    fail.set()
    first.join(10)
    second.join(10)
    assert [str(e) for e in errors] == ["no such model"] * 2
    fresh = registry.acquire("a", lambda: FakeServer("retry"))  # a later try starts again
    assert fresh.name == "retry"


def test_a_dead_server_is_replaced_and_closed_by_its_last_holder(
    registry: ServerRegistry[str, FakeServer],
) -> None:
    old = registry.acquire("a", lambda: FakeServer("old"))
    old.alive = False  # it crashed
    new = registry.acquire("a", lambda: FakeServer("new"))
    assert new is not old and registry.running() == [new]
    registry.release("a", old)
    assert old.closed == 1 and new.closed == 0
    registry.release("a", new)
    assert new.closed == 1


@pytest.mark.parametrize("published", [False, True])
def test_ctrl_c_as_a_start_finishes_leaves_no_server(
    registry: ServerRegistry[str, FakeServer], monkeypatch: pytest.MonkeyPatch, published: bool,
) -> None:
    """KeyboardInterrupt between the start's return and its publication (or just after it) closes that server."""
    from concurrent.futures import Future

    from rocm_nb.server import _registry
    class Interrupted(Future[FakeServer]):
        def set_result(self, result: FakeServer) -> None:
            if published:
                super().set_result(result)
            raise KeyboardInterrupt

    monkeypatch.setattr(_registry, "Future", Interrupted)
    made: list[FakeServer] = []

    def start() -> FakeServer:
        made.append(FakeServer("a"))
        return made[-1]

    with pytest.raises(KeyboardInterrupt):
        registry.acquire("a", start)
    assert made[0].closed == 1 and registry.running() == [] and registry._entries == {}
