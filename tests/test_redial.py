"""A kept-alive connection that the server drops is redialled once, not reported as an error.

The server here is a real socket server that does what llama-server (and
many proxies) do to an idle connection: it reads the next request and closes
the connection without answering. httpx cannot tell in advance in the
instant before the FIN arrives; rocm_nb's transports send the request again
on a fresh connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from rocm_nb import GenerationError, connect
from rocm_nb._redial import AsyncRedial

pytestmark = pytest.mark.unit

BODY = json.dumps({"total_slots": 3}).encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


class DroppingServer:
    """Answers the first request on each connection, then reads the next one and hangs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            if read_request(conn):
                conn.sendall(ANSWER)
            if read_request(conn):
                self.dropped += 1  # received, not answered: the connection is closed under the client

    def close(self) -> None:
        if self.sock.fileno() != -1:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the serving thread
            self.sock.close()


@pytest.fixture
def server() -> Iterator[DroppingServer]:
    running = DroppingServer()
    yield running
    running.close()


def test_a_dropped_keep_alive_connection_is_redialled(server: DroppingServer) -> None:
    client = connect(server.url)
    try:
        assert [client.props()["total_slots"] for _ in range(3)] == [3, 3, 3]
    finally:
        client.close()
    assert server.dropped >= 1 and server.connections >= 2  # it did happen, and a fresh connection served


def test_the_async_transport_redials_too(server: DroppingServer) -> None:
    async def three() -> list[int]:
        async with httpx.AsyncClient(transport=AsyncRedial(httpx.AsyncHTTPTransport())) as http:
            return [(await http.get(f"{server.url}/props")).json()["total_slots"] for _ in range(3)]

    assert asyncio.run(three()) == [3, 3, 3]
    assert server.dropped >= 1


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
