"""Errors that name what is wrong (issue 11, items 11 and 12), without a llama-server.

Bad options fail before any request; malformed events, redirects and non-JSON
answers are protocol errors that name them; a client closed mid-stream says
so; a server that answers ``/props`` with a proxy's HTML page costs ``map``
its parallelism and ``%rocm_status`` one row, nothing more.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from rocm_nb.client import Client, _batch
from rocm_nb.client.completion import MAX_SCHEMA_DEPTH, Completion
from rocm_nb.client.engines import DEFAULT_CONCURRENCY
from rocm_nb.client.request import check_options, check_request
from rocm_nb.errors import ModelClosed, SchemaMismatch, StreamProtocolError
from rocm_nb.notebook.chat import ChatPanel
from rocm_nb.notebook.display import status_bundle
from rocm_nb.notebook.magics import RocmMagics
from tests.support.threads import StreamReader

pytestmark = pytest.mark.unit

DONE = 'data: {"choices": [{"text": "", "delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
HTML = "<html><body><h1>502 Bad Gateway</h1></body></html>"


def nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


# -- options: checked before any request ---------------------------------------------------------

BAD_OPTIONS = [
    ("temperature", float("nan"), "a finite number ≥ 0"),
    ("temperature", float("inf"), "a finite number ≥ 0"),
    ("temperature", -0.1, "a finite number ≥ 0"),
    ("temperature", "hot", "a finite number ≥ 0"),
    ("top_p", 0.0, r"a number in \(0, 1\]"),
    ("top_p", 1.5, r"a number in \(0, 1\]"),
    ("top_p", float("nan"), r"a number in \(0, 1\]"),
    ("min_p", -0.5, r"a number in \[0, 1\]"),
    ("min_p", float("-inf"), r"a number in \[0, 1\]"),
    ("top_k", -1, "an integer ≥ 0"),
    ("top_k", 2.5, "an integer ≥ 0"),
    ("repeat_penalty", 0.0, "a finite number > 0"),
    ("repeat_penalty", float("inf"), "a finite number > 0"),
    ("seed", 1.5, "an integer in"),
    ("seed", True, "an integer in"),
    ("seed", 2**64, "an integer in"),
    ("max_tokens", 2**31, r"a positive integer ≤ 2147483647"),
    ("max_tokens", 0, r"a positive integer ≤ 2147483647"),
    ("max_tokens", float("inf"), r"a positive integer ≤ 2147483647"),
    ("stop", "", "non-empty string"),
    ("stop", ["\n", ""], "non-empty string"),
    ("stop", [1], "non-empty string"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), BAD_OPTIONS)
def test_a_bad_option_is_a_value_error_naming_it_its_value_and_the_range(name: str, value: object,
                                                                         allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be (a |an )?.*{allowed}") as caught:
        check_options({name: value})
    assert str(caught.value).endswith(f", got {value!r}")


def test_good_options_pass_unchanged() -> None:
    good = {"temperature": 0.0, "top_p": 1.0, "min_p": 0.0, "top_k": 0, "repeat_penalty": 1.1, "seed": -1,
            "max_tokens": 2**31 - 1, "stop": ["\n"], "json_schema": nested_schema(3)}
    assert check_options(good) == good


def test_a_nan_temperature_sends_no_request_sync_async_or_map() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=DONE.encode())

    async def ahandler(request: httpx.Request) -> httpx.Response:
        return handler(request)

    client = Client("http://test", transport=httpx.MockTransport(handler),
                    async_transport=httpx.MockTransport(ahandler))
    with pytest.raises(ValueError, match="temperature must be a finite number ≥ 0, got nan"):
        client.generate("Hi", temperature=float("nan"))
    with pytest.raises(ValueError, match="temperature must be"):
        asyncio.run(client.achat([{"role": "user", "content": "Hi"}], temperature=float("inf")))
    with pytest.raises(ValueError, match="top_p must be"):
        client.map(["a", "b"], top_p=2.0, progress=False)
    assert seen == []


def test_a_deeply_nested_schema_is_a_value_error_not_a_recursion_error() -> None:
    with pytest.raises(ValueError, match=f"json_schema nests more than {MAX_SCHEMA_DEPTH} levels deep"):
        check_request("completion", "x", {"json_schema": nested_schema(500)}).body("llama.cpp")
    with pytest.raises(ValueError, match="json_schema nests more than"):
        Completion("{}", "stop", None).json(nested_schema(200))
    with pytest.raises(ValueError, match="json_schema is not plain JSON"):
        check_options({"json_schema": {"maximum": float("nan")}})


def test_a_deeply_nested_reply_is_a_schema_mismatch() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(SchemaMismatch, match="nests too deeply to parse") as caught:
        Completion(deep, "stop", None).json()
    assert caught.value.partial == deep  # the reply is kept whole where it belongs; .body is only its start
    kept = caught.value.body_limit
    assert caught.value.body.startswith(deep[:kept]) and caught.value.body.endswith(
        f"({len(deep) - kept:,} more characters not kept)")
    with pytest.raises(SchemaMismatch, match="nests too deeply to check"):
        Completion("[" * 900 + "]" * 900, "stop", None).json({"type": "array", "items": {"$ref": "#"}})


# -- malformed events, redirects, non-JSON answers ------------------------------------------------

def sse(*events: str, status: int = 200, headers: dict[str, str] | None = None) -> Client:
    body = "".join(f"data: {e}\n\n" for e in events).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers or {"content-type": "text/event-stream"}, content=body)

    async def ahandler(request: httpx.Request) -> httpx.Response:
        return handler(request)

    return Client("http://test", transport=httpx.MockTransport(handler),
                  async_transport=httpx.MockTransport(ahandler))


MALFORMED = ['{"choices": 5}', '{"choices": [5]}', '{"choices": [{"delta": "x"}]}',
             '{"timings": {"prompt_n": "abc"}}', '{"choices": [{"text": 5, "delta": {"content": 5}}]}']


@pytest.mark.parametrize("event", MALFORMED)
def test_a_malformed_event_is_a_protocol_error_naming_the_event(event: str) -> None:
    client = sse('{"choices": [{"text": "ok", "delta": {"content": "ok"}}]}', event)
    with pytest.raises(StreamProtocolError, match="not a completion chunk") as caught:
        client.chat([{"role": "user", "content": "Hi"}])
    assert event[:40] in str(caught.value) and caught.value.body == event and caught.value.partial == "ok"
    with pytest.raises(StreamProtocolError, match="not a completion chunk"):
        asyncio.run(client.achat([{"role": "user", "content": "Hi"}]))


async def test_the_chat_panel_shows_a_malformed_event_as_a_protocol_error() -> None:
    panel = ChatPanel(sse('{"choices": [5]}'))
    await panel.send("Hi")
    bubble = panel.transcript.children[-1].value
    assert "StreamProtocolError" in panel.stats.value and "lost the connection" not in bubble
    assert "not a completion chunk" in bubble and "{&quot;choices&quot;: [5]}" in bubble


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_named_with_its_status_and_location(status: int) -> None:
    where = "https://elsewhere.example/v1/completions"
    client = sse(status=status, headers={"location": where})
    with pytest.raises(StreamProtocolError, match=rf"redirected POST /v1/completions \({status} .*\) to '{where}'"):
        client.generate("Hi")
    with pytest.raises(StreamProtocolError, match=rf"redirected POST /v1/chat/completions \({status}"):
        asyncio.run(client.achat([{"role": "user", "content": "Hi"}]))
    with pytest.raises(StreamProtocolError, match=rf"redirected GET /props \({status}"):
        client.props()


def html_server() -> Client:
    """A server whose /props and /v1/models are a proxy's HTML page, and whose completions work."""
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path in ("/props", "/v1/models"):
            return httpx.Response(200, headers={"content-type": "text/html"}, text=HTML)
        hi = 'data: {"choices": [{"text": "hi", "delta": {"content": "hi"}}]}\n\n'
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=(hi + DONE).encode())

    async def ahandler(request: httpx.Request) -> httpx.Response:
        return handler(request)

    return Client("http://proxy.test", transport=httpx.MockTransport(handler),
                  async_transport=httpx.MockTransport(ahandler))


