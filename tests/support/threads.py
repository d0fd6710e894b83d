"""Work that tests run in threads: calls made all at once, and a stream read while the test does something else."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

JOIN_S = 600.0
"""How long a test waits for its threads: a hang guard, not a measurement."""


def run_together(*calls: Callable[[], T]) -> list[T]:
    """Run each call in a thread of its own, all at once; return their results in order.

    An exception raised in a thread is not lost: once every thread has ended, the first one is raised here.
    """
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], T]) -> None:
        try:
            results[index] = call()
        except BaseException as exc:  # raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), f"a call did not return within {JOIN_S:.0f} s"
    if errors:
        raise errors[0]
    return [results[i] for i in range(len(calls))]


class StreamReader:
    """A stream read to its end in a thread of its own (as another thread or cell would), while the test acts.

    ``started`` is set once ``after`` pieces have arrived; :meth:`outcome` waits for the thread and says
    what ended the reading: the exception raised, or ``"finished"`` when the stream ran to its end.
    """

    def __init__(self, open_stream: Callable[[], Iterable[object]], after: int = 4) -> None:
        self.started = threading.Event()
        self._outcome: list[BaseException | str] = []
        self._thread = threading.Thread(target=self._read, args=(open_stream, after))
        self._thread.start()

    def _read(self, open_stream: Callable[[], Iterable[object]], after: int) -> None:
        try:
            for count, _ in enumerate(open_stream(), start=1):
                if count == after:
                    self.started.set()
            self._outcome.append("finished")
        except Exception as exc:  # what the test asserts on
            self._outcome.append(exc)
        finally:
            self.started.set()  # also when it ended early: wait_started() returns, and outcome() says how

    def wait_started(self) -> None:
        """Wait until the stream is flowing (a hang guard of :data:`JOIN_S`)."""
        assert self.started.wait(JOIN_S), f"the stream did not start within {JOIN_S:.0f} s"

    def outcome(self) -> BaseException | str:
        """What ended the reading, once the thread has ended."""
        self._thread.join(JOIN_S)
        assert not self._thread.is_alive(), f"the reading did not end within {JOIN_S:.0f} s"
        [outcome] = self._outcome
        return outcome
