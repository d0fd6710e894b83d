"""Unit tests of the client's stream handling through httpx.MockTransport (no server)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterable, Iterator

import httpx
import pytest

from rocm_nb.client import Client
from rocm_nb.client._generation import parse_metrics
from rocm_nb.client.completion import Completion
from rocm_nb.client.request import check_request
from rocm_nb.errors import (
    GenerationError,
    GenerationTimeout,
    ModelClosed,
    SchemaMismatch,
    ServerUnavailable,
    StreamProtocolError,
)
from tests.support.engines import LLAMA_CPP

pytestmark = pytest.mark.unit



def chunk(text: str, finish: str | None = None, timings: dict[str, float] | None = None) -> str:
    """One completion event as llama-server writes it: raw UTF-8, not ``\\u`` escapes (``ensure_ascii=False``)."""
    body: dict[str, object] = {"choices": [{"text": text, "index": 0, "finish_reason": finish}]}
    if timings:
        body["timings"] = timings
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def sse_client(
    parts: Iterable[bytes], status: int = 200, content_type: str = "text/event-stream",
    seen: list[httpx.Request] | None = None,
) -> Client:
    parts = list(parts)

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, headers={"content-type": content_type}, content=iter(parts))

    return Client("http://127.0.0.1:9", "key", transport=httpx.MockTransport(handler), server=LLAMA_CPP, model="m")


def stream_of(text: str) -> list[bytes]:
    return [text.encode()]


GOOD = chunk("Once") + chunk(" upon") + chunk(" a time", "length", {
    "prompt_n": 3, "prompt_ms": 1.5, "predicted_n": 3, "predicted_ms": 3.0,
    "predicted_per_second": 1000.0, "cache_n": 0,
}) + "data: [DONE]\n\n"


def test_pieces_timings_and_request() -> None:
    seen: list[httpx.Request] = []
    client = sse_client(stream_of(GOOD), seen=seen)
    stream = client.stream("Hi", max_tokens=3, temperature=0.0, stop="\n")
    assert list(stream) == ["Once", " upon", " a time"]
    assert stream.completion is not None
    assert stream.completion.text == "Once upon a time"
    assert stream.completion.finish_reason == "length"
    assert stream.completion.timings is not None
    assert stream.completion.timings.predicted_per_second == 1000.0
    assert stream.completion.timings.cached_tokens == 0
    request = seen[0]
    assert request.url.path == "/v1/completions"
    assert request.headers["authorization"] == "Bearer key"
    assert json.loads(request.content) == {
        "stream": True, "prompt": "Hi", "max_tokens": 3, "temperature": 0.0, "stop": ["\n"], "model": "m",
        "stream_options": {"include_usage": True},
    }


UNICODE_BREAKS = "one\u2028two\u2029three\u0085four"
"""Line and paragraph separators and NEL: line ends to ``str.splitlines``, not to SSE (httpx-sse < 0.4.2 split)."""


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_arbitrary_chunk_boundaries_and_split_utf8(size: int) -> None:
    raw = (chunk("Grüße ") + chunk(UNICODE_BREAKS) + chunk(" 🙂", "stop") + "data: [DONE]\n\n").encode()
    assert all(c.encode() in raw for c in "ü\u2028\u2029\u0085🙂"), "raw UTF-8 on the wire, not \\u escapes"
    client = sse_client([raw[i : i + size] for i in range(0, len(raw), size)])
    assert client.generate("x").text == "Grüße " + UNICODE_BREAKS + " 🙂"


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_an_emoji_split_between_two_chunks(cut: int) -> None:
    raw = (chunk("a🙂b", "stop") + "data: [DONE]\n\n").encode()
    at = raw.index("🙂".encode()) + cut  # inside the emoji's four bytes
    assert sse_client([raw[:at], raw[at:]]).generate("x").text == "a🙂b"


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_a_unicode_line_separator_in_a_chat_delta_is_text(separator: str) -> None:
    event = {"choices": [{"delta": {"content": f"a{separator}b"}, "finish_reason": "stop"}]}
    raw = f"data: {json.dumps(event, ensure_ascii=False)}\n\ndata: [DONE]\n\n".encode()
    assert separator.encode() in raw
    assert sse_client([raw]).chat([{"role": "user", "content": "Hi"}]).text == f"a{separator}b"


def test_crlf_comments_and_keepalives() -> None:
    text = ": keep-alive\r\n\r\n" + GOOD.replace("\n", "\r\n") + ": bye\r\n\r\n"
    assert sse_client(stream_of(text)).generate("x").text == "Once upon a time"


def test_chat_deltas() -> None:
    events = [
        {"choices": [{"delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": "Hello"}, "finish_reason": None}]},
        {"choices": [{"delta": {}, "finish_reason": "stop"}]},
    ]
    text = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"
    seen: list[httpx.Request] = []
    reply = sse_client(stream_of(text), seen=seen).chat([{"role": "user", "content": "Hi"}])
    assert reply.text == "Hello"
    assert reply.finish_reason == "stop"
    assert seen[0].url.path == "/v1/chat/completions"


@pytest.mark.parametrize(
    ("body", "message", "cause"),
    [
        (chunk("a") + "data: {not json\n\n", r"malformed event .*'\{not json'", StreamProtocolError),
        (chunk("a") + 'data: {"error": {"code": 500, "message": "boom"}}\n\n', "boom", GenerationError),
        (chunk("a") + "data: [1, 2]\n\n", r"unexpected event: '\[1, 2\]'", StreamProtocolError),
        (chunk("a"), "ended before the server finished", StreamProtocolError),
    ],
)
def test_bad_streams_raise_with_partial(body: str, message: str, cause: type[GenerationError]) -> None:
    with pytest.raises(GenerationError, match=message) as info:
        sse_client(stream_of(body)).generate("x")
    assert type(info.value) is cause
    assert info.value.partial == "a"


def test_a_malformed_event_keeps_the_event_and_a_truncated_stream_says_where_the_text_is() -> None:
    with pytest.raises(StreamProtocolError) as malformed:
        sse_client(stream_of(chunk("a") + "data: {not json\n\n")).generate("x")
    assert malformed.value.body == "{not json"
    with pytest.raises(StreamProtocolError) as cut:
        sse_client(stream_of(chunk("a"))).generate("x")
    assert ".partial" not in str(cut.value) and any(".partial" in note for note in cut.value.__notes__)


def test_http_error_status_and_body() -> None:
    body = json.dumps({"error": {"code": 400, "message": "the request exceeds the context"}})
    client = sse_client(stream_of(body), status=400, content_type="application/json")
    with pytest.raises(GenerationError, match="exceeds the context") as info:
        client.generate("x")
    assert info.value.status_code == 400


def test_not_an_event_stream() -> None:
    client = sse_client(stream_of("<html></html>"), content_type="text/html")
    with pytest.raises(StreamProtocolError, match="expected an event stream from /v1/completions, got 'text/html'"):
        client.generate("x")


@pytest.fixture
def refusing() -> Iterator[str]:
    """The URL of a real port where nothing listens: connecting is refused at once."""
    with socket.socket() as bound:  # bound, never listening: the kernel refuses connections
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


def test_a_refused_connection_is_server_unavailable(refusing: str) -> None:
    with Client(refusing) as client:
        for call in (lambda: client.generate("x"), client.props):
            with pytest.raises(ServerUnavailable, match=f"could not reach {refusing}/") as info:
                call()
            assert isinstance(info.value, GenerationError) and isinstance(info.value, ConnectionError)
            assert "\n" not in str(info.value) and "Is the server running" in info.value.__notes__[-1]


async def test_a_refused_connection_is_server_unavailable_async_too(refusing: str) -> None:
    with pytest.raises(ServerUnavailable):
        await Client(refusing).agenerate("x")


@pytest.fixture
def silent() -> Iterator[str]:
    """The URL of a real server that accepts connections, reads the request and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed by the fixture
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def test_a_server_that_never_answers_is_a_read_timeout_with_its_own_limit(silent: str) -> None:
    with Client(silent, timeout=0.3) as client, pytest.raises(GenerationTimeout) as info:
        client.generate("x")
    error = info.value
    assert isinstance(error, GenerationError) and isinstance(error, TimeoutError)
    assert (error.phase, error.timeout) == ("read", 0.3)
    assert str(error) == "the server sent nothing for 0.3 s and looks hung"
    assert any("larger timeout=" in note for note in error.__notes__)


