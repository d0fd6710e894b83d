"""A broken or hostile server holds neither the kernel's memory nor a request for ever (rocm_nb/client/_transports.py).

The servers are real sockets on 127.0.0.1 that answer any request with an
event stream: one sends a single event line far larger than the client's
limit, the other sends keep-alive comments every 0.1 s and never finishes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import httpx
import pytest

from rocm_nb import Client, GenerationTimeout, StreamProtocolError
from tests.support.engines import LLAMA_CPP
from tests.support.sockets import SocketServer, read_request

pytestmark = pytest.mark.unit

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
BLOCK = b"x" * 65536


class StreamingServer(SocketServer):
    """Answers each request with HEAD, then whatever ``body`` sends, until the client hangs up."""

    def __init__(self, body: Callable[[socket.socket], None]) -> None:
        self.body = body
        self.requests = 0
        self.hung_up = threading.Event()
        """Set when the client closed the connection while the server was still sending."""
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        if read_request(conn):
            self.requests += 1
            try:
                conn.sendall(HEAD)
                self.body(conn)
            except OSError:
                self.hung_up.set()


def huge_line(conn: socket.socket) -> None:
    conn.sendall(b"data: ")
    for _ in range(80):  # 5 MiB on one line, from one preallocated block
        conn.sendall(BLOCK)
    conn.sendall(b"\n\n")


def keep_alive_for_ever(conn: socket.socket) -> None:
    for _ in range(600):  # a minute at most: a hang guard, not a measurement
        conn.sendall(b": keep-alive\n\n")
        time.sleep(0.1)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket], None]], StreamingServer]]:
    servers: list[StreamingServer] = []

    def start(body: Callable[[socket.socket], None]) -> StreamingServer:
        servers.append(StreamingServer(body))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def generate(client: Client, mode: str) -> None:
    if mode == "sync":
        client.generate("Hi", max_tokens=4)
        return

    async def agenerate() -> None:
        try:
            await client.agenerate("Hi", max_tokens=4)
        finally:
            await client.aclose()

    asyncio.run(agenerate())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_event_over_the_limit_is_refused_without_buffering_it(serve: Callable[..., StreamingServer],
                                                                  mode: str) -> None:
    server = serve(huge_line)
    client = Client(server.url, max_event_bytes=2**20, server=LLAMA_CPP, model="m")
    tracemalloc.start()
    try:
        with pytest.raises(StreamProtocolError, match=r"over the limit of 1 MiB \(1048576 bytes\)"):
            generate(client, mode)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        client.close()
    assert peak < 3 * 2**20, f"{peak / 2**20:.1f} MiB held for a 5 MiB line: it was buffered"
    assert server.requests == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_keep_alive_comments_do_not_hold_a_request_past_its_deadline(serve: Callable[..., StreamingServer],
                                                                    mode: str) -> None:
    server = serve(keep_alive_for_ever)
    client = Client(server.url, deadline=1.0, server=LLAMA_CPP, model="m")
    try:
        with pytest.raises(GenerationTimeout, match=r"took longer than its 1\.0 s deadline") as raised:
            generate(client, mode)
    finally:
        client.close()
    assert raised.value.phase == "total" and raised.value.timeout == 1.0
    assert server.hung_up.wait(30), "the client ended the request while the server still sent"


def sse(parts: list[bytes], **limits: float | None) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(parts))

    return Client("http://test", transport=httpx.MockTransport(handler), server=LLAMA_CPP, model="m", **limits)  # type: ignore[arg-type]


def event(text: str, finish: str | None = None) -> str:
    return f"data: {json.dumps({'choices': [{'text': text, 'finish_reason': finish}]})}"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_the_limit_is_per_event_not_per_stream(newline: str, size: int) -> None:
    """200 events of ~60 bytes, 12 KB in all, under a 256-byte limit, cut anywhere, blank lines included."""
    text = "".join(event(f"{i:03d}") + newline * 2 for i in range(200)) + event("", "stop") + newline * 2
    raw = text.encode()
    client = sse([raw[i : i + size] for i in range(0, len(raw), size)], max_event_bytes=256)
    assert client.generate("x").text == "".join(f"{i:03d}" for i in range(200))


def test_an_event_of_many_short_lines_counts_as_one() -> None:
    lines = (event("x") + "\n") * 100  # 100 data lines, no blank line: one event of ~4 KB
    client = sse([lines.encode(), b"\n"], max_event_bytes=1024)
    with pytest.raises(StreamProtocolError, match="over the limit of 1024 bytes") as raised:
        client.generate("x")
    assert "max_event_bytes=" in "".join(raised.value.__notes__)