def test_non_json_props_is_a_protocol_error_and_map_uses_the_default_concurrency() -> None:
    client = html_server()
    with pytest.raises(StreamProtocolError, match=r"GET /props answered text/html, not JSON: '<html>"):
        client.props()
    assert _batch.workers(None, lambda: client._slots(None)) == DEFAULT_CONCURRENCY
    results = client.map(["a", "b", "c"], progress=False)
    assert [r.text for r in results if isinstance(r, Completion)] == ["hi"] * 3
    assert [r.text for r in asyncio.run(client.amap(["a"], progress=False))
            if isinstance(r, Completion)] == ["hi"]


def test_non_json_models_is_one_status_row_marked_with_its_error() -> None:
    client = html_server()
    with pytest.raises(StreamProtocolError, match="GET /v1/models answered text/html, not JSON"):
        client.models()
    status = client.status()
    assert status.state == "error" and status.error is not None and "not JSON" in status.error
    dead = Client("http://127.0.0.1:9").status()
    bundle = status_bundle({"proxy": status, "dead": dead}, current="proxy", notes=[])
    lines = bundle["text/plain"].splitlines()
    assert lines[1].split()[:5] == ["*", "proxy", "http://proxy.test", "remote", "error"]
    assert lines[2].split()[3] == "unreachable"
    assert any(line.startswith("⚠ proxy: GET /v1/models answered text/html") for line in lines)
    assert "⚠ proxy: GET /v1/models" in bundle["text/html"]


