"""The teaching widgets in process: reply view, next-token explorer, sampler playground, token view.

Unit tests feed made-up updates; server tests drive each widget against the
real llama-server and default model. What a user sees in a browser is in
``tests/test_browser_widgets.py``.
"""

from __future__ import annotations

import html
import math

import pytest

from rocm_nb import LocalModel
from rocm_nb.client.logprobs import Progress, TokenProb
from rocm_nb.client.stream import Delta
from rocm_nb.notebook._format import show
from rocm_nb.notebook._widget_kit import FRAGMENT, MAX_RATE, WHOLE_CHARACTER, Throttle, token_dicts
from rocm_nb.notebook.chat import ChatPanel
from rocm_nb.notebook.display import StreamDisplay
from rocm_nb.notebook.explore import NextTokenExplorer, with_temperature
from rocm_nb.notebook.playground import SamplerPlayground
from rocm_nb.notebook.reply_view import ReplyView, live_view
from rocm_nb.notebook.token_view import TokenView, is_special
from tests.support.clock import FakeClock
from tests.support.thinking import THINK_THEN_ANSWER
from tests.support.widgets import counted

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


def token(text: str, p: float, *others: tuple[str, float]) -> TokenProb:
    top = sorted([(text, math.log(p)), *((t, math.log(q)) for t, q in others)], key=lambda x: -x[1])
    return TokenProb(text, math.log(p), top, text.encode())


# -- unit ---------------------------------------------------------------------------------------


@pytest.mark.unit
def test_the_reply_view_sends_at_most_its_rate_however_fast_tokens_come() -> None:
    clock = FakeClock()
    view = ReplyView(probs=True, rate=20, clock=clock)
    sent = counted(view)
    for i in range(1000):  # 1,000 tokens in one second
        view.feed(Delta(text=f"t{i} ", tokens=(token(f"t{i} ", 0.5, ("x", 0.25)),)))
        clock.now += 0.001
    view.finish(footer="1000 tokens")
    assert sent[0] == view.pushes and 19 <= view.pushes <= 22
    assert "".join(t["t"] for t in view.tokens) == view.text == "".join(f"t{i} " for i in range(1000))
    assert view.tokens[0]["p"] == pytest.approx(0.5) and view.tokens[0]["top"][1] == ["x", pytest.approx(0.25)]
    assert view.footer == "1000 tokens" and not view.streaming


@pytest.mark.unit
def test_throttle_refuses_rates_above_the_ceiling() -> None:
    with pytest.raises(ValueError, match="at most 30"):
        Throttle(rate=MAX_RATE + 1)


@pytest.mark.unit
def test_thinking_is_timed_and_counted_and_ends_when_the_answer_starts() -> None:
    clock = FakeClock()
    view = ReplyView(rate=10, clock=clock)
    for piece in ["Let", " me", " think"]:
        view.feed(Delta(reasoning=piece))
        clock.now += 1.0
    view.feed(Delta(text="Blue."))
    clock.now += 5.0
    view.finish(footer="")
    assert view.reasoning == "Let me think" and view.text == "Blue."
    assert view.thinking == {"tokens": 3, "done": True, "seconds": 3.0}
    assert view.answer_html == "<p>Blue.</p>\n"


@pytest.mark.unit
def test_prefill_progress_shows_until_the_first_token() -> None:
    clock = FakeClock()
    view = ReplyView(rate=10, clock=clock)
    view.feed(Delta(progress=Progress(processed=512, total=1500, cached=0)))
    assert view.progress == {"processed": 512, "total": 1500, "cached": 0}
    clock.now += 1.0
    view.feed(Delta(text="Hi"))
    assert view.progress == {}


