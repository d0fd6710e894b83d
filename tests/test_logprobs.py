"""Token probabilities, prefill progress, context use, token pieces and templates (issue 12, the API).

The server tests use the real llama-server and the default model (the
session ``model``); the unit tests read chunks recorded from the pinned
llama-server (``/v1/completions`` and ``/v1/chat/completions`` with
``logprobs``, ``return_progress``), written down as they came.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from rocm_nb import ContextUse, Delta, LocalModel, Progress, TokenPiece, TokenProb
from rocm_nb.client._accumulator import Accumulator
from rocm_nb.client.request import check_options, check_request
from tests.support.decoding import FRESH_PROMPT
from tests.support.processes import wait_until

EMOJI_GRAMMAR = 'root ::= "Stars: 🌟🌟, Tokyo: 東京, café." [a-z ]*'
"""Forces characters that the default model's vocabulary splits into byte tokens (🌟 is three)."""

LONG_PROMPT = " ".join(f"item {i} is number {i};" for i in range(135))
"""About 1,500 tokens: long enough for prefill progress to be reported before the first token."""

# One token of each kind, as the pinned llama-server streamed them (``logprobs: true, top_logprobs: 2``):
# a character it held back until whole (4 bytes, reported once) whose alternatives are byte fragments.
RECORDED_CHAT = [
    '{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    '"object":"chat.completion.chunk","prompt_progress":{"total":36,"cache":0,"processed":0,"time_ms":0}}',
    '{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],'
    '"object":"chat.completion.chunk","prompt_progress":{"total":36,"cache":0,"processed":36,"time_ms":330}}',
    '{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"😉"},"logprobs":{"content":[{"id":227,'
    '"token":"😉","bytes":[240,159,152,137],"logprob":-1.3690433502197266,"top_logprobs":[{"id":227,'
    '"token":"\ufffd","bytes":[137],"logprob":-1.3690433502197266},{"id":232,"token":"\ufffd","bytes":[142],'
    '"logprob":-1.7725086212158203}]}]}}],"object":"chat.completion.chunk"}',
    '{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"object":"chat.completion.chunk",'
    '"timings":{"cache_n":0,"prompt_n":36,"prompt_ms":330.97,"predicted_n":6,"predicted_ms":87.69,'
    '"predicted_per_second":57.0}}',
]


# -- unit: options and payloads -------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("options", "message"), [
    ({"top_logprobs": 3}, "top_logprobs needs logprobs=True"),
    ({"logprobs": True, "top_logprobs": 0}, "top_logprobs must be an integer from 1 to 20"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be an integer from 1 to 20"),
    ({"logprobs": 1}, "logprobs must be True or False"),
    ({"post_sampling": True}, "post_sampling needs logprobs=True"),
    ({"return_progress": "yes"}, "return_progress must be True or False"),
    ({"reasoning_effort": ""}, "reasoning_effort must be a non-empty string"),
    ({"reasoning_budget": 1.5}, "reasoning_budget must be an integer ≥ -1"),
    ({"chat_template_kwargs": {"x": float("nan")}}, "chat_template_kwargs is not plain JSON"),
    ({"chat_template_kwargs": ["enable_thinking"]}, "chat_template_kwargs must be a dict"),
])
def test_bad_insight_options_are_refused_with_the_reason(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_options(options)


@pytest.mark.unit
def test_payloads_use_each_endpoints_names() -> None:
    chat = check_request("chat", [{"role": "user", "content": "Hi"}],
                         {"logprobs": True, "top_logprobs": 3, "post_sampling": True, "reasoning_budget": 0,
                          "reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": True},
                          "return_progress": True}).body("llama.cpp")
    assert {k: chat[k] for k in ("logprobs", "top_logprobs", "post_sampling_probs", "reasoning_budget_tokens",
                                 "reasoning_effort", "chat_template_kwargs", "return_progress")} == {
        "logprobs": True, "top_logprobs": 3, "post_sampling_probs": True, "reasoning_budget_tokens": 0,
        "reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": True}, "return_progress": True}
    completion = check_request("completion", "Hi", {"logprobs": True}).body("llama.cpp")
    assert completion["logprobs"] == 5 and "top_logprobs" not in completion  # llama-server's alias of n_probs
    assert "logprobs" not in check_request("completion", "Hi", {"logprobs": False}).body("llama.cpp")
    with pytest.raises(ValueError, match="only chat"):
        check_request("completion", "Hi", {"reasoning_effort": "high"}).body("llama.cpp")


# -- unit: reading recorded chunks ----------------------------------------------------------------


