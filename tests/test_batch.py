"""The batch engine behind ``map()`` (``rocm_nb.client._batch``), with scripted streams: Ctrl-C while it waits."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator

import httpx
import pytest

from rocm_nb.client._accumulator import Accumulator
from rocm_nb.client._batch import Job, run
from rocm_nb.client.stream import AsyncTokenStream

pytestmark = pytest.mark.unit

HOLD_S = 30.0
"""How long each scripted request takes to answer: a Ctrl-C that is not seen waits all of it."""


@pytest.fixture
def sigint_restarts_waits() -> Iterator[None]:
    """SIGINT with SA_RESTART, as a C library may install it: a signal then wakes no blocked lock wait.

    It is the condition under which only a waiter that wakes by itself sees Ctrl-C: the same as a
    signal that lands just before the wait begins (on a busy machine, as the thread hands over the GIL).
    """
    signal.siginterrupt(signal.SIGINT, False)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # installed again, without SA_RESTART


def test_ctrl_c_during_a_batch_is_seen_even_when_the_signal_wakes_no_wait(sigint_restarts_waits: None) -> None:
    started, cancelled = threading.Event(), []

    def open_stream(job: Job, http: httpx.AsyncClient | None) -> AsyncTokenStream:
        async def respond() -> httpx.Response:
            started.set()
            try:
                await asyncio.sleep(HOLD_S)
            except asyncio.CancelledError:
                cancelled.append(job)
                raise
            request = httpx.Request("POST", "http://fake/v1/chat/completions")
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, request=request,
                                  content=b'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n')

        return AsyncTokenStream(respond, Accumulator("chat"), lambda exc, partial: None)

    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        started.wait()
        signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C or Kernel → Interrupt does

    threading.Thread(target=interrupt, daemon=True).start()
    jobs: list[Job] = [("chat", [{"role": "user", "content": f"Story {n}."}]) for n in range(3)]
    with pytest.raises(KeyboardInterrupt):
        results = run(jobs, open_stream, 2, progress=False, new_http=httpx.AsyncClient)
        pytest.fail(f"the batch ran to its end ({HOLD_S} s a request) before Ctrl-C was seen: {results!r:.300}")
    assert len(cancelled) == 2  # the two requests in flight were cancelled; the third never started
