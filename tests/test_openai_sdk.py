"""The real llama-server as other code sees it: every base-URL form through connect(), and the official openai SDK."""

from __future__ import annotations

import asyncio

import openai
import pytest

from rocm_nb import Completion, LocalModel, connect
from tests.support.decoding import FRESH_PROMPT

pytestmark = pytest.mark.server

HI = [{"role": "user", "content": "Say hi."}]
GREEDY = {"temperature": 0.0, "seed": 5, "max_tokens": 6, **FRESH_PROMPT}
"""Greedy, and the whole prompt computed afresh each time: every path runs the same batch shapes, so the
texts compare exactly (tests/support/decoding.py)."""
DIGIT = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}}
"""A schema whose every valid reply is short: one digit, and at most 22 characters of whitespace (llama.cpp's
json-schema grammar) at each of the few places JSON allows it, so under 160 tokens whatever the model picks."""


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
        # greedy, and room for the longest reply the schema allows: the answer cannot be cut at max_tokens
        formatted = client.chat(HI, json_schema=DIGIT, temperature=0.0, seed=5, max_tokens=160)
        assert formatted.finish_reason == "stop" and formatted.json()["a"] in range(10)  # went as response_format


def test_the_official_openai_sdk_uses_the_server(model: LocalModel) -> None:
    sdk = openai.OpenAI(base_url=model.base_url + "/v1", api_key=model.api_key)
    name = sdk.models.list().data[0].id
    fresh = {"extra_body": FRESH_PROMPT}  # as GREEDY: the same batch shapes for every request
    reply = sdk.chat.completions.create(model=name, messages=HI, temperature=0, max_tokens=6,  # type: ignore[arg-type]
                                        **fresh)
    assert reply.choices[0].message.content == model.chat(HI, **GREEDY).text
    streamed = sdk.chat.completions.create(model=name, messages=HI, temperature=0, max_tokens=6,  # type: ignore[arg-type]
                                           stream=True, stream_options={"include_usage": True}, **fresh)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    completion = sdk.completions.create(model=name, prompt="2 + 2 =", temperature=0, max_tokens=4, **fresh)
    assert completion.choices[0].text == model.generate("2 + 2 =", temperature=0.0, max_tokens=4, **FRESH_PROMPT).text
    wrong = openai.OpenAI(base_url=model.base_url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=name, messages=HI, max_tokens=2)  # type: ignore[arg-type]