@pytest.mark.parametrize(
    ("timeout", "phase", "message"),
    [
        (httpx.ConnectTimeout, "connect", r"no connection to http://test/v1/completions within the 10\.0 s connect"),
        (httpx.ReadTimeout, "read", r"sent nothing for 600\.0 s"),
        (httpx.WriteTimeout, "write", r"could not send the request .* within the 600\.0 s write timeout"),
        (httpx.PoolTimeout, "pool", r"no free connection .* within the 600\.0 s pool timeout"),
    ],
)
def test_each_timeout_is_reported_as_its_own_phase(timeout: type[httpx.TimeoutException], phase: str,
                                                   message: str) -> None:
    """A 10 s connect timeout is never reported as a 600 s read stall."""
    def handler(request: httpx.Request) -> httpx.Response:
        raise timeout("timed out", request=request)

    client = Client("http://test", transport=httpx.MockTransport(handler), server=LLAMA_CPP, model="m")
    with pytest.raises(GenerationTimeout, match=message) as info:
        client.generate("x")
    assert info.value.phase == phase
    with pytest.raises(GenerationTimeout, match=message.replace("v1/completions", "props")):
        client.props()


def test_a_lost_connection_is_server_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    client = Client("http://test", transport=httpx.MockTransport(handler), server=LLAMA_CPP, model="m")
    with pytest.raises(ServerUnavailable, match="lost the connection to http://test/v1/completions"):
        client.generate("x")