# -- a client closed while another consumer streams ------------------------------------------------

class _Trickle(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        try:
            for _ in range(6000):  # a minute of tokens, unless the client goes
                self.wfile.write(b'data: {"choices": [{"text": "x", "delta": {"content": "x"}}]}\n\n')
                self.wfile.flush()
                time.sleep(0.01)
        except OSError:
            pass


@pytest.fixture
def trickle() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_closing_a_client_while_another_thread_streams_says_it_was_closed(trickle: str) -> None:
    client = Client(trickle)
    reader = StreamReader(lambda: client.stream("Hi"))
    reader.wait_started()
    client.close()
    outcome = reader.outcome()
    assert isinstance(outcome, ModelClosed), outcome
    assert "was closed while a request was running" in str(outcome)
    assert "Bad file descriptor" not in str(outcome)


async def test_closing_a_client_while_a_task_streams_says_it_was_closed(trickle: str) -> None:
    client = Client(trickle)
    streaming = asyncio.Event()

    async def reader() -> None:
        async for _ in client.astream("Hi"):
            streaming.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(streaming.wait(), 60)
    await asyncio.to_thread(client.close)  # from another thread, as a second cell or callback would
    with pytest.raises(ModelClosed, match="was closed while a request was running"):
        await asyncio.wait_for(task, 60)


async def test_the_chat_panel_says_its_client_was_closed(trickle: str) -> None:
    client = Client(trickle)
    panel = ChatPanel(client)
    task = panel.send("Hi")
    for _ in range(3000):
        if "x" in panel.transcript.children[-1].value:
            break
        await asyncio.sleep(0.02)
    client.close()
    await asyncio.wait_for(task, 60)
    assert "ModelClosed" in panel.stats.value and "Bad file descriptor" not in panel.transcript.children[-1].value


# -- the magics, in an IPython shell with no model -------------------------------------------------

@pytest.mark.parametrize(("line", "cell", "message"), [
    ("--max-tokens 8", "   \n\t\n", "%%rocm_generate has no prompt"),
    ("--out print", "Hi", "--out print would hide Python's built-in print"),
    ("--out list", "Hi", "--out list would hide Python's built-in list"),
    ("--out 1st", "Hi", "--out '1st' is not a Python variable name"),
    ("--out class", "Hi", "--out 'class' is not a Python variable name"),
    ("--out a.b", "Hi", "--out 'a.b' is not a Python variable name"),
    ("--temperature nan", "Hi", "temperature must be a finite number ≥ 0, got nan"),
    ("--temperature inf", "Hi", "temperature must be a finite number ≥ 0, got inf"),
    ("--max-tokens 2147483648", "Hi", "max_tokens must be a positive integer ≤ 2147483647"),
    ('--stop ""', "Hi", "stop must be a non-empty string"),
])
def test_bad_generate_input_is_a_usage_error_before_any_model_loads(
    bare_shell: InteractiveShell, line: str, cell: str, message: str,
) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        bare_shell.run_cell_magic("rocm_generate", line, cell)
    found = bare_shell.magics_manager.registry["RocmMagics"]
    assert isinstance(found, RocmMagics) and found.models == {}, "nothing was loaded"


def test_chat_magic_refuses_a_nan_temperature(bare_shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="temperature must be a finite number"):
        bare_shell.run_line_magic("rocm_chat", "--temperature nan")


def test_status_shows_a_server_answering_html_as_one_row(bare_shell: InteractiveShell) -> None:
    found = bare_shell.magics_manager.registry["RocmMagics"]
    assert isinstance(found, RocmMagics)
    found.models["proxy"] = html_server()
    found.models["dead"] = Client("http://127.0.0.1:9")
    found.current = "dead"
    with capture_output() as out:
        bare_shell.run_line_magic("rocm_status", "")
    text = str(out.outputs[0].data["text/plain"])
    assert "⚠ proxy: GET /v1/models answered text/html, not JSON" in text
    assert [line.split()[:1] for line in text.splitlines()[1:3]] == [["proxy"], ["*"]]


def test_a_panel_with_a_bad_option_refuses_at_once() -> None:
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        ChatPanel(html_server(), temperature=float("nan"))
    with pytest.raises(TypeError, match="unknown option"):
        ChatPanel(html_server(), temprature=0.5)  # type: ignore[call-arg]
    assert json.loads(json.dumps(check_options({"stop": "\n"}))) == {"stop": "\n"}
