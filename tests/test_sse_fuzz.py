"""Property tests of the stream handling: any framing of a valid stream gives the exact text;
a malformed or cut stream is a GenerationError, never a hang or a silent truncation."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rocm_nb.client import Client
from rocm_nb.errors import GenerationError

pytestmark = pytest.mark.unit

# any text, with the characters that trip line splitters (U+2028, U+2029, NEL) and multi-byte ones drawn often
characters = st.one_of(st.sampled_from("\u2028\u2029\u0085\r\nü🙂"), st.characters(codec="utf-8"))
pieces = st.lists(st.text(characters, min_size=1, max_size=12), min_size=1, max_size=30)
newline = st.sampled_from(["\n", "\r\n"])
noise = st.lists(st.sampled_from([": keep-alive", ":", ": comment with data: inside"]), max_size=3)


def encode(events: list[str], eol: str, extras: list[str]) -> bytes:
    out = []
    for i, data in enumerate(events):
        if extras and i % 3 == 0:
            out.append(extras[i % len(extras)] + eol + eol)
        out.append(f"data: {data}{eol}{eol}")
    return "".join(out).encode()


def events_for(texts: list[str], *, finish: bool = True, done: bool = True) -> list[str]:
    # raw UTF-8 as llama-server writes it (ensure_ascii=False): the chunk cuts then split multi-byte characters
    events = [json.dumps({"choices": [{"text": t, "finish_reason": None}]}, ensure_ascii=False) for t in texts]
    if finish:
        events.append(json.dumps({"choices": [{"text": "", "finish_reason": "length"}]}))
    if done:
        events.append("[DONE]")
    return events


def client_for(raw: bytes, cuts: list[int]) -> Client:
    bounds = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    chunks = [raw[a:b] for a, b in itertools.pairwise(bounds)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(chunks))

    return Client("http://fuzz", transport=httpx.MockTransport(handler))


@settings(max_examples=200, deadline=None)
@given(texts=pieces, eol=newline, extras=noise, cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_any_framing_gives_the_exact_text(texts: list[str], eol: str, extras: list[str], cuts: list[int]) -> None:
    raw = encode(events_for(texts), eol, extras)
    completion = client_for(raw, cuts).generate("x")
    assert completion.text == "".join(texts)
    assert completion.finish_reason == "length"


@settings(max_examples=100, deadline=None)
@given(texts=pieces, eol=newline, cuts=st.lists(st.integers(min_value=0), max_size=20),
       bad=st.sampled_from(["{", "{\"choices\": [", "not json", "[1, 2]", "\"text\""]))
def test_a_malformed_event_is_an_error_with_the_partial_text(
    texts: list[str], eol: str, cuts: list[int], bad: str
) -> None:
    events = events_for(texts)
    events.insert(len(texts) // 2, bad)
    with pytest.raises(GenerationError) as info:
        client_for(encode(events, eol, []), cuts).generate("x")
    assert "".join(texts).startswith(info.value.partial)


@settings(max_examples=100, deadline=None)
@given(texts=pieces, eol=newline, cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_a_cut_stream_is_never_a_silent_truncation(texts: list[str], eol: str, cuts: list[int]) -> None:
    raw = encode(events_for(texts, finish=False, done=False), eol, [])
    with pytest.raises(GenerationError, match="ended before the server finished") as info:
        client_for(raw, cuts).generate("x")
    assert info.value.partial == "".join(texts)
