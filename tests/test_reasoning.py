"""Reasoning (thinking) kept apart from the answer, against the real llama-server (issue 12, the API).

The default model does not think by itself, so the server is given a
thinking chat template (``tests/fixtures/templates/think.jinja``: ChatML whose
assistant turn opens with ``<think>``, and which shows past thinking as
``<think>…</think>``, so llama-server's template analysis recognises it).
The pinned server then parses the model's real output into
``reasoning_content`` and ``content`` itself; a grammar makes the model close
its thinking with ``</think>`` so that an answer follows. Nothing here is
recorded or faked: every stream comes from the real server and model.
"""

from __future__ import annotations

import asyncio

import pytest

from rocm_nb import Delta, LocalModel
from tests.support.thinking import THINK_THEN_ANSWER

pytestmark = pytest.mark.server

QUESTION = [{"role": "user", "content": "What is 2 + 2?"}]


def test_the_thinking_is_kept_apart_from_the_answer(thinker: LocalModel) -> None:
    reply = thinker.chat(QUESTION, max_tokens=40, temperature=0, grammar=THINK_THEN_ANSWER)
    assert reply.reasoning.strip() and reply.text.strip()
    assert "think>" not in reply.reasoning + reply.text
    assert "<think>" in thinker.apply_template(QUESTION)


def test_a_chat_stream_yields_the_answer_and_its_deltas_show_the_thinking_first(thinker: LocalModel) -> None:
    with thinker.chat_stream(QUESTION, max_tokens=40, temperature=0, grammar=THINK_THEN_ANSWER) as stream:
        answer = "".join(stream)
    assert stream.completion is not None
    assert answer == stream.completion.text == stream.text
    assert stream.reasoning == stream.completion.reasoning != ""
    with thinker.chat_stream(QUESTION, max_tokens=40, temperature=0, grammar=THINK_THEN_ANSWER,
                             logprobs=True) as stream:
        deltas = list(stream.deltas())
    kinds = ["thinking" if d.reasoning else "answer" for d in deltas if d.reasoning or d.text]
    assert kinds[0] == "thinking" and kinds[-1] == "answer" and kinds == sorted(kinds, reverse=True)
    assert "".join(d.reasoning for d in deltas) == stream.reasoning
    assert any(d.reasoning and d.tokens for d in deltas), "the thinking's tokens come with it"
    completion = stream.completion
    assert completion is not None and completion.tokens
    assert "".join(t.text for t in completion.tokens) == completion.text  # the answer's tokens only


def test_thinking_can_be_turned_off_by_effort_or_template_argument(thinker: LocalModel) -> None:
    for options in ({"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}):
        reply = thinker.chat(QUESTION, max_tokens=12, temperature=0, **options)
        assert reply.reasoning == "" and reply.text.strip(), options
    prompt = thinker.apply_template(QUESTION, chat_template_kwargs={"enable_thinking": False})
    assert prompt.endswith("<think>\n</think>\n\n")


def test_a_reasoning_budget_ends_the_thinking_early(thinker: LocalModel) -> None:
    free = thinker.chat(QUESTION, max_tokens=30, temperature=0)
    assert free.text == "" and len(thinker.tokenize(free.reasoning)) > 3, "unbudgeted, it never stops thinking"
    budgeted = thinker.chat(QUESTION, max_tokens=30, temperature=0, reasoning_budget=3)
    assert 0 < len(thinker.tokenize(budgeted.reasoning)) <= 3 and budgeted.text.strip()


def test_async_chat_streams_reasoning_too(thinker: LocalModel) -> None:
    async def run() -> tuple[list[Delta], str]:
        stream = thinker.achat_stream(QUESTION, max_tokens=30, temperature=0, grammar=THINK_THEN_ANSWER)
        deltas = [d async for d in stream.deltas()]
        assert stream.completion is not None
        return deltas, stream.completion.reasoning

    deltas, reasoning = asyncio.run(run())
    assert reasoning and "".join(d.reasoning for d in deltas) == reasoning
