"""Compressed or oversized answers cannot take the kernel's memory (issue 21, item 2).

Real HTTP servers on 127.0.0.1, written here, answer as a hostile server
would: a 0.6 MB gzip (or deflate) body that inflates to one 600 MB event, a
400 MB error body, a 1 GB ``/v1/models``. The client runs in a child process
under an address-space limit (:mod:`tests.support.bounded`): before the fix
each of these raised ``MemoryError`` there (the issue measured +5.4 GB for
the first), so a regression fails the test instead of taking the machine
down. The limits are checked on decoded bytes, sync and async alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import json
import re
import socket
import struct
import zlib
from collections.abc import Callable, Iterator

import pytest

from rocm_nb import Client, GenerationError, StreamProtocolError
from tests.support.bounded import run_bounded
from tests.support.engines import LLAMA_CPP
from tests.support.sockets import SocketServer, read_request

pytestmark = pytest.mark.unit

MiB = 2**20
BUDGET = 512 * MiB
"""Address space the bounded client may add: ample for the 16 MiB limits, far short of the inflated bodies."""

Answer = tuple[int, dict[str, str], bytes]


@functools.cache
def deflated(encoding: str, head: bytes, filler: int, size: int, tail: bytes) -> bytes:
    """``head``, ``size`` bytes of ``filler`` and ``tail`` as one gzip or (zlib-wrapped) deflate stream.

    Built in half a second rather than compressed for seconds: after a full
    flush the compressor starts afresh, so every further MiB of filler
    compresses to the same 1 KB, repeated; the checksum is computed per MiB.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes([filler]) * MiB
    first = packer.compress(head + block) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    raw = first + again * (size // MiB - 1) + packer.compress(tail) + packer.flush()
    check = zlib.crc32 if encoding == "gzip" else zlib.adler32
    total = check(head)
    for _ in range(size // MiB):
        total = check(block, total)
    total = check(tail, total)
    if encoding == "gzip":
        length = (len(head) + size + len(tail)) & 0xFFFFFFFF
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + raw + struct.pack("<II", total, length)
    return b"\x78\xda" + raw + struct.pack(">I", total)


def giant_event(encoding: str) -> Answer:
    body = deflated(encoding, b"data: ", ord("x"), 600 * MiB, b"\n\n")
    return 200, {"Content-Type": "text/event-stream", "Content-Encoding": encoding}, body


def giant_error(encoding: str) -> Answer:
    body = deflated(encoding, b'{"error": {"message": "', ord("x"), 400 * MiB, b'"}}')
    return 400, {"Content-Type": "application/json", "Content-Encoding": encoding}, body


def giant_models() -> Answer:
    body = deflated("gzip", b'{"data": [', ord(" "), 1024 * MiB, b"]}")  # valid JSON, mostly whitespace
    return 200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, body


class AnsweringServer(SocketServer):
    """Answers every request with ``answer(path)``; keeps each request's head (lower-cased)."""

    def __init__(self, answer: Callable[[str], Answer]) -> None:
        self.answer = answer
        self.heads: list[str] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        request = read_request(conn)
        if not request:
            return
        head = request.partition(b"\r\n\r\n")[0].decode("latin-1")
        self.heads.append(head.lower())
        status, headers, body = self.answer(head.split(" ")[1])
        lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers.items()),
                 f"Content-Length: {len(body)}", "Connection: close", "", ""]
        with contextlib.suppress(OSError):  # the client hung up once it had read enough: what it should do
            conn.sendall("\r\n".join(lines).encode() + body)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[str], Answer]], AnsweringServer]]:
    servers: list[AnsweringServer] = []

    def start(answer: Callable[[str], Answer]) -> AnsweringServer:
        servers.append(AnsweringServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


BOUNDED_CLIENT = """
import asyncio
from rocm_nb import Client, GenerationError
from tests.support.engines import LLAMA_CPP
"""

CALLS = {"sync": "client.generate('Hi', max_tokens=4)", "async": "client.agenerate('Hi', max_tokens=4)"}


def in_bounded_client(url: str, calls: dict[str, str]) -> dict[str, dict[str, object]]:
    """Run each call (an expression on a fresh ``client``; a coroutine is awaited) in one bounded child.

    Returns, per call, the error it raised (``type``, ``message``, ``status``
    and the length of ``body``), or the ``value`` it returned.
    """
    table = "{" + ", ".join(f"{name!r}: lambda client: {call}" for name, call in calls.items()) + "}"
    return run_bounded(f"""
        async def attempt(name, call):
            client = Client({url!r}, server=LLAMA_CPP, model="m")
            out[name] = {{}}
            try:
                value = call(client)
                if asyncio.iscoroutine(value):
                    value = await value
                out[name]["value"] = repr(value)[:200]
            except GenerationError as exc:
                out[name].update(type=type(exc).__name__, message=str(exc), status=exc.status_code,
                                 body=len(exc.body))
            finally:
                await client.aclose()

        for name, call in {table}.items():
            asyncio.run(attempt(name, call))
        """, setup=BOUNDED_CLIENT, budget=BUDGET, timeout=120)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_event_is_capped_at_16_mib_decoded(serve: Callable[..., AnsweringServer], encoding: str) -> None:
    """A 0.6 MB body that inflates to one 600 MB event is refused after 16 MiB of it, sync and async."""
    server = serve(lambda path: giant_event(encoding))
    assert len(giant_event(encoding)[2]) < 2 * MiB
    for mode, out in in_bounded_client(server.url, CALLS).items():
        assert out.get("type") == "StreamProtocolError", (mode, out)
        read = re.search(r"sent an event over the limit of 16 MiB \(16777216 bytes\); refused after reading (\d+) "
                         "bytes", str(out["message"]))
        assert read and 16 * MiB < int(read[1]) <= 16 * MiB + 64 * 1024, (mode, out)  # inflated 64 KiB at a time


@pytest.mark.timeout(180)
def test_a_400_mb_error_body_is_read_and_kept_only_as_a_prefix(serve: Callable[..., AnsweringServer]) -> None:
    server = serve(lambda path: giant_error("gzip"))
    for mode, out in in_bounded_client(server.url, CALLS).items():
        assert out.get("type") == "GenerationError" and out["status"] == 400, (mode, out)
        assert int(str(out["body"])) <= GenerationError.body_limit + 100
        assert str(out["message"]).startswith("the server answered 400 to POST /v1/completions: ")


@pytest.mark.timeout(180)
def test_a_1_gb_models_list_is_refused_at_16_mib(serve: Callable[..., AnsweringServer]) -> None:
    server = serve(lambda path: giant_models())
    out = in_bounded_client(server.url, {"models": "client.models()"})["models"]
    assert out.get("type") == "StreamProtocolError", out
    assert "sent an answer over the limit of 16 MiB (16777216 bytes)" in str(out["message"])


# -- what a well-behaved compressed answer still gets, and what is refused outright ----------------


def events(*texts: str) -> bytes:
    lines = [f"data: {json.dumps({'choices': [{'text': t, 'finish_reason': None}]})}\n\n" for t in texts]
    return "".join([*lines, "data: [DONE]\n\n"]).encode()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate", "identity"])
def test_compressed_answers_decode_and_every_request_asks_for_gzip_or_deflate(
        serve: Callable[..., AnsweringServer], encoding: str) -> None:
    def pack(data: bytes) -> bytes:
        if encoding == "identity":
            return data
        wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[encoding]
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return packer.compress(data) + packer.flush()

    header = {"Content-Encoding": encoding.removeprefix("raw-")}

    def answer(path: str) -> Answer:
        if path == "/v1/models":
            return 200, {"Content-Type": "application/json", **header}, pack(b'{"data": [{"id": "m1"}]}')
        return 200, {"Content-Type": "text/event-stream", **header}, pack(events("Once", " upon"))

    server = serve(answer)
    with Client(server.url, server=LLAMA_CPP, model="m") as client:
        assert client.models() == ["m1"]
        assert client.generate("Hi").text == "Once upon"

        async def twice() -> str:
            text = (await client.agenerate("Hi")).text
            await client.aclose()
            return text

        assert asyncio.run(twice()) == "Once upon"
    assert len(server.heads) == 3
    assert all("\r\naccept-encoding: gzip, deflate\r\n" in head for head in server.heads), server.heads


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress"])
def test_an_encoding_not_asked_for_is_refused_by_name(serve: Callable[..., AnsweringServer], encoding: str) -> None:
    body = gzip.compress(gzip.compress(events("x"))) if encoding == "gzip, gzip" else b"\x00" * 64
    server = serve(lambda path: (200, {"Content-Type": "text/event-stream", "Content-Encoding": encoding}, body))
    with Client(server.url, server=LLAMA_CPP, model="m") as client, \
            pytest.raises(StreamProtocolError, match=rf"with a body encoded as '{encoding}', which rocm_nb did "
                                                     r"not ask for \(it asks for gzip, deflate\)"):
        client.generate("Hi")


def test_a_corrupt_gzip_body_is_a_protocol_error(serve: Callable[..., AnsweringServer]) -> None:
    server = serve(lambda path: (200, {"Content-Type": "application/json", "Content-Encoding": "gzip"},
                                 b"\x1f\x8b\x08\x00garbage-not-deflate" * 4))
    with Client(server.url, server=LLAMA_CPP, model="m") as client, \
            pytest.raises(StreamProtocolError, match=r"could not decode the answer .* gzip body is corrupt"):
        client.models()


def test_a_plain_error_body_over_16_kib_is_cut_and_says_so(serve: Callable[..., AnsweringServer]) -> None:
    body = b"<html>" + b"proxy error page " * 10_000 + b"</html>"  # 170 KB, not JSON
    server = serve(lambda path: (502, {"Content-Type": "text/html"}, body))
    with Client(server.url, server=LLAMA_CPP, model="m") as client, pytest.raises(GenerationError) as raised:
        client.generate("Hi")
    assert raised.value.status_code == 502
    assert raised.value.body.startswith("<html>proxy error page")
    assert len(raised.value.body) == GenerationError.body_limit
    assert "more characters not kept" not in raised.value.body  # only 16 KiB was read: nothing more to count


def test_limits_are_settable_per_client(serve: Callable[..., AnsweringServer]) -> None:
    server = serve(lambda path: (200, {"Content-Type": "application/json"}, b'{"data": []}' + b" " * 5000))
    with Client(server.url, server=LLAMA_CPP, model="m", max_body_bytes=4096) as client, \
            pytest.raises(StreamProtocolError, match="over the limit of 4096 bytes") as raised:
        client.models()
    assert "max_body_bytes=" in "".join(raised.value.__notes__)


def test_an_exception_keeps_only_a_prefix_of_any_body() -> None:
    error = StreamProtocolError("x", body="y" * (GenerationError.body_limit + 5))
    assert error.body.endswith("… (5 more characters not kept)")
