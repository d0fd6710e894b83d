"""Kernel→browser messages per second of the token-probability view while the model decodes.

A :class:`~rocm_nb.notebook.reply_view.ReplyView` with ``probs=True`` (what
``%%rocm_generate --probs`` and ``ChatPanel(show_probs=True)`` show) is fed
every update of a real stream (``logprobs=True, top_logprobs=5``, 256
tokens, greedy); every message its comm publishes is counted (outside a
kernel the comm is ipywidgets' ``DummyComm``, whose ``publish_msg`` is what a
kernel's comm sends on iopub). The figure is messages per second of
decoding, against the issue's ceiling of 30/s; beside it the decode rate,
so that a slow run (few tokens per second, hence few messages) is seen for
what it is. A second row replays the same real updates into a fresh view at
1,000 tokens per second (2,048 of them, about two seconds; faster than a GPU
decodes most models), which a loaded two-core CPU cannot reach: there the
throttle, not the model, sets the rate.
"""

from __future__ import annotations

import time

from common import GREEDY, PROMPT, REPS, Row, spread

from rocm_nb import LocalModel
from rocm_nb.client.stream import Delta
from rocm_nb.notebook._widget_kit import MAX_RATE
from rocm_nb.notebook.reply_view import ReplyView
from tests.support.widgets import counted  # bench.py puts the repository on sys.path


def one_run(model: LocalModel, max_tokens: int = 256) -> tuple[float, float, list[Delta]]:
    """(messages per second, tokens per second, the updates) for one streamed reply."""
    view = ReplyView(probs=True)
    sent = counted(view)
    tokens = 0
    first = last = 0.0
    deltas = []
    for delta in model.stream(PROMPT, max_tokens=max_tokens, logprobs=True, top_logprobs=5, **GREEDY).deltas():
        deltas.append(delta)
        if delta.tokens:
            last = time.perf_counter()
            if not tokens:
                first, sent[0] = last, 0  # count from the first token: decoding, not the prompt
            tokens += len(delta.tokens)
        view.feed(delta)
    view.close()
    seconds = last - first
    return sent[0] / seconds, (tokens - 1) / seconds, deltas


def replay(deltas: list[Delta], tokens: int = 2048, rate: float = 1000.0) -> tuple[float, float]:
    """(messages per second, tokens per second) feeding recorded updates at ``rate`` tokens per second."""
    view = ReplyView(probs=True)
    sent = counted(view)
    fed = [d for d in deltas if d.tokens]
    began = time.perf_counter()
    for i in range(tokens):
        while time.perf_counter() - began < i / rate:
            time.sleep(0.0002)
        view.feed(fed[i % len(fed)])
    seconds = time.perf_counter() - began
    view.close()
    return sent[0] / seconds, tokens / seconds


def bench_widget_rate(model: LocalModel) -> list[Row]:
    runs = [one_run(model) for _ in range(REPS)]
    rates, speeds = [r for r, _, _ in runs], [s for _, s, _ in runs]
    fast = [replay(runs[0][2]) for _ in range(REPS)]
    return [Row(
        "token view: kernel→browser messages while decoding", f"≤ {MAX_RATE:g}/s",
        spread(rates, "/s"), max(rates) <= MAX_RATE,
        f"decoding at {spread(speeds, ' tok/s')}; ReplyView(probs=True) fed every delta, messages counted at its comm",
    ), Row(
        "token view: messages with real updates replayed at 1,000 tok/s", f"≤ {MAX_RATE:g}/s",
        spread([r for r, _ in fast], "/s"), max(r for r, _ in fast) <= MAX_RATE,
        f"the same real updates fed at {spread([t for _, t in fast], ' tok/s')}: the throttle sets the rate",
    )]
