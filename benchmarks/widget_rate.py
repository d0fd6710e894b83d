"""Kernel→browser messages per second of the token-probability view while the model decodes.

A :class:`~rocm_nb.reply_view.ReplyView` with ``probs=True`` (what
``%%rocm_generate --probs`` and ``ChatPanel(show_probs=True)`` show) is fed
every update of a real stream (``logprobs=True, top_logprobs=5``, 256
tokens, greedy); every message its comm publishes is counted (outside a
kernel the comm is ipywidgets' ``DummyComm``, whose ``publish_msg`` is what a
kernel's comm sends on iopub). The figure is messages per second of
decoding, against the issue's ceiling of 30/s; beside it the decode rate,
so that a slow run (few tokens per second, hence few messages) is seen for
what it is.
"""

from __future__ import annotations

import time
from typing import Any

from common import GREEDY, PROMPT, REPS, Row, spread

from rocm_nb import LocalModel
from rocm_nb._widget_kit import MAX_RATE
from rocm_nb.reply_view import ReplyView


def one_run(model: LocalModel, max_tokens: int = 256) -> tuple[float, float]:
    """(messages per second, tokens per second) for one streamed reply."""
    view = ReplyView(probs=True)
    sent = 0
    publish = view.comm.publish_msg

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        return publish(*args, **kwargs)

    view.comm.publish_msg = counting
    tokens = 0
    first = last = 0.0
    for delta in model.stream(PROMPT, max_tokens=max_tokens, logprobs=True, top_logprobs=5, **GREEDY).deltas():
        if delta.tokens:
            last = time.perf_counter()
            if not tokens:
                first, sent = last, 0  # count from the first token: decoding, not the prompt
            tokens += len(delta.tokens)
        view.feed(delta)
    view.close()
    seconds = last - first
    return sent / seconds, (tokens - 1) / seconds


def bench_widget_rate(model: LocalModel) -> list[Row]:
    runs = [one_run(model) for _ in range(REPS)]
    rates, speeds = [r for r, _ in runs], [s for _, s in runs]
    return [Row(
        "token view: kernel→browser messages while decoding", f"≤ {MAX_RATE:g}/s",
        spread(rates, "/s"), max(rates) <= MAX_RATE,
        f"decoding at {spread(speeds, ' tok/s')}; ReplyView(probs=True) fed every delta, messages counted at its comm",
    )]