@pytest.mark.unit
def test_a_recorded_chat_stream_gives_whole_characters_byte_alternatives_progress_and_context() -> None:
    acc = Accumulator("chat", logprobs=True)
    deltas = [acc.feed_delta(data) for data in RECORDED_CHAT]
    assert [d.progress for d in deltas[:2]] == [Progress(0, 36, 0), Progress(36, 36, 0)]
    assert deltas[2].text == "😉" and len(deltas[2].tokens) == 1
    acc.n_ctx = 4096
    done = acc.finish()
    (token,) = done.tokens or []
    assert (token.text, token.bytes, token.id) == ("😉", "😉".encode(), 227)
    assert token.top == [("\ufffd", -1.3690433502197266), ("\ufffd", -1.7725086212158203)]
    assert done.context == ContextUse(used=42, n_ctx=4096)
    assert "context 42/4096 (1%)" in done.stats()


@pytest.mark.unit
def test_post_sampling_entries_become_logprobs_and_a_stream_without_logprobs_has_no_tokens() -> None:
    entry = {"id": 5, "token": "a", "bytes": [97], "prob": 0.25, "top_probs": [{"token": "a", "prob": 0.25}]}
    acc = Accumulator("completion", logprobs=True)
    acc.feed(json.dumps({"choices": [{"text": "a", "finish_reason": "stop", "logprobs": {"content": [entry]}}]}))
    (token,) = acc.finish().tokens or []
    assert math.isclose(token.logprob, math.log(0.25)) and math.isclose(token.prob, 0.25)
    plain = Accumulator("completion")
    plain.feed('{"choices": [{"text": "a", "finish_reason": "stop"}]}')
    assert plain.finish().tokens is None


@pytest.mark.unit
def test_deltas_are_false_when_empty_and_progress_fractions_count_only_uncached_work() -> None:
    assert not Delta() and Delta(progress=Progress(0, 10, 0))
    assert Progress(processed=0, total=10, cached=0).fraction == 0.0
    assert Progress(processed=10, total=10, cached=10).fraction == 1.0
    assert ContextUse(used=0, n_ctx=0).fraction == 0.0


# -- server: the real llama-server and the default model -----------------------------------------


def _joined(tokens: list[TokenProb] | None) -> str:
    assert tokens is not None
    return "".join(t.text for t in tokens)


@pytest.mark.server
def test_greedy_decoding_picks_the_top_alternative_at_every_step(model: LocalModel) -> None:
    replies = {5: model.generate("The capital of France is", max_tokens=24, temperature=0, logprobs=True),
               4: model.chat([{"role": "user", "content": "Name three colours."}], max_tokens=24, temperature=0,
                             logprobs=True, top_logprobs=4)}
    for k, reply in replies.items():
        assert reply.tokens and _joined(reply.tokens) == reply.text
        assert all(len(token.top) == k for token in reply.tokens)
        for token in reply.tokens:
            assert token.logprob <= 0 and 0 < token.prob <= 1
            assert token.top[0][1] == token.logprob, f"{token} is not the most likely"
            assert all(a[1] >= b[1] for a, b in zip(token.top, token.top[1:], strict=False))
            assert token.top[0][0] == token.text or len(token.bytes) > 1  # a held-back character: last token's text


@pytest.mark.server
def test_the_raw_logprobs_are_the_log_of_the_untruncated_post_sampling_probabilities(model: LocalModel) -> None:
    plain = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 7, "max_tokens": 1}
    raw = model.generate("The sky is", logprobs=True, top_logprobs=5, **plain)  # type: ignore[arg-type]
    after = model.generate("The sky is", logprobs=True, top_logprobs=5, post_sampling=True,
                           **plain)  # type: ignore[arg-type]
    assert raw.tokens and after.tokens
    for (text, logprob), (text_after, logprob_after) in zip(raw.tokens[0].top, after.tokens[0].top, strict=True):
        assert text == text_after
        assert math.isclose(math.exp(logprob), math.exp(logprob_after), abs_tol=2e-3)


@pytest.mark.server
def test_post_sampling_with_top_k_3_leaves_at_most_3_candidates_summing_to_one(model: LocalModel) -> None:
    reply = model.generate("Once upon a time", max_tokens=16, temperature=0.8, top_k=3, seed=3,
                           logprobs=True, top_logprobs=10, post_sampling=True)
    assert reply.tokens and len(reply.tokens) == 16
    for token in reply.tokens:
        assert 1 <= len(token.top) <= 3
        assert math.isclose(sum(math.exp(lp) for _, lp in token.top), 1.0, abs_tol=1e-3)
        assert any(math.isclose(lp, token.logprob) for _, lp in token.top)


