"""connect() to engines that are not llama.cpp: strict fakes of vLLM and Ollama (see tests/support/fake_engines.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rocm_nb import AmbiguousModel, Completion, GenerationError, ServerUnavailable, connect
from rocm_nb.client.engines import refuse, translate
from tests.support.fake_engines import OLLAMA, REPLY, VLLM, Engine, Log, self_signed, serve

pytestmark = pytest.mark.unit

ANSWER = "".join(REPLY)
HI = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(params=[VLLM, OLLAMA], ids=lambda engine: engine.name)
def engine(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, str, Log]]:
    with serve(request.param) as (url, log):
        yield request.param, url, log


def test_the_fakes_refuse_what_the_old_client_sent(engine: tuple[Engine, str, Log]) -> None:
    """The fakes are strict: a body without a model (what rocm_nb sent before) is refused; usage only when asked."""
    _, url, log = engine
    old = httpx.post(f"{url}/v1/chat/completions", json={"stream": True, "messages": HI, "max_tokens": 8})
    assert old.status_code == 400 and "model" in old.text
    unasked = httpx.post(f"{url}/v1/completions", json={"model": engine[0].model, "prompt": "x", "stream": True})
    assert unasked.status_code == 200 and "usage" not in unasked.text and len(log.bodies) == 2


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_every_api_path_names_the_model_and_reads_usage(engine: tuple[Engine, str, Log], suffix: str) -> None:
    kind, url, log = engine
    with connect(url + suffix, api_key="gateway-key", headers={"X-API-Key": "gateway-key"}) as client:
        assert client.server_info.engine == kind.name and client.model == kind.model
        assert client.models() == [kind.model]
        assert client.capabilities.grammar is False and client.capabilities.slots is None
        results = [
            client.chat(HI, max_tokens=8, temperature=0.0, seed=1),
            client.generate("2 + 2 =", max_tokens=8, stop="\n"),
            asyncio.run(client.achat(HI, max_tokens=8)),
            *[r for r in client.map(["a", "b"], max_tokens=8, progress=False) if isinstance(r, Completion)],
        ]
        streamed = "".join(client.chat_stream(HI, max_tokens=8))
    assert streamed == ANSWER and [r.text for r in results] == [ANSWER] * 5
    for result in results:
        assert result.usage is not None and result.usage.completion_tokens == len(REPLY)
        assert result.timings is not None and result.timings.source == "client"
        assert "measured by the client" in result.stats()
    assert len(log.bodies) == 6
    assert all(body["model"] == kind.model and body["stream_options"] == {"include_usage": True}
               for body in log.bodies)
    assert log.unknown == [], f"fields {kind.name} does not take were sent"
    assert all(h["x-api-key"] == "gateway-key" and h["authorization"] == "Bearer gateway-key" for h in log.headers)


def test_options_are_said_the_way_each_engine_takes_them(engine: tuple[Engine, str, Log]) -> None:
    kind, url, log = engine
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    with connect(url + "/v1") as client:
        client.chat(HI, json_schema=schema, cache_prompt=True, max_tokens=8)
        assert log.bodies[-1]["response_format"] == {
            "type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}
        assert "cache_prompt" not in log.bodies[-1]
        sent = len(log.bodies)
        with pytest.raises(ValueError, match=r"grammar is not supported by (vLLM|Ollama).*json_schema="):
            client.chat(HI, grammar='root ::= "yes"')
        with pytest.raises(ValueError, match="grammar is not supported"):
            asyncio.run(client.achat(HI, grammar='root ::= "yes"'))
        assert len(log.bodies) == sent, "refused before any request"
        if kind is VLLM:
            client.generate("x", repeat_penalty=1.1, top_k=20, min_p=0.05)
            assert log.bodies[-1]["repetition_penalty"] == 1.1 and "repeat_penalty" not in log.bodies[-1]
        else:
            with pytest.raises(ValueError, match="top_k is not supported by Ollama"):
                client.generate("x", top_k=20)
            with pytest.raises(ValueError, match="repeat_penalty is not supported by Ollama"):
                client.chat(HI, repeat_penalty=1.1)
            assert len(log.bodies) == sent
    assert log.unknown == []


def test_a_model_the_server_does_not_serve_is_its_error(engine: tuple[Engine, str, Log]) -> None:
    _, url, _ = engine
    with connect(url, model="no-such-model") as client, pytest.raises(GenerationError, match="no-such-model") as info:
        client.chat(HI)
    assert getattr(info.value, "status_code", None) == 404


def test_several_models_without_model_is_an_error_naming_them() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "chat"}, {"id": "embed"}]})
        return httpx.Response(404, json={"error": "not found"})

    from rocm_nb.client import Client

    client = Client("http://gateway.test/v1", transport=httpx.MockTransport(handler))
    with pytest.raises(AmbiguousModel, match=r"serves 2 models \(chat, embed\): say which with model=") as info:
        client.chat(HI)
    assert info.value.models == ["chat", "embed"]


def test_translation_table() -> None:
    assert translate({"json_schema": {}}, "llama.cpp", "chat") == {
        "response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": {}}}}
    assert translate({"json_schema": {}}, "llama.cpp", "completion") == {"json_schema": {}}
    assert translate({"grammar": "g", "cache_prompt": True}, "llama.cpp", "chat") == {"grammar": "g",
                                                                                      "cache_prompt": True}
    assert translate({"repeat_penalty": 1.2}, "sglang", "chat") == {"repetition_penalty": 1.2}
    assert translate({"cache_prompt": False, "top_k": 5}, "openai", "chat") == {"top_k": 5}
    with pytest.raises(ValueError, match="json_schema is not supported by Ollama's /v1/completions"):
        refuse({"json_schema": {}}, "ollama", "completion")


def test_tls_is_verified_against_the_system_a_ca_bundle_or_not_at_all(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with serve(VLLM, tls=(cert, key)) as (url, log):
        untrusted = pytest.raises(ServerUnavailable, match=r"(?i)certificate verify failed")
        with connect(url + "/v1") as strict, untrusted as info:
            strict.chat(HI)
        assert "verify='/path/to/ca.pem'" in "".join(info.value.__notes__)
        assert log.bodies == []
        with connect(url + "/v1", verify=cert) as trusting:
            assert trusting.chat(HI).text == ANSWER and trusting.server_info.engine == "vllm"
        with connect(url + "/v1", verify=False) as unchecked:
            assert unchecked.generate("x").text == ANSWER
