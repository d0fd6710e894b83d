"""The batch engine behind ``map``/``amap``: many prompts over a server's parallel slots.

A batch keeps up to ``workers`` requests in flight and returns one result per
prompt, in input order; an item that fails holds its exception, and the
others still run. :func:`arun` runs on the caller's event loop.
:func:`run` is the blocking form: the batch gets an event loop of its own in
a thread (anyio's blocking portal: a notebook's main thread already runs a
loop), while the calling thread draws the progress bar and stays
interruptible, so Ctrl-C cancels the requests in flight, on the server too.

What a request is, is the caller's: it passes ``open_stream(job, http)``,
which returns the :class:`~rocm_nb.client.stream.AsyncTokenStream` of one item.

Example:
    >>> plan(["Name a colour.", [{"role": "user", "content": "Hi"}]], chat=False, options={})[0]
    [('completion', 'Name a colour.'), ('chat', [{'role': 'user', 'content': 'Hi'}])]
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rocm_nb._units import positive_int
from rocm_nb.client.completion import Completion, Kind, Message
from rocm_nb.client.engines import DEFAULT_CONCURRENCY
from rocm_nb.client.request import check_options
from rocm_nb.errors import RocmNbError

if TYPE_CHECKING:
    import httpx
    from tqdm import tqdm

    from rocm_nb.client.stream import AsyncTokenStream

__all__ = ["Job", "Prompt", "Result", "adrain", "arun", "plan", "run", "workers"]

Prompt = str | Sequence[Message]
"""One item of ``map``: a prompt string or a list of chat messages."""

Job = tuple[Kind, Any]
"""How one item is sent: ``("chat", messages)`` or ``("completion", prompt)``."""

Result = Completion | Exception
"""One item's outcome: its :class:`Completion`, or the exception it failed with."""

OpenStream = Callable[[Job, "httpx.AsyncClient | None"], "AsyncTokenStream"]


def plan(prompts: Iterable[Prompt], *, chat: bool, options: Mapping[str, Any]) -> tuple[list[Job], dict[str, Any]]:
    """The jobs of a batch, and its options checked once: bad ones would fail every item alike, so they raise now.

    A string is sent as a user message (``chat=True``) or as a plain prompt.
    An item that is not a prompt fails alone, when its request is made.

    Example:
        >>> plan(["Hi"], chat=True, options={"max_tokens": 8})
        ([('chat', [{'role': 'user', 'content': 'Hi'}])], {'max_tokens': 8})
    """
    jobs = [_job(prompt, chat) for prompt in prompts]
    kinds = {kind for kind, _ in jobs}
    return jobs, check_options(options, "completion" if "completion" in kinds else "chat" if kinds else None)


def _job(prompt: Prompt, chat: bool) -> Job:
    if isinstance(prompt, str):
        return ("chat", [{"role": "user", "content": prompt}]) if chat else ("completion", prompt)
    return "chat", prompt


def workers(concurrency: int | None, slots_of: Callable[[], int | None]) -> int:
    """How many requests a batch keeps in flight: ``concurrency``, else the server's slots.

    ``slots_of()`` says how many requests the server serves at once
    (llama-server's slots); a server that does not say, or cannot be asked,
    gets :data:`~rocm_nb.client.engines.DEFAULT_CONCURRENCY`.

    Example:
        >>> workers(None, lambda: 4), workers(2, lambda: 4), workers(None, lambda: None)
        (4, 2, 8)
    """
    if concurrency is not None:
        return positive_int("concurrency", concurrency)
    try:
        slots = slots_of()
    except RocmNbError:
        return DEFAULT_CONCURRENCY
    return slots if slots is not None and slots > 0 else DEFAULT_CONCURRENCY


def _bar(total: int, show: bool) -> tqdm[Any]:
    from tqdm.auto import tqdm  # imported here: `import rocm_nb` stays cheap

    return tqdm(total=total, disable=not show, desc="map", unit="prompt")


