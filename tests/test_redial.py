"""No request is sent twice, and a kept-alive connection the server drops costs no error where that is safe.

The servers here are real socket servers. One does what llama-server (and
many proxies) do to an idle connection: it reads the next request and closes
the connection without answering. httpx cannot tell in advance in the
instant before the FIN arrives, and neither can anyone tell that from a
server that took the request and died. So rocm_nb keeps no connection alive
to a server on this machine (nothing to drop), resends only GETs to a remote
one, and never resends a POST: a generation on a paid endpoint must not run
twice (rocm_nb/client/_transports.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from rocm_nb import Client, GenerationError, ServerUnavailable, connect
from rocm_nb.client._transports import Redial
from tests.support.engines import LLAMA_CPP
from tests.support.sockets import SocketServer, read_request

pytestmark = pytest.mark.unit

BODY = json.dumps({"total_slots": 3}).encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class DroppingServer(SocketServer):
    """Answers the first request on each connection, then reads the next one and hangs up."""

    def __init__(self) -> None:
        self.dropped = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        if read_request(conn):
            conn.sendall(ANSWER)
        if read_request(conn):
            self.dropped += 1  # received, not answered: the connection is closed under the client


@pytest.fixture
def server() -> Iterator[DroppingServer]:
    running = DroppingServer()
    yield running
    running.close()


def test_a_server_on_this_machine_gets_a_fresh_connection_per_request(server: DroppingServer) -> None:
    client = connect(server.url)
    try:
        assert [client.props()["total_slots"] for _ in range(3)] == [3, 3, 3]
    finally:
        client.close()
    assert server.dropped == 0 and server.connections == 3  # nothing kept alive, so nothing to drop


def test_a_dropped_keep_alive_connection_is_redialled_for_a_get(server: DroppingServer) -> None:
    """What a remote server gets: connections kept alive, and a GET resent once when one was dropped."""
    with httpx.Client(transport=Redial(httpx.HTTPTransport())) as http:
        assert [http.get(f"{server.url}/props").json()["total_slots"] for _ in range(3)] == [3, 3, 3]
    assert server.dropped >= 1 and server.connections >= 2  # it did happen, and a fresh connection served


def test_a_post_on_a_dropped_keep_alive_connection_is_not_resent(server: DroppingServer) -> None:
    with httpx.Client(transport=Redial(httpx.HTTPTransport())) as http:
        http.get(f"{server.url}/props")  # the connection is kept alive; the server will drop the next request
        with pytest.raises(httpx.RemoteProtocolError) as raised:
            http.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 4})
    assert server.dropped == 1 and server.connections == 1, "received once, and not sent again"
    assert "was not resent" in "".join(raised.value.__notes__)


class TakingServer(SocketServer):
    """Reads each request whole and hangs up without answering: a server that took the request and died."""

    def __init__(self) -> None:
        self.requests = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        if read_request(conn):
            self.requests += 1


@pytest.fixture
def taking() -> Iterator[TakingServer]:
    running = TakingServer()
    yield running
    running.close()


def test_a_generation_the_server_received_is_never_sent_twice(taking: TakingServer) -> None:
    client = Client(taking.url, server=LLAMA_CPP, model="m")
    try:
        with pytest.raises(ServerUnavailable, match="lost the connection"):
            client.generate("Hi", max_tokens=4)
    finally:
        client.close()
    assert taking.requests == 1


def test_nor_from_async_code(taking: TakingServer) -> None:
    async def generate() -> None:
        async with Client(taking.url, server=LLAMA_CPP, model="m") as client:
            await client.agenerate("Hi", max_tokens=4)

    with pytest.raises(ServerUnavailable, match="lost the connection"):
        asyncio.run(generate())
    assert taking.requests == 1


def test_without_redial_the_same_server_breaks_httpx() -> None:
    """The control: plain httpx fails on the dropped connection (so the tests above prove something)."""
    server = DroppingServer()
    try:
        with httpx.Client() as http, pytest.raises(httpx.RemoteProtocolError):
            for _ in range(3):
                http.get(f"{server.url}/props")
    finally:
        server.close()


def test_a_server_that_is_gone_still_fails_clearly(server: DroppingServer) -> None:
    client = connect(server.url)
    server.close()
    try:
        with pytest.raises(GenerationError, match="could not reach"):
            client.props()
    finally:
        client.close()
