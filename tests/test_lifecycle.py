"""Lifecycles: LocalModel's states, starts and closes (real server); the async client's one loop (no server)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest

from rocm_nb import Client, LocalModel, ModelClosed
from rocm_nb._lease import ModelState
from rocm_nb.errors import ModelNotStarted
from rocm_nb.server import LlamaServer, ServerConfig
from rocm_nb.server._registry import ServerRegistry
from tests.support.engines import LLAMA_CPP
from tests.support.processes import gone, spin_until, wait_until
from tests.support.threads import StreamReader

GREEDY = {"temperature": 0.0, "seed": 7}
LONG = "Once upon a time, in a faraway kingdom, there lived"


class CountingRegistry(ServerRegistry[ServerConfig, LlamaServer]):
    """A fresh registry that counts the servers it started."""

    def __init__(self) -> None:
        super().__init__()
        self.starts = 0

    def acquire(self, key: ServerConfig, start: Callable[[], LlamaServer]) -> LlamaServer:
        def counted() -> LlamaServer:
            self.starts += 1
            return start()

        return super().acquire(key, counted)


@pytest.fixture
def registry() -> Iterator[CountingRegistry]:
    registry = CountingRegistry()
    yield registry
    assert registry.running() == [], "a test left a server running"


@pytest.mark.server
def test_properties_never_start_a_server_and_repr_shows_the_state(model_path: str, registry: CountingRegistry) -> None:
    m = LocalModel(model_path, registry=registry)
    assert m.state is ModelState.NEW and "state=new" in repr(m)
    with pytest.raises(ModelNotStarted, match=r"call model\.start\(\)"):
        _ = m.base_url
    with pytest.raises(ModelNotStarted):
        _ = m.api_key
    assert m.pid is None and registry.starts == 0
    with m:
        assert m.state is ModelState.RUNNING
        assert f"state=running pid={m.pid} {m.base_url}" in repr(m)
        pid = m.pid
    assert m.state is ModelState.CLOSED and "state=closed" in repr(m)
    with pytest.raises(ModelClosed):
        _ = m.base_url
    assert gone(pid)()


@pytest.mark.server
def test_a_dead_server_is_crashed_until_started_again(model_path: str, registry: CountingRegistry) -> None:
    with LocalModel(model_path, registry=registry) as m:
        m.server.close()  # as if it died
        assert m.state is ModelState.CRASHED and "state=crashed" in repr(m) and m.pid is None
        m.start()
        assert m.state is ModelState.RUNNING and registry.starts == 2


@pytest.mark.server
def test_two_threads_first_requests_start_one_server(model_path: str, registry: CountingRegistry) -> None:
    first, second = LocalModel(model_path, registry=registry), LocalModel(model_path, registry=registry)
    users = [first, first, second]  # two threads on one model, and a third on an equal configuration
    barrier = threading.Barrier(len(users))
    texts: list[str] = []

    def request(m: LocalModel) -> None:
        barrier.wait()
        texts.append(m.generate("Hi", max_tokens=2, **GREEDY).text)

    threads = [threading.Thread(target=request, args=(m,)) for m in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(texts) == 3 and registry.starts == 1
    [server] = registry.running()
    assert first.pid == second.pid == server.pid
    before = psutil.Process().num_fds()
    first.close()
    assert server.alive  # `second` still uses it
    second.close()
    assert not server.alive and gone(server.pid)()
    assert psutil.Process().num_fds() < before  # the clients' sockets went with them


@pytest.mark.server
def test_close_while_another_thread_streams_ends_the_server_within_a_second(
    model_path: str, registry: CountingRegistry,
) -> None:
    m = LocalModel(model_path, registry=registry).start()
    pid = m.pid
    reader = StreamReader(lambda: m.stream(LONG, max_tokens=4000, **GREEDY))
    reader.wait_started()
    began = time.monotonic()
    m.close()
    assert gone(pid)(), "close() returns once the server is gone, without waiting for the stream"
    print(f"close() mid-stream to server gone: {time.monotonic() - began:.3f} s")
    assert isinstance(reader.outcome(), ModelClosed)  # "finished" would mean close() did not cut it off


@pytest.mark.server
async def test_an_async_first_request_starts_the_model_off_the_event_loop(
    model_path: str, registry: CountingRegistry,
) -> None:
    m = LocalModel(model_path, registry=registry)
    chat = asyncio.create_task(m.achat([{"role": "user", "content": "Hi"}], max_tokens=4, **GREEDY))
    await asyncio.sleep(0)  # the chat runs up to its first wait: the start
    states = []
    while not chat.done():  # a ticker: it runs only if the start does not hold the loop
        states.append(m.state)
        await asyncio.sleep(0.005)
    assert (await chat).text
    assert states[0] is ModelState.NEW and states.count(ModelState.NEW) > 1
    pid = m.pid
    await m.aclose()
    assert m.state is ModelState.CLOSED and gone(pid)()


@pytest.mark.server
async def test_async_with_starts_and_closes(model_path: str, registry: CountingRegistry) -> None:
    async with LocalModel(model_path, registry=registry) as m:
        assert m.state is ModelState.RUNNING
        assert [p async for p in m.astream("Hi", max_tokens=3, **GREEDY)]
        pid = m.pid
    assert m.state is ModelState.CLOSED and gone(pid)()


@pytest.mark.server
async def test_close_while_a_task_streams_says_the_model_was_closed(
    model_path: str, registry: CountingRegistry,
) -> None:
    m = LocalModel(model_path, registry=registry).start()
    pid, streaming = m.pid, asyncio.Event()

    async def reader() -> None:
        async for _ in m.astream(LONG, max_tokens=4000, **GREEDY):
            streaming.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(streaming.wait(), 60)
    await asyncio.to_thread(m.close)  # another cell's close(), from another thread
    with pytest.raises(ModelClosed, match="was closed while a request was running"):
        await asyncio.wait_for(task, 60)
    assert gone(pid)(), "close() returned once the server was gone"


@pytest.mark.server
async def test_close_while_the_chat_panel_replies_shows_model_closed(
    model_path: str, registry: CountingRegistry,
) -> None:
    from rocm_nb.notebook.chat import ChatPanel

    m = LocalModel(model_path, registry=registry).start()
    pid = m.pid
    panel = ChatPanel(m, max_tokens=4000, temperature=0.0, seed=7)
    task = panel.send(LONG)
    await asyncio.sleep(0)  # the reply's bubble appears
    empty = panel.transcript.children[-1].value
    for _ in range(3000):  # until the first tokens show
        if panel.transcript.children[-1].value != empty:
            break
        await asyncio.sleep(0.02)
    assert not task.done()
    await asyncio.to_thread(m.close)
    await asyncio.wait_for(task, 60)
    bubble = panel.transcript.children[-1].value
    assert "ModelClosed" in panel.stats.value and "was closed while a request was running" in bubble
    assert "Bad file descriptor" not in bubble and "start()" not in bubble
    assert gone(pid)(), "close() returned once the server was gone"


@pytest.mark.server
def test_after_a_crash_the_magics_say_to_load_again_and_status_says_crashed(
    model_path: str, registry: CountingRegistry,
) -> None:
    from IPython.core.error import UsageError
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from rocm_nb.notebook.magics import RocmMagics
    from rocm_nb.notebook.monitor import GpuMonitor

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "rocm_nb")
    magics = ip.magics_manager.registry["RocmMagics"]
    assert isinstance(magics, RocmMagics)
    m = LocalModel(model_path, registry=registry).start()
    magics.models["crashy"] = m
    magics._load_lines["crashy"] = f"{model_path} --alias crashy"
    monitor = GpuMonitor(m, gpus=list)
    try:
        psutil.Process(m.pid).kill()  # a real crash: SIGKILL, as the out-of-memory killer sends
        wait_until(lambda: m.state is ModelState.CRASHED, timeout=30)
        for _ in range(2):  # every cell says the same, and none re-raises the old error
            with pytest.raises(UsageError, match=rf"crashy: its llama-server crashed with SIGKILL.*"
                                                 rf"run `%rocm_load {model_path} --alias crashy`"):
                ip.run_cell_magic("rocm_generate", "-a crashy --max-tokens 4", "Hi")
        with capture_output() as out:
            ip.run_line_magic("rocm_status", "")
        text = str(out.outputs[0].data["text/plain"])
        assert text.splitlines()[1].split()[3] == "crashed" and "⚠ crashy: llama-server crashed with SIGKILL" in text
        monitor.refresh()
        assert "crashed" in monitor.sections[-1]["note"]
    finally:
        monitor.close()
        magics.models.clear()
        m.close()


# -- the async client and its event loop (no server) ---------------------------------------


def sse(request: httpx.Request) -> httpx.Response:
    done = {"choices": [{"text": "ok", "index": 0, "finish_reason": "stop"}]}
    return httpx.Response(200, headers={"content-type": "text/event-stream"},
                          content=f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())


@pytest.mark.unit
def test_each_event_loop_gets_its_own_async_client_and_close_reaches_them_all() -> None:
    """A kernel may run a widget's callback and a cell on different loops: both must work."""
    client = Client("http://test", async_transport=httpx.MockTransport(sse), server=LLAMA_CPP, model="m")
    assert asyncio.run(client.agenerate("Hi")).text == "ok"
    assert asyncio.run(client.agenerate("Hi")).text == "ok"  # the first loop has ended: a fresh async client
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert first.run_until_complete(client.agenerate("Hi")).text == "ok"
        assert second.run_until_complete(client.agenerate("Hi")).text == "ok"  # the first is still open
        on_first = first.run_until_complete(_current_http(client))
        on_second = second.run_until_complete(_current_http(client))
        assert on_first is not on_second and len(client._asyncs) == 2  # the ended loops' clients are gone
        second.run_until_complete(client.aclose())
        assert on_second.is_closed
        first.run_until_complete(spin_until(lambda: on_first.is_closed))  # the close scheduled on the first loop
    finally:
        first.close()
        second.close()
    with pytest.raises(ModelClosed):
        client.generate("Hi")


async def _current_http(client: Client) -> httpx.AsyncClient:
    return client._ahttp()


@pytest.mark.unit
async def test_async_with_closes_the_async_client_on_its_loop() -> None:
    async with Client("http://test", async_transport=httpx.MockTransport(sse), server=LLAMA_CPP, model="m") as client:
        assert (await client.agenerate("Hi")).text == "ok"
        http = client._ahttp()
    assert http.is_closed
    with pytest.raises(ModelClosed):
        await client.agenerate("Hi")
    with pytest.raises(ModelClosed):
        client.__enter__()  # a closed client does not reopen


@pytest.mark.unit
async def test_close_from_another_thread_closes_the_async_client_on_its_loop() -> None:
    client = Client("http://test", async_transport=httpx.MockTransport(sse), server=LLAMA_CPP, model="m")
    await client.agenerate("Hi")
    http = client._ahttp()
    await asyncio.to_thread(client.close)
    await spin_until(lambda: http.is_closed)  # the close was handed to this loop: let it run
