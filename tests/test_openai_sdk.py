"""The real llama-server as other code sees it: every base-URL form through connect(), and the official openai SDK."""

from __future__ import annotations

import asyncio

import openai
import pytest

from rocm_nb import Completion, LocalModel, connect

pytestmark = pytest.mark.server

HI = [{"role": "user", "content": "Say hi."}]
GREEDY = {"temperature": 0.0, "seed": 5, "max_tokens": 6}


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_every_api_path_with_every_base_url_form(model: LocalModel, suffix: str) -> None:
    expected = model.chat(HI, **GREEDY).text
    with connect(model.base_url + suffix, api_key=model.api_key) as client:
        assert client.base_url == model.base_url
        assert client.server_info.engine == "llama.cpp" and client.capabilities.grammar
        assert client.capabilities.slots == model.config.parallel
        assert client.model == client.models()[0]
        assert client.chat(HI, **GREEDY).text == expected
        assert "".join(client.chat_stream(HI, **GREEDY)) == expected
        assert asyncio.run(client.achat(HI, **GREEDY)).text == expected
        generated = client.generate("2 + 2 =", **GREEDY)
        assert generated.usage is not None and generated.usage.completion_tokens == generated.timings.predicted_tokens  # type: ignore[union-attr]
        assert generated.timings is not None and generated.timings.source == "server"
        assert all(isinstance(r, Completion) for r in client.map(["a", "b"], progress=False, **GREEDY))
        assert client.tokenize("Hello") == model.tokenize("Hello")
        assert client.detokenize(client.tokenize("Hello")) == "Hello"
        assert client.props()["total_slots"] == model.config.parallel
        assert client.health()
        formatted = client.chat(HI, json_schema={"type": "object", "required": ["a"],
                                                 "properties": {"a": {"type": "integer"}}}, max_tokens=24)
        assert isinstance(formatted.json()["a"], int)  # json_schema went as response_format, and held


def test_the_official_openai_sdk_uses_the_server(model: LocalModel) -> None:
    sdk = openai.OpenAI(base_url=model.base_url + "/v1", api_key=model.api_key)
    name = sdk.models.list().data[0].id
    reply = sdk.chat.completions.create(model=name, messages=HI, temperature=0, max_tokens=6)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == model.chat(HI, **GREEDY).text
    streamed = sdk.chat.completions.create(model=name, messages=HI, temperature=0, max_tokens=6,  # type: ignore[arg-type]
                                           stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = sdk.completions.create(model=name, prompt="2 + 2 =", temperature=0, max_tokens=4)
    assert completion.choices[0].text == model.generate("2 + 2 =", temperature=0.0, max_tokens=4).text
    wrong = openai.OpenAI(base_url=model.base_url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=name, messages=HI, max_tokens=2)  # type: ignore[arg-type]
