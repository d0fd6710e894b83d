"""Honest messages (issue 21, item 13): embeddings, text UTF-8 cannot carry, hostile logprobs, keys in clear.

Each was a raw exception, a server's words about its command line, a number
accepted that no probability can be, or silence. The hostile servers are
strict fakes answering in llama-server's documented stream format (httpx's
mock transport); the embedding and chat servers are the real ones.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rocm_nb import Client, LocalModel, connect
from rocm_nb.client.logprobs import read_token
from rocm_nb.client.request import check_utf8
from rocm_nb.errors import GenerationError, StreamProtocolError
from tests.support.bounded import run_bounded

HI = [{"role": "user", "content": "Hi"}]


def _token(logprob: float, alternatives: int) -> dict[str, Any]:
    """One ``logprobs.content`` entry as llama-server writes it, with ``alternatives`` alternatives."""
    return {"id": 1, "token": "a", "bytes": [97], "logprob": logprob,
            "top_logprobs": [{"id": i, "token": "b", "logprob": -1 - i} for i in range(alternatives)]}


def _server(tokens: list[dict[str, Any]], seen: list[httpx.Request] | None = None) -> Client:
    """A server that streams ``tokens`` (one chunk each, with their logprobs) and then stops."""
    said = {id(token): ("data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": token["token"]},
                                                             "logprobs": {"content": [token]}}]}) + "\n\n").encode()
            for token in tokens}

    def events() -> Iterator[bytes]:
        for token in tokens:
            yield said[id(token)]
        yield b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if request.method == "GET":
            return httpx.Response(404)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=events())

    return Client("http://fake", model="m", transport=httpx.MockTransport(handler))


# -- hostile logprobs --------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("logprob", [float("nan"), 1000.0, float("inf"), float("-inf")])
def test_a_logprob_that_is_no_log_of_a_probability_is_refused(logprob: float) -> None:
    with pytest.raises(StreamProtocolError, match=r"not a completion chunk \(a logprob of .* is not the log of"):
        _server([_token(logprob, 2)]).chat(HI, logprobs=True, top_logprobs=2)
    with pytest.raises(ValueError, match=r"a probability of 2\.0 is not one"):
        read_token({"token": "a", "prob": 2.0, "top_probs": []})
    assert read_token({"token": "a", "logprob": 1e-7, "top_logprobs": []}).logprob == 0.0  # float rounding


@pytest.mark.unit
def test_only_the_alternatives_asked_for_are_read() -> None:
    reply = _server([_token(-0.5, 10_000)] * 3).chat(HI, logprobs=True, top_logprobs=5)
    assert reply.tokens is not None and [len(t.top) for t in reply.tokens] == [5, 5, 5]
    default = _server([_token(-0.5, 10_000)]).chat(HI, logprobs=True)  # asked without a number: 5, the default
    assert default.tokens is not None and len(default.tokens[0].top) == 5
    assert _server([_token(-0.5, 10_000)]).chat(HI).tokens is None  # not asked: none kept


@pytest.mark.unit
def test_a_flood_of_alternatives_stays_within_a_small_memory_bound() -> None:
    """600 tokens of 10,000 alternatives each: over half a gigabyte kept before, a few kilobytes now."""
    out = run_bounded("""
        reply = _server([_token(-0.5, 10_000)] * 600).chat(HI, logprobs=True, top_logprobs=5)
        out["tops"] = sorted({len(t.top) for t in reply.tokens})
        out["tokens"] = len(reply.tokens)
    """, setup="from tests.test_honest_refusals import _server, _token, HI", budget=256 * 2**20, timeout=240)
    assert out == {"tops": [5], "tokens": 600}


# -- text that UTF-8 cannot carry ---------------------------------------------------------------------------


@pytest.mark.unit
def test_a_lone_surrogate_is_named_before_any_request() -> None:
    seen: list[httpx.Request] = []
    client = _server([], seen)
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\] holds a lone surrogate \('\\ud800' at index 1"):
        client.chat([{"role": "user", "content": "a\ud800b"}])
    with pytest.raises(ValueError, match=r"the prompt holds a lone surrogate"):
        client.generate("\udcff")
    with pytest.raises(ValueError, match=r"options\['stop'\]\[0\] holds a lone surrogate"):
        client.chat(HI, stop=["\ud83c"])
    with pytest.raises(ValueError, match=r"texts\[1\] holds a lone surrogate .* repair it first"):
        client.embed(["fine", "half \ud83c of an emoji"])
    with pytest.raises(ValueError, match=r"POST /tokenize's body\['content'\] holds a lone surrogate"):
        client.tokenize("x\udc80")
    with pytest.raises(ValueError, match=r"messages\[0\] holds a lone surrogate \('\\udc80' at index 0"):
        client.chat([{"role": "user", "content": "Hi", "\udc80name": "x"}])  # a key is text sent too
    deep: list[Any] = ["\ud800"]
    nested: list[Any] = []
    for _ in range(10_000):  # nesting far past Python's recursion limit: walked, not recursed
        deep, nested = [deep], [nested]
    with pytest.raises(ValueError, match=r"^x\['k'\](\[0\]){5}…9992 more…(\[0\]){4} holds a lone surrogate"):
        check_utf8({"k": deep}, "x")
    with pytest.raises(TypeError, match=r"content list holds parts like .*; got \[\[\[\[\[\[\[\.\.\.\]"):
        client.chat([{"role": "user", "content": nested}])
    assert [r.url.path for r in seen if r.method == "POST"] == []  # nothing was sent
    check_utf8({"fine": ["🎉", "こんにちは"]}, "x")


# -- embeddings --------------------------------------------------------------------------------------------


@pytest.mark.server
def test_chat_on_an_embedding_server_and_embed_or_rerank_on_a_chat_server_say_what_to_do(model: LocalModel) -> None:
    with LocalModel("minilm", embedding=True, ctx_size=512) as embedder, pytest.raises(GenerationError) as chatted:
        embedder.chat(HI, max_tokens=4)
    said = str(chatted.value)
    assert "computes embeddings (or reranking scores) only, so it cannot generate text: call embed()" in said
    assert "logits" not in said and "logits computation" in str(chatted.value.body)  # the server's words are kept
    with pytest.raises(GenerationError) as embedded:
        model.embed("hello")
    said = str(embedded.value)
    assert "does not compute embeddings: load an embedding model, LocalModel('minilm', embedding=True)" in said
    assert "--embeddings" not in said and "--embeddings" in str(embedded.value.body)
    with pytest.raises(GenerationError) as reranked:
        model.rerank("guitar music", ["A man plays guitar."])
    said = str(reranked.value)
    assert "does not rerank: load a model as a reranker, LocalModel(..., reranking=True)" in said
    assert "--reranking" not in said and "--reranking" in str(reranked.value.body)


# -- keys in clear, certificates unchecked -----------------------------------------------------------------


@pytest.mark.unit
def test_a_key_over_plain_http_to_another_machine_and_an_unchecked_certificate_warn() -> None:
    with pytest.warns(UserWarning, match=r"the API key goes to gpu-box over plain http://.*use its https:// "
                                         r"address, or reach it through an SSH tunnel") as said:
        connect("http://gpu-box:8000/v1", api_key="secret").close()
    assert said[0].filename == __file__  # the warning names the caller's line, not rocm_nb's
    with pytest.warns(UserWarning, match="the API key goes to gateway.example"):
        Client("http://gateway.example", headers={"X-API-Key": "secret"}).close()
    with pytest.warns(UserWarning, match=r"verify=False: the TLS certificate of gpu-box is not checked.*"
                                         r"verify='/path/to/ca.pem'"):
        connect("https://gpu-box/v1", verify=False).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of these sends a secret anywhere it can be read
        for quiet in (connect("https://gpu-box/v1", api_key="secret"), connect("http://127.0.0.1:8080", api_key="k"),
                      connect("http://gpu-box:8000"), connect("https://127.0.0.1:8443", verify=False)):
            quiet.close()