@pytest.mark.unit
def test_stream_display_shows_thinking_and_prefill_then_folds_the_thinking() -> None:
    sent: list[dict[str, str]] = []
    clock = FakeClock()
    shown = StreamDisplay(lambda bundle, update: sent.append(bundle), rate=10, clock=clock)
    shown.prefill(Progress(processed=100, total=400, cached=0))
    assert "reading the prompt: 100 / 400 tokens (25 %)" in sent[-1]["text/plain"]
    clock.now += 1
    shown.think("Hmm")
    assert "<details" in sent[-1]["text/html"] and " open>" in sent[-1]["text/html"]
    clock.now += 2
    shown.append("Blue.")
    shown.finish("2 tokens")
    final = sent[-1]
    assert final["text/plain"].startswith("[Thought · 1 tokens · 2.0 s]\nHmm\n\nBlue.")
    assert '<details class="rocm-nb-thinking"><summary>' in final["text/html"]
    assert "<p>Blue.</p>" in final["text/html"]
    assert "reading the prompt" not in final["text/plain"]


@pytest.mark.unit
def test_temperature_sharpens_and_flattens() -> None:
    candidates = [("a", 0.5), ("b", 0.25), ("c", 0.125)]
    cold, warm, hot = (with_temperature(candidates, t) for t in (0.5, 1.0, 2.0))
    assert cold[0] > warm[0] > hot[0] and all(math.isclose(sum(x), 1.0) for x in (cold, warm, hot))
    assert warm == pytest.approx([4 / 7, 2 / 7, 1 / 7])


@pytest.mark.unit
def test_special_tokens_are_recognised_by_their_shape() -> None:
    assert [is_special(p) for p in ["<|im_start|>", "<s>", "[/INST]", "<start_of_turn>", "<b>", "user", "|"]] == [
        True, True, True, True, False, False, False]


@pytest.mark.unit
def test_token_dicts_give_zero_for_what_a_sampler_removed() -> None:
    [d] = token_dicts([TokenProb("a", 0.0, [("a", 0.0), ("b", -math.inf)], b"a")])
    assert d == {"t": "a", "p": 1.0, "top": [["a", 1.0], ["b", 0.0]]}


# -- against the real server --------------------------------------------------------------------


@pytest.mark.server
def test_the_explorer_shows_candidates_and_extends_the_text_on_a_pick(model: LocalModel) -> None:
    explorer = NextTokenExplorer(model, "The capital of France is", k=5)
    assert isinstance(explorer, NextTokenExplorer)
    first = explorer.candidates
    assert len(first) == 5 and [p for _, p in first] == sorted((p for _, p in first), reverse=True)
    assert 0 < sum(p for _, p in first) <= 1.0 + 1e-6
    explorer.temperature = 0.0
    assert explorer.distribution()[0][1] == 1.0
    picked = first[1][0]
    assert explorer.pick(1).text == "The capital of France is" + picked and explorer.added == [picked]
    assert explorer.candidates and explorer.candidates != first
    assert explorer.back().text == "The capital of France is" and explorer.candidates == first
    assert explorer.back().added == []  # nothing more to undo
    with pytest.raises(IndexError, match="pick 0 to 4"):
        explorer.pick(7)


@pytest.mark.server
def test_the_playground_redraws_the_servers_post_sampling_distribution(model: LocalModel) -> None:
    playground = SamplerPlayground(model, "My favourite colour is", k=10, n=3, max_tokens=4, temperature=1.0,
                                  top_k=0, top_p=1.0, min_p=0.0)
    assert isinstance(playground, SamplerPlayground) and len(playground.raw) == 10
    post = playground.set(top_k=3).post
    assert 1 <= len(post) <= 3 and sum(p for _, p in post) == pytest.approx(1.0, abs=1e-3)
    assert [t for t, _ in post] == [t for t, _ in playground.raw[: len(post)]]
    assert len(playground.set(temperature=0.0).post) == 1  # greedy: one candidate left
    samples = playground.set(temperature=1.0, top_k=40).sample()
    assert len(samples) == 3 and all(isinstance(s, str) for s in samples) and playground.samples == samples
    with pytest.raises(TypeError, match="unknown sampler setting"):
        playground.set(topk=3)