async def adrain(stream: AsyncTokenStream) -> Completion:
    """Read an async stream to its end and return its completion (for ``achat``, ``agenerate`` and batches).

    Example:
        >>> completion = await adrain(model.astream("Hi", max_tokens=4))  # doctest: +SKIP
    """
    async with stream:
        async for _ in stream:
            pass
    assert stream.completion is not None
    return stream.completion


async def _run(
    jobs: Sequence[Job], open_stream: OpenStream, workers: int, done: Callable[[], object],
    http: httpx.AsyncClient | None,
) -> list[Result]:
    """Run ``jobs`` with ``workers`` requests in flight; an item's error becomes its result."""
    import asyncio

    results: dict[int, Result] = {}
    pending = iter(enumerate(jobs))

    async def worker() -> None:
        for index, job in pending:
            try:
                results[index] = await adrain(open_stream(job, http))
            except Exception as exc:  # recorded for its item: the batch goes on
                results[index] = exc
            done()

    async with asyncio.TaskGroup() as group:  # cancelling the batch cancels every request in flight
        for _ in range(min(workers, len(jobs))):
            group.create_task(worker())
    return [results[index] for index in range(len(jobs))]


async def arun(jobs: Sequence[Job], open_stream: OpenStream, workers: int, *, progress: bool) -> list[Result]:
    """Run a batch on the running loop; cancelling it cancels the requests in flight.

    ``open_stream`` gets ``None`` for ``http``: it uses its own async client.

    Example:
        >>> results = await arun(jobs, open_stream, 4, progress=False)  # doctest: +SKIP
    """
    with _bar(len(jobs), progress) as bar:
        return await _run(jobs, open_stream, workers, bar.update, None)


def run(
    jobs: Sequence[Job], open_stream: OpenStream, workers: int, *, progress: bool,
    new_http: Callable[[], httpx.AsyncClient],
) -> list[Result]:
    """Run a batch from blocking code, on an event loop of its own in a thread.

    ``new_http()`` makes the batch's async client, used and closed on that
    loop. The calling thread draws the progress bar; Ctrl-C there (Kernel →
    Interrupt) leaves the portal with the exception, which cancels the
    batch's requests and waits for them to close before it propagates.

    Example:
        >>> results = run(jobs, open_stream, 4, progress=True, new_http=client._new_ahttp)  # doctest: +SKIP
    """
    import anyio
    from anyio.from_thread import start_blocking_portal

    ticks: queue.SimpleQueue[bool] = queue.SimpleQueue()  # True per finished item, False at the end

    async def batch() -> list[Result]:
        http = new_http()
        try:
            return await _run(jobs, open_stream, workers, lambda: ticks.put(True), http)
        finally:
            with anyio.CancelScope(shield=True):  # cancelled or not, the connections close
                await http.aclose()
            ticks.put(False)

    with _bar(len(jobs), progress) as bar, start_blocking_portal(name="rocm_nb-map") as portal:
        outcome = portal.start_task_soon(batch)
        while _next_tick(ticks):
            bar.update()
        return outcome.result()


_WAKE_S = 0.2
"""How often the calling thread wakes while it waits for the batch: the longest a Ctrl-C can wait to be seen."""


def _next_tick(ticks: queue.SimpleQueue[bool]) -> bool:
    """The next tick, waited for in short naps rather than one long block.

    Python runs a signal's handler (Ctrl-C's ``KeyboardInterrupt``) only
    between bytecodes; a thread blocked in a lock wakes for it only if the
    signal interrupts that very wait. A signal that lands while the thread
    is on its way into the wait (the moment it hands the GIL to the batch's
    thread, which a busy machine can stretch) wakes nothing, and one long
    block would then sit out the whole batch. Each nap returns to Python, so
    the handler runs within :data:`_WAKE_S` whatever the timing.

    Example:
        >>> ticks = queue.SimpleQueue(); ticks.put(True)
        >>> _next_tick(ticks)
        True
    """
    while True:
        try:
            return ticks.get(timeout=_WAKE_S)
        except queue.Empty:
            continue