@pytest.mark.server
def test_joined_token_texts_equal_the_text_with_emoji_and_multibyte_characters(model: LocalModel) -> None:
    options = {"max_tokens": 48, "temperature": 0, "logprobs": True, "grammar": EMOJI_GRAMMAR}
    messages = [{"role": "user", "content": "Write something."}]
    replies = [model.generate("Say:", **options), model.chat(messages, **options)]  # type: ignore[arg-type]
    with model.stream("Say:", **options) as stream:  # type: ignore[arg-type]
        streamed = [d for d in stream.deltas()]
    for reply in replies:
        assert reply.text.startswith("Stars: 🌟🌟, Tokyo: 東京, café.")
        assert _joined(reply.tokens) == reply.text
        assert b"".join(t.bytes for t in reply.tokens or []) == reply.text.encode()
        assert any(t.text == "🌟" for t in reply.tokens or []), "the emoji arrives whole, in one token"
    assert "".join(t.text for d in streamed for t in d.tokens) == "".join(d.text for d in streamed)
    assert stream.completion is not None and stream.tokens == stream.completion.tokens


@pytest.mark.server
def test_prefill_progress_arrives_before_the_first_token(model: LocalModel) -> None:
    with model.stream(LONG_PROMPT, max_tokens=4, return_progress=True, cache_prompt=False) as stream:
        deltas = list(stream.deltas())
    first_text = next(i for i, d in enumerate(deltas) if d.text)
    progress = [d.progress for d in deltas if d.progress is not None]
    assert progress and all(i < first_text for i, d in enumerate(deltas) if d.progress is not None)
    assert progress[-1].processed == progress[-1].total > 1000 and progress[-1].fraction == 1.0
    assert stream.progress == progress[-1]

    async def first_async() -> Delta:
        stream = model.astream(LONG_PROMPT + " again", max_tokens=2, return_progress=True)
        async for delta in stream.deltas():
            return delta
        raise AssertionError("no delta")

    assert asyncio.run(first_async()).progress is not None


@pytest.mark.server
def test_stop_during_prefill_frees_the_slot(model: LocalModel) -> None:
    """Closing a stream after its first progress event (the prompt half read) cancels it on the server."""

    def busy() -> bool:
        return model.metrics().get("llamacpp:requests_processing", 0.0) > 0

    stream = model.stream(LONG_PROMPT + " stop", max_tokens=64, return_progress=True, cache_prompt=False)
    first = next(stream.deltas())
    assert first.progress is not None and not first.text and first.progress.fraction < 1
    stream.close()  # the Stop button, or Kernel → Interrupt leaving the `with` block
    wait_until(lambda: not busy(), timeout=120)
    assert stream.completion is None and stream.text == ""
    assert model.generate("Hi", max_tokens=2, temperature=0.0).text  # the slot is usable again


@pytest.mark.server
def test_context_use_grows_with_each_chat_turn(model: LocalModel) -> None:
    messages = [{"role": "user", "content": "Tell me a fact about owls."}]
    first = model.chat(messages, max_tokens=16, temperature=0)
    assert first.context is not None and first.timings is not None
    assert first.context.n_ctx == model.n_ctx() == model.props()["default_generation_settings"]["n_ctx"]
    assert first.context.used >= first.timings.prompt_tokens + first.timings.predicted_tokens
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Another one."}]
    second = asyncio.run(model.achat(messages, max_tokens=16, temperature=0))
    assert second.context is not None and second.context.used > first.context.used


@pytest.mark.server
def test_tokenize_with_pieces_gives_each_tokens_bytes(model: LocalModel) -> None:
    text = "Hello 🌟 東京 café"
    pieces = model.tokenize(text, pieces=True)
    assert all(isinstance(p, TokenPiece) for p in pieces)
    assert [p.id for p in pieces] == model.tokenize(text)
    assert b"".join(p.bytes for p in pieces) == text.encode()
    assert pieces[0] == TokenPiece(id=pieces[0].id, text="Hello", bytes=b"Hello")
    assert any(p.text.endswith("\ufffd") for p in pieces), "🌟 is split into byte tokens"


@pytest.mark.server
def test_apply_template_gives_the_prompt_chat_sends(model: LocalModel) -> None:
    messages = [{"role": "user", "content": "What is 2 + 2?"}]
    prompt = model.apply_template(messages)
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    assert "What is 2 + 2?" in prompt and not model.apply_template(messages, add_generation_prompt=False).endswith(
        "assistant\n")
    greedy = {"max_tokens": 12, "temperature": 0.0, **FRESH_PROMPT}  # the same batch shapes: the same text
    assert model.generate(prompt, **greedy).text == model.chat(messages, **greedy).text  # type: ignore[arg-type]