@pytest.mark.server
@pytest.mark.parametrize(("prompt", "whole_in_top_2"), [("Party time! 🎉", True), ("こんにちは、", False)])
def test_the_explorer_and_playground_show_the_distribution_where_the_next_token_is_part_of_a_character(
        model: LocalModel, prompt: str, whole_in_top_2: bool) -> None:
    """Issue 21, item 7: SmolLM2's likeliest next token here is part of a character, which the server holds back
    (one token: no token and no probabilities at all). The explorer and the playground show the distribution
    anyway, or say why not; a fragment cannot be picked."""
    held = model.generate(prompt, max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=5)
    assert held.tokens == [] and held.finish_reason == "length", "the server no longer holds fragments back"

    explorer = NextTokenExplorer(model, prompt, k=5)
    first = explorer.candidates
    assert explorer.error == "" and len(first) == 5
    assert [p for _, p in first] == sorted((p for _, p in first), reverse=True) and 0 < sum(p for _, p in first) <= 1
    assert first[0][0] == FRAGMENT, first
    with pytest.raises(ValueError, match="part of a character"):
        explorer.pick(0)
    assert "part of a character" in explorer.error and explorer.added == [] and explorer.candidates == first

    playground = SamplerPlayground(model, prompt, k=5, temperature=1.0, top_k=2, top_p=1.0, min_p=0.0)
    assert [t for t, _ in playground.raw] == [t for t, _ in first]
    assert [p for _, p in playground.raw] == pytest.approx([p for _, p in first], abs=1e-3)
    if whole_in_top_2:  # "\n" (43 % of the two): one of the seeded draws is whole
        assert len(playground.post) == 2 and sum(p for _, p in playground.post) == pytest.approx(1.0, abs=1e-3)
        assert playground.error == ""
    else:  # two kana fragments: every draw is one, and the view says so
        assert playground.post == [] and "part of a character" in playground.error
    assert playground.set(top_k=1).post == [] and "part of a character" in playground.error  # every draw: a fragment