def test_a_reply_that_breaks_its_schema_is_a_schema_mismatch() -> None:
    with pytest.raises(SchemaMismatch, match=r"at \$\.n: 'x' is not of type 'integer'") as info:
        Completion('{"n": "x"}', "stop", None).json({"properties": {"n": {"type": "integer"}}})
    assert isinstance(info.value, ValueError) and info.value.body == '{"n": "x"}'
    with pytest.raises(SchemaMismatch, match=r"not valid JSON.*cut off at max_tokens") as cut:
        Completion('{"n": ', "length", None).json()
    assert "\n" not in str(cut.value) and cut.value.__notes__[0] == "Allow more tokens (max_tokens=)."


def test_failure_hook_gives_a_better_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed", request=request)

    def hook(exc: Exception, partial: str) -> GenerationError:
        return GenerationError("the server died", partial=partial)

    client = Client("http://test", transport=httpx.MockTransport(handler), _on_failure=hook, server=LLAMA_CPP,
                    model="m")
    with pytest.raises(GenerationError, match="the server died"):
        client.generate("x")


def test_read_timeout_means_hung_server() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = Client("http://test", transport=httpx.MockTransport(handler), timeout=0.5)
    with pytest.raises(GenerationError, match=r"sent nothing for 0\.5 s"):
        client.generate("x")


def test_a_failure_hook_is_not_asked_about_a_timeout() -> None:
    """A hung server is not a dead one: the read timeout is reported, not a diagnosis."""
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def hook(exc: Exception, partial: str) -> GenerationError:
        raise AssertionError("asked")

    client = Client("http://test", transport=httpx.MockTransport(handler), _on_failure=hook, server=LLAMA_CPP,
                    model="m")
    with pytest.raises(GenerationTimeout):
        client.generate("x")


async def test_async_twin() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=GOOD.encode())

    client = Client("http://test", async_transport=httpx.MockTransport(handler), server=LLAMA_CPP, model="m")
    pieces = [piece async for piece in client.astream("x")]
    assert pieces == ["Once", " upon", " a time"]
    assert (await client.agenerate("x")).text == "Once upon a time"


def test_option_checks() -> None:
    with pytest.raises(TypeError, match=r"unknown option.*temprature"):
        check_request("completion", "x", {"temprature": 1}).body("llama.cpp")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
            check_request("completion", "x", {"max_tokens": bad}).body("llama.cpp")
    with pytest.raises(TypeError, match="list of messages"):
        check_request("chat", "x", {}).body("llama.cpp")
    assert check_request("completion", "x", {}).body("llama.cpp")["max_tokens"] == 512


def test_closed_client() -> None:
    client = Client("http://test")
    client.close()
    client.close()
    with pytest.raises(ModelClosed):
        client.generate("x")


def test_parse_metrics() -> None:
    text = "# HELP a b\n# TYPE a counter\nllamacpp:n_decode_total 10\nllamacpp:requests_processing 0\n"
    assert parse_metrics(text) == {"llamacpp:n_decode_total": 10.0, "llamacpp:requests_processing": 0.0}