@pytest.mark.server
def test_the_grammar_that_makes_the_draw_whole_leaves_the_models_probabilities_alone(model: LocalModel) -> None:
    """What ``next_tokens`` relies on: the probabilities before sampling are the model's, grammar or not."""
    asked = {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": 8}
    free = model.generate("The capital of France is", **asked).tokens
    bound = model.generate("The capital of France is", grammar=WHOLE_CHARACTER, **asked).tokens
    assert free and bound and free[0].text == " Paris" and len(bound[0].text) == 1  # one ASCII character drawn
    assert [t for t, _ in bound[0].top] == [t for t, _ in free[0].top]
    assert [lp for _, lp in bound[0].top] == pytest.approx([lp for _, lp in free[0].top], abs=1e-3)


@pytest.mark.server
def test_the_token_view_splits_the_rendered_template_into_messages(model: LocalModel) -> None:
    text = TokenView(model, "Hello, wörld! 👋")
    assert text.ids == model.tokenize("Hello, wörld! 👋")
    view = TokenView(model, CHAT)
    assert [s.label for s in view.parts] == ["system", "user", "generation prompt"]
    rendered = model.apply_template(CHAT)
    assert "".join(s.text for s in view.parts) == rendered
    assert view.ids == model.tokenize(rendered) and view.total == len(view.ids)
    specials = [t["text"] for part in view.parts_data for t in part["tokens"] if t["special"]]
    assert "<|im_start|>" in specials and "<|im_end|>" in specials
    assert "You are terse." in view.parts[0].text and "Name a colour." in view.parts[1].text


@pytest.mark.server
async def test_the_reply_view_toggles_to_the_same_tokens_after_sampling(model: LocalModel) -> None:
    view, _publish, options = live_view(lambda o: model.achat_stream(CHAT, **o),
                                       {"max_tokens": 12, "temperature": 0.8, "top_k": 3}, probs=4)
    assert options["seed"] >= 0 and options["top_logprobs"] == 4
    stream = model.achat_stream(CHAT, **options)
    async with stream:
        async for delta in stream.deltas():
            view.feed(delta)
    assert stream.completion is not None
    view.finish(stream.completion, footer=stream.completion.stats())
    assert "".join(t["t"] for t in view.tokens) == stream.completion.text and view.post_state == "available"
    await view.show_post_sampling()
    assert view.mode == "post" and view.post_state == "ready"
    assert [t["t"] for t in view.post_tokens] == [t["t"] for t in view.tokens], "same seed, same tokens"
    for t in view.post_tokens:  # top_k=3: at most 3 candidates, summing to about 1
        assert len(t["top"]) <= 3 and sum(p for _, p in t["top"]) == pytest.approx(1.0, abs=0.02)


@pytest.mark.server
async def test_the_chat_panel_shows_probabilities_and_a_context_meter(model: LocalModel) -> None:
    panel = ChatPanel(model, show_probs=True, temperature=0.0, max_tokens=12)
    await panel.send("Name a colour.")
    view = panel.transcript.children[-1]
    assert isinstance(view, ReplyView) and view.probs and view.tokens
    assert "".join(t["t"] for t in view.tokens) == panel.history[-1]["content"]
    assert all(t["p"] == pytest.approx(t["top"][0][1]) for t in view.tokens), "greedy: the top-1 every time"
    context = panel.last.context if panel.last is not None else None
    assert context is not None and context.n_ctx == 2048, "4096 tokens over the fixture's two slots"
    assert f"context {context.used}/2048" in panel.stats.value and 'class="rocm-nb-context"' in panel.stats.value

    plain = ChatPanel(model, temperature=0.0, max_tokens=8)  # no reasoning, short prompt: just a bubble
    await plain.send("Hi")
    assert len(plain.transcript.children) == 2 and "rocm-nb-assistant" in plain.transcript.children[1].value


@pytest.mark.server
def test_the_reply_view_takes_a_real_stream_with_probabilities(model: LocalModel) -> None:
    view = ReplyView(probs=True)
    sent = counted(view)
    for delta in model.stream("Once upon a time", max_tokens=64, temperature=0.0, logprobs=True,
                              top_logprobs=5).deltas():
        view.feed(delta)
    view.finish(footer="")
    assert len(view.tokens) == 64 and sent[0] == view.pushes  # every push is one message; the rate: benchmarks/



# -- thinking and prefill, against a server with a thinking chat template (the ``thinker`` fixture) ----


@pytest.mark.server
async def test_the_panel_shows_the_thinking_above_the_answer(thinker: LocalModel) -> None:
    panel = ChatPanel(thinker, temperature=0.0, max_tokens=40, grammar=THINK_THEN_ANSWER)
    await panel.send("What is 2 + 2?")
    _user, view, bubble = panel.transcript.children
    assert isinstance(view, ReplyView) and not view.show_answer
    assert panel.last is not None and view.reasoning == panel.last.reasoning and view.reasoning.strip()
    assert view.thinking["done"] and view.thinking["tokens"] > 0 and view.thinking["seconds"] >= 0
    assert "rocm-nb-assistant" in bubble.value and panel.history[-1]["content"] == panel.last.text


@pytest.mark.server
def test_generate_folds_the_thinking_and_shows_a_long_prompts_progress(thinker: LocalModel) -> None:
    sent: list[dict[str, str]] = []
    stream = thinker.chat_stream([{"role": "user", "content": "What is 2 + 2?"}], max_tokens=40, temperature=0.0,
                                 grammar=THINK_THEN_ANSWER, return_progress=True)
    completion = show(stream, "markdown", publish=lambda bundle, update: sent.append(bundle))
    final = sent[-1]["text/html"]
    assert final.startswith('<details class="rocm-nb-thinking"><summary>Thought · ')
    assert html.escape(completion.reasoning) in final

    sent.clear()
    long_prompt = "The lighthouse keeper wrote the weather into his logbook every hour. " * 110  # ~1,500 tokens
    show(thinker.stream(long_prompt, max_tokens=2, return_progress=True, cache_prompt=False), "text",
         publish=lambda bundle, update: sent.append(bundle))
    reading = [b["text/plain"] for b in sent if "reading the prompt:" in b["text/plain"]]
    assert reading, "a long prompt shows its progress before the first token"
    assert all("▌" in text for text in reading) and "reading the prompt" not in sent[-1]["text/plain"]
